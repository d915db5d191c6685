"""The forget command: a person's right to erasure, in the state database and every sink.

``fonzipd forget [--email ADDRESS] [--fonzip-user-id N] [--dry-run]``:

1. finds the records about the person in the state database (by the record's person,
   and the list rows kept for pending fetches), and names the other records of the
   Fonzip users those records carry (a campaign has only its fundraiser's user id),
   to be added with ``--fonzip-user-id``;
2. asks every enabled sink that can delete (``Sink.forget``) to remove the person's
   data from those records; names the ones that cannot;
3. only when every sink that can delete has done so, erases the person in the state
   database (:mod:`fonzipd.state.erasures`) in one transaction.

Sinks go first so that the command can simply be run again after a crash or a sink
that was down: until the last step the state database still finds the person, and
every step is idempotent (the HTTP forwarder's erasure event keeps its id).

The daemon must be stopped: the command takes the state database's worker lock, so a
daemon cannot start meanwhile, and it opens the sinks itself (a CSV folder is locked
by the sink writing to it). With a daemon running it changes nothing and says so.
Output names places and counts, never personal data beyond the identifier given.
"""

from __future__ import annotations

import sys
from typing import TextIO

from fonzipd.config import Settings
from fonzipd.privacy import Erasure
from fonzipd.registry import build_sinks
from fonzipd.sink import SinkError
from fonzipd.state import Store, StoreError

EXIT_OK = 0
EXIT_FAILED = 1


async def forget_now(
    settings: Settings,
    *,
    email: str | None,
    fonzip_user_id: int | None,
    dry_run: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the command; the return value is the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    who = " and ".join(
        w
        for w, given in (
            (f"e-mail {email}", email is not None),
            (f"Fonzip user {fonzip_user_id}", fonzip_user_id is not None),
        )
        if given
    )
    if not settings.state.path.exists():
        raise StoreError(f"{settings.state.path}: no state database yet (has fonzipd run?)")
    store = await Store.open(settings.state.path)
    try:
        if not store.acquire_worker_lock():
            print(
                "fonzipd: a daemon is running on this state database; forget changes "
                "nothing while it runs: stop it (systemctl stop fonzipd), run forget, "
                "then start it again",
                file=err,
            )
            return EXIT_FAILED
        idents = await store.erasures.find(email=email, fonzip_user_id=fonzip_user_id)
        if not idents:
            print(
                f"{who}: no records about this person in the state database; nothing to do",
                file=out,
            )
            return EXIT_OK
        listed = ", ".join(f"{k} {i}" for k, i in idents)
        print(f"{who}: {len(idents)} record(s) found: {listed}", file=out)
        for user, more in (await store.erasures.other_records(idents)).items():
            others = ", ".join(f"{k} {i}" for k, i in more)
            print(
                f"note: these records are of Fonzip user {user}, who also has {others}: "
                f"add --fonzip-user-id {user} to erase those too",
                file=out,
            )
        erasure = Erasure(tuple(idents), email=email, fonzip_user_id=fonzip_user_id)
        built = build_sinks(settings, state_dir=settings.state.path.parent)
        for sid, configured in settings.sinks.items():
            if not configured.enabled:
                print(
                    f"sink {sid} ({configured.type}): disabled, not asked: what it received "
                    "before may still hold the person's data",
                    file=out,
                )
        if dry_run:
            counts = await store.erasures.erase(idents, dry_run=True)
            for sid, b in built.items():
                what = "would be asked to forget" if b.sink.can_forget else "cannot delete"
                print(f"sink {sid} ({b.type.name}): {what}", file=out)
            print(
                f"state database: would anonymize {counts.records} record(s), scrub "
                f"{counts.outbox_rows} outbox row(s), clear {counts.inbox_list_rows} "
                "inbox list row(s)",
                file=out,
            )
            print("dry run: nothing changed", file=out)
            return EXIT_OK
        failed: list[str] = []
        manual: list[str] = []
        for sid, b in built.items():
            label = f"sink {sid} ({b.type.name})"
            if not b.sink.can_forget:
                manual.append(sid)
                print(f"{label}: cannot delete: remove the person's data there yourself", file=out)
                continue
            try:
                await b.sink.open()
                try:
                    changed = await b.sink.forget(erasure)
                finally:
                    await b.sink.close()
            except Exception as exc:
                # Down, refused, misconfigured or a bug: the others still go, and the
                # state database waits for a second run. Sink errors never quote values.
                failed.append(sid)
                reason = str(exc) if isinstance(exc, SinkError | OSError) else repr(exc)
                print(f"{label}: FAILED: {reason}", file=out)
                continue
            print(f"{label}: {changed} stored item(s) changed", file=out)
        if failed:
            print(
                f"fonzipd: sink(s) {', '.join(failed)} could not forget; the state "
                "database is unchanged so that the same command can be run again once "
                "they are back",
                file=err,
            )
            return EXIT_FAILED
        counts = await store.erasures.erase(idents)
        print(
            f"state database: {counts.records} record(s) anonymized, {counts.outbox_rows} "
            f"outbox row(s) scrubbed, {counts.inbox_list_rows} inbox list row(s) cleared; "
            "later events about these records are stored anonymized",
            file=out,
        )
        waiting, _ = await store.inbox.depth()
        if waiting:
            # A webhook carries only an id: who an unfetched event is about is unknown.
            print(
                f"note: {waiting} event(s) still wait in the inbox to be fetched; if one "
                "is about this person, run forget again once they are (fonzipd status)",
                file=out,
            )
        return EXIT_OK
    finally:
        await store.close()
