"""Benchmark: the client's rate limiter under a 429 storm.

The simulator allows fewer requests per minute than fonzipd believes it may send
(Fonzip's documented 240 against a tighter real limit, as one third-party client
reported 60), so every minute ends in a storm of 429s. Prints, per 10-second slice,
what fonzipd sent and how Fonzip answered, and overall: requests sent per minute
(against the client's own limit and the server's), 429s, and details fetched.
Real time; runs for ``--seconds`` (default 90).

    .venv/bin/python bench/bench_429_storm.py [--seconds 90] [--server-rate 120] [--client-rate 240]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import warnings
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import pydantic
from pydantic import SecretStr

from fonzipd import logs
from fonzipd.config import ConfigWarning, FonzipSettings
from fonzipd.fonzip.client import FonzipClient
from fonzipd.fonzip.errors import FonzipError
from fonzipd.fonzip.limiter import Priority, RateLimiter
from fonzipd.fonzip.token import FileTokenStore
from fonzipd.kinds import Kind
from fonzipd.simulator import Simulator


async def bench(seconds: float, server_rate: float, client_rate: float) -> None:
    logs.configure("error", "console")
    async with Simulator(seed=5, days=2, per_day=50, rate_per_minute=server_rate) as sim:
        base = await sim.start()
        ids = [int(o["id"]) for o in sim.objects(Kind.DONATION)]
        with warnings.catch_warnings(), TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore", ConfigWarning)
            settings = FonzipSettings(
                base_url=pydantic.HttpUrl(base),
                client_id=SecretStr("sim-client"),
                client_secret=SecretStr("sim-secret"),
                requests_per_minute=client_rate,
                rate_margin=0,
            )
            limiter = RateLimiter(client_rate)
            client = FonzipClient(
                settings, token_store=FileTokenStore(Path(tmp) / "t.json"), limiter=limiter
            )
            fetched = 0
            failed = 0
            start = time.monotonic()
            deadline = start + seconds

            async def worker(n: int) -> None:
                nonlocal fetched, failed
                i = n
                while time.monotonic() < deadline:
                    try:
                        await client.fetch_detail(
                            Kind.DONATION, ids[i % len(ids)], priority=Priority.LIVE
                        )
                        fetched += 1
                    except FonzipError:
                        failed += 1
                    i += 8

            workers = [asyncio.create_task(worker(n)) for n in range(8)]
            await asyncio.sleep(seconds)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await client.close()
            elapsed = time.monotonic() - start

    t0 = sim.requests[0].at if sim.requests else None
    slices: dict[int, Counter[int]] = {}
    for r in sim.requests:
        assert t0 is not None
        slot = int((r.at - t0).total_seconds() // 10)
        slices.setdefault(slot, Counter())[r.status] += 1
    print(f"server limit {server_rate:g}/min, client limit {client_rate:g}/min, {elapsed:.0f} s")
    print("slice    sent  200  429")
    for slot in sorted(slices):
        c = slices[slot]
        print(f"{slot * 10:>4}s {sum(c.values()):>6} {c[200]:>4} {c[429]:>4}")
    statuses = Counter(r.status for r in sim.requests)
    per_min = len(sim.requests) / elapsed * 60
    print(
        f"sent {len(sim.requests)} requests = {per_min:.0f}/min "
        f"({per_min / client_rate:.2f} of the client's limit, "
        f"{per_min / server_rate:.2f} of the server's)"
    )
    print(
        f"answers: {dict(statuses)}; details fetched {fetched} ({fetched / elapsed * 60:.0f}/min), "
        f"gave up {failed}; limiter pauses honoured Retry-After: none sent"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=90)
    p.add_argument("--server-rate", type=float, default=120)
    p.add_argument("--client-rate", type=float, default=240)
    a = p.parse_args()
    asyncio.run(bench(a.seconds, a.server_rate, a.client_rate))


if __name__ == "__main__":
    main()
