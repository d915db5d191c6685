"""Benchmark: what per-sink redaction and secure_delete cost when records are stored.

Stores the same realistic donations (the shape of tests/fonzip_objects.py: a nested
user and transaction, ID number, card, IP address, address) into a fresh state
database through ``Records.apply_record`` for three sinks, then a refund of each (a
new version, so the old one is freed), in interleaved rounds:

- baseline: no policy (the record's JSON is queued as stored);
- redacted: every sink with ``redact = ["sensitive"]`` (each queued copy redacted);
- no secure_delete: the baseline with the state database's secure_delete turned off.

Prints records stored per second (medians of the rounds) and each ratio to the
baseline measured in the same run; and `fonzipd forget`'s state-database step (find
and erase one person, VACUUM included) on the stored database.

    .venv/bin/python bench/bench_privacy.py [--records 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from fonzipd import logs
from fonzipd.config import SinkSettings
from fonzipd.fonzip.endpoints import Detail
from fonzipd.fonzip.normalizer import normalize
from fonzipd.kinds import Kind
from fonzipd.privacy import SinkPolicy
from fonzipd.records import Record, Source
from fonzipd.state import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for the objects
from tests import fonzip_objects as fo

SINKS = ("archive", "sheets", "crm")


def _records(n: int, status: int) -> list[Record]:
    out: list[Record] = []
    for i in range(n):
        obj: dict[str, Any] = copy.deepcopy(fo.donation(payment_status=status))
        obj["id"] = 1000 + i
        obj["user"]["id"] = 5000 + i
        obj["user"]["email"] = f"donor{i}@example.org"
        obj["email"] = f"donor{i}@example.org"
        detail = Detail(Kind.DONATION, obj["id"], obj, None, endpoint=f"/donation/{obj['id']}")
        out.append(normalize(detail, tz=fo.ISTANBUL, source=Source.WEBHOOK, fetched_at=fo.FETCHED))
    return out


async def _run(
    path: Path, paid: list[Record], refunds: list[Record], policy: SinkPolicy, secure: bool
) -> float:
    store = await Store.open(path)
    try:
        if not secure:
            await store.db.execute("PRAGMA secure_delete=OFF")
        sinks = dict.fromkeys(SINKS, policy)
        started = time.perf_counter()
        for record in [*paid, *refunds]:
            await store.records.apply_record(None, record, sinks)
        return (len(paid) + len(refunds)) / (time.perf_counter() - started)
    finally:
        await store.close()


async def bench(n: int, rounds: int) -> None:
    logs.configure("error", "console")
    paid, refunds = _records(n, 3), _records(n, 4)
    refunds = [dataclasses.replace(r, fetched_at=r.fetched_at.replace(hour=1)) for r in refunds]
    sensitive = SinkPolicy.from_settings(SinkSettings(type="http", redact=["sensitive"]))
    cases = {
        "baseline": (SinkPolicy(), True),
        "redacted": (sensitive, True),
        "no secure_delete": (SinkPolicy(), False),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    with TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, (policy, secure) in cases.items():
                path = Path(tmp) / f"{r}-{name.replace(' ', '_')}.db"
                rates[name].append(await _run(path, paid, refunds, policy, secure))
        base = statistics.median(rates["baseline"])
        print(f"{2 * n} versions ({n} donations and their refunds), 3 sinks, {rounds} rounds")
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"  {name:<18} {median:8.0f} records/s   ratio to baseline {median / base:.2f}")
        store = await Store.open(Path(tmp) / "0-baseline.db")
        try:
            started = time.perf_counter()
            idents = await store.erasures.find(email="donor7@example.org", fonzip_user_id=None)
            counts = await store.erasures.erase(idents)
            took = time.perf_counter() - started
        finally:
            await store.close()
        size = (Path(tmp) / "0-baseline.db").stat().st_size / 1e6
        print(
            f"  forget one person in the state database ({size:.1f} MB after, VACUUM "
            f"included): {took * 1000:.0f} ms ({counts.records} record, "
            f"{counts.outbox_rows} outbox rows)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(bench(args.records, args.rounds))


if __name__ == "__main__":
    main()
