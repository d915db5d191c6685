"""The state package under cancellation and failure: a stateful property test against a model.

Hypothesis drives the operations the daemon's tasks perform (add events, claim,
give back, fail, apply records, apply a record and claim the next rows in one
transaction, take outbox batches, acknowledge, fail and
dead-letter them, replay) against a small model of what each must do. Any step may
carry one fault, injected at its k-th statement submitted to SQLite (BEGIN, each
statement, COMMIT, ROLLBACK, or a read): a cancellation of the task before the
statement is submitted, a cancellation while it runs, or an error instead of it (a
failed statement, or at COMMIT a failed commit such as a full disk), optionally with
a second cancellation during the clean-up. After every step the database must equal
the model, the connection must be out of any transaction, unlocked and writable, and
no sink may ever have been handed an older version of a record after a newer one.
Every commit of an operation must run at synchronous FULL (fsynced), a claim's at
NORMAL (a claim needs no durability; see fonzipd/state/connection.py).

A faulted step must leave all of its effect or none, and which one is fixed: none,
except when the COMMIT was submitted (a cancellation then waits for it) or when the
step is a single self-committing statement already submitted (or done: the inbox's
group insert is followed by a read of its new rows when some events were duplicates).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fonzipd.records import Record
from fonzipd.state import Store
from tests.support import FakeClock, hook, make_record

SINKS = ("csv", "http")
NAMES = ("Ayşe", "Ayşe Y.", "Ayşe Yılmaz")  # three versions of each record, same status
FAULT_KINDS = ("error", "cancel", "cancel_in_flight")

# A fault: (k, kind, again): at the k-th statement the step submits, inject ``kind``;
# ``again``: cancel the task once more during the clean-up that follows.
_fault = st.tuples(
    st.integers(min_value=0, max_value=6), st.sampled_from(FAULT_KINDS), st.booleans()
)
faults = st.one_of(st.none(), _fault, _fault)


STATS = {"runs": 0, "steps": 0, "faults": 0}  # printed by `pytest -s` (for the report)


class Injector:
    """The connection's fault seam: counts submitted statements, faults the planned one."""

    def __init__(self) -> None:
        self.plan: tuple[int, str, bool] | None = None
        self.target: asyncio.Task[Any] | None = None
        self.seen: list[str] = []
        self.fired: tuple[str, str] | None = None
        self.count = 0
        self.count_again = 0
        self.db: Any = None  # the write connection, to read its synchronous level
        self.levels: list[int] = []  # the level at each commit of the step

    async def _commits(self, sql: str) -> None:
        if self.db is not None and (
            sql == "COMMIT" or sql.startswith("INSERT OR IGNORE INTO inbox")
        ):
            rows = await self.db.execute_fetchall("PRAGMA synchronous")
            self.levels.append(next(iter(rows))[0])

    def arm(self, plan: tuple[int, str, bool] | None, target: asyncio.Task[Any]) -> None:
        self.plan, self.target, self.seen, self.fired = plan, target, [], None
        self.levels = []

    def disarm(self) -> None:
        self.plan, self.target = None, None

    async def __call__(self, sql: str, call: Callable[[], Awaitable[Any]]) -> Any:
        n = len(self.seen)
        self.seen.append(sql)
        await self._commits(sql)
        if self.plan is None or self.target is None:
            return await call()
        k, kind, again = self.plan
        if self.fired is not None:
            if again and sql == "ROLLBACK":
                self.count_again += 1
                self.target.cancel()  # the clean-up must finish regardless
                await asyncio.sleep(0)
            return await call()
        if n != k:
            return await call()
        self.fired = (sql, kind)
        self.count += 1
        if kind == "error":
            raise sqlite3.OperationalError("database or disk is full")
        if kind == "cancel":
            self.target.cancel()
            await asyncio.sleep(0)  # raises here unless the statement is shielded
            return await call()
        inner = asyncio.ensure_future(call())
        inner.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.sleep(0)  # submitted: it runs whatever happens to its caller
        self.target.cancel()
        return await asyncio.shield(inner)


@dataclasses.dataclass
class InboxM:
    id: int
    fid: int
    status: int
    state: str = "pending"
    attempts: int = 0
    next_at: float = 0.0
    outcome: str | None = None


@dataclasses.dataclass
class OutboxM:
    seq: int  # the model's own order; the database's ids must follow it
    sink: str
    key: str
    state: str = "pending"
    attempts: int = 0


class Model:
    """What the state database must hold."""

    def __init__(self) -> None:
        self.inbox: dict[int, InboxM] = {}
        self.records: dict[int, tuple[str, float]] = {}  # fid -> (key, updated_at)
        self.outbox: dict[int, OutboxM] = {}
        self.outbox_seq = 0

    def twin_pending(self, row: InboxM) -> bool:
        return any(
            r.state == "pending" and (r.fid, r.status) == (row.fid, row.status) and r is not row
            for r in self.inbox.values()
        )

    def add(self, events: list[tuple[int, int]], now: float) -> list[bool]:
        added = []
        for fid, status in events:
            dup = any(
                r.state == "pending" and (r.fid, r.status) == (fid, status)
                for r in self.inbox.values()
            )
            if not dup:
                rid = max(self.inbox, default=0) + 1
                self.inbox[rid] = InboxM(rid, fid, status, next_at=now)
            added.append(not dup)
        return added

    def claim(self, now: float) -> int | None:
        ready = [
            r
            for r in self.inbox.values()
            if r.state == "pending" and (r.next_at <= now or r.attempts == 0)
        ]
        if not ready:
            return None
        row = min(ready, key=lambda r: (r.next_at, r.id))
        row.state, row.attempts = "claimed", row.attempts + 1
        return row.id

    def give_back(self, rid: int, now: float, *, delay: float | None) -> None:
        row = self.inbox[rid]
        if row.state != "claimed":
            return
        if self.twin_pending(row):
            row.state, row.outcome = "done", "superseded"
        elif delay is None:
            row.state, row.attempts = "pending", max(row.attempts - 1, 0)
        else:
            row.state, row.next_at = "pending", now + delay

    def release(self, now: float) -> None:
        for row in sorted(self.inbox.values(), key=lambda r: r.id):
            newer_claimed = any(
                r.state == "claimed" and (r.fid, r.status) == (row.fid, row.status)
                for r in self.inbox.values()
                if r.id > row.id
            )
            if row.state == "claimed" and (self.twin_pending(row) or newer_claimed):
                row.state, row.outcome = "done", "superseded"
        for row in self.inbox.values():
            if row.state == "claimed":
                row.state = "pending"

    def fail(self, rid: int) -> None:
        row = self.inbox[rid]
        if row.state == "claimed":
            row.state, row.outcome = "failed", "failed"

    def queue(self, sink: str, key: str, *, replace: bool = False) -> bool:
        same = [o for o in self.outbox.values() if (o.sink, o.key) == (sink, key)]
        if same and not replace:
            return False
        for o in same:
            del self.outbox[o.seq]
        self.outbox_seq += 1
        self.outbox[self.outbox_seq] = OutboxM(self.outbox_seq, sink, key)
        return True

    def apply(self, rid: int | None, rec: Record, sinks: list[str], now: float) -> str:
        current = self.records.get(rec.fonzip_id)
        if current is not None and current[0] == rec.key:
            outcome = "unchanged"
        else:
            outcome = "new" if current is None else "changed"
            self.records[rec.fonzip_id] = (rec.key, now)
            for sink in sinks:
                self.queue(sink, rec.key, replace=True)
        if rid is not None and self.inbox[rid].state == "claimed":
            row = self.inbox[rid]
            row.state, row.outcome = "done", outcome
        return outcome

    def batch(self, sink: str, limit: int) -> list[int]:
        rows = [o for o in self.outbox.values() if o.sink == sink and o.state == "pending"]
        return [o.seq for o in sorted(rows, key=lambda o: o.seq)[:limit]]

    def acknowledge(self, sink: str, ids: list[int]) -> None:
        for i in ids:
            if i in self.outbox and self.outbox[i].sink == sink:
                del self.outbox[i]

    def record_failure(self, sink: str, ids: list[int], dead_after: int) -> None:
        for i in ids:
            o = self.outbox.get(i)
            if o is not None and o.sink == sink:
                o.attempts += 1
                if dead_after > 0 and o.state == "pending" and o.attempts >= dead_after:
                    o.state = "dead"

    def dead_letter(self, sink: str, ids: list[int]) -> None:
        for i in ids:
            o = self.outbox.get(i)
            if o is not None and o.sink == sink:
                o.state, o.attempts = "dead", o.attempts + 1

    def requeue_dead(self, sink: str) -> int:
        dead = sorted(
            (o for o in self.outbox.values() if o.sink == sink and o.state == "dead"),
            key=lambda o: o.seq,
        )
        latest: dict[str, None] = {}
        revived = 0
        for o in dead:
            fid = int(o.key.split(":")[1])
            newest = self.records[fid][0]
            if o.key == newest:
                o.state, o.attempts = "pending", 0
                revived += 1
            else:
                del self.outbox[o.seq]
                latest[newest] = None
        for o in dead:
            latest.pop(o.key, None)
        return revived + sum(self.queue(sink, key) for key in latest)

    def requeue_all(self, sink: str) -> int:
        order = sorted(self.records.values(), key=lambda kv: kv[1])
        return sum(self.queue(sink, key) for key, _ in order)


class StateMachine(RuleBasedStateMachine):
    """One state database, its model, and what the tasks using it hold."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fonzipd-state-"))
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.store = self.loop.run_until_complete(
            Store.open(self.dir / "state.db", clock=self.clock)
        )
        self.injector = Injector()
        self.injector.db = self.store.connection.db
        self.store.connection.faults = self.injector
        self.model = Model()
        self.held: list[int] = []  # inbox rows claimed by the test's "worker"
        # The outbox batch each sink's runner holds: database ids, the model's seqs and
        # the records' ids.
        self.inflight: dict[str, tuple[list[int], list[int], list[int]]] = {}
        # (sink, fid) -> seq of the newest version the sink was given: seqs follow the
        # order versions became their record's state, so they must only ever grow.
        self.delivered: dict[tuple[str, int], int] = {}
        self.versions: dict[int, int] = {}  # fid -> version counter for fetched_at
        self.check = sqlite3.connect(self.dir / "state.db")
        self.id_of: dict[int, int] = {}  # model seq -> outbox id
        self.seq_of: dict[int, int] = {}
        self.max_id = 0

    def teardown(self) -> None:
        STATS["runs"] += 1
        STATS["faults"] += self.injector.count
        self.check.close()
        self.store.connection.faults = None
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running one step --------------------------------------------------------

    def now(self) -> float:
        return self.clock.now().timestamp()

    def step(
        self,
        make: Callable[[], Coroutine[Any, Any, Any]],
        fault: tuple[int, str, bool] | None,
        *,
        autocommit: bool = False,
        durable: bool = True,
    ) -> tuple[bool, Any]:
        """Run one operation as a task with its fault; (its effect must be kept, result).

        Every commit a durable operation makes is fsynced (synchronous FULL, 2); a
        claim's is not (NORMAL, 1)."""
        self.clock.advance(0.001)  # distinct timestamps: updated_at orders the replay
        STATS["steps"] += 1

        async def main() -> tuple[str, Any]:
            task = asyncio.ensure_future(make())
            self.injector.arm(fault, task)
            try:
                return "ok", await task
            except asyncio.CancelledError:
                assert task.cancelled()
                return "cancelled", None
            except sqlite3.OperationalError as exc:
                return "error", str(exc)
            finally:
                self.injector.disarm()

        outcome, result = self.loop.run_until_complete(main())
        assert set(self.injector.levels) <= {2 if durable else 1}, self.injector.levels
        fired = self.injector.fired if fault is not None else None
        if fired is None:
            assert outcome == "ok", f"no fault was injected, yet the step ended {outcome}"
            return True, result
        sql, kind = fired
        assert outcome != "ok", f"{kind} at {sql!r} went unnoticed"
        if outcome == "error":
            assert result == "database or disk is full"  # the injected error, no other
            result = None
        assert fault is not None
        # add_events reads back the rows its statement inserted when some events were
        # duplicates: a fault there comes after that statement committed.
        committed = autocommit and any(
            s.startswith("INSERT") for s in self.injector.seen[: fault[0]]
        )
        kept = committed or (
            kind != "error"
            and (
                sql == "COMMIT"
                or (autocommit and kind == "cancel_in_flight" and not sql.startswith("PRAGMA"))
            )
        )
        return kept, result

    # -- inbox -------------------------------------------------------------------

    @rule(
        events=st.lists(
            st.tuples(st.integers(1, 3), st.sampled_from([3, 4])), min_size=1, max_size=3
        ),
        fault=faults,
    )
    def add_events(self, events: list[tuple[int, int]], fault: Any) -> None:
        evs = [hook(fid, status) for fid, status in events]
        kept, added = self.step(lambda: self.store.inbox.add_events(evs), fault, autocommit=True)
        if kept:
            expected = self.model.add(events, self.now())
            assert added is None or added == expected

    @rule(fault=faults)
    def claim(self, fault: Any) -> None:
        kept, row = self.step(self.store.inbox.claim, fault, durable=False)
        if kept:
            expected = self.model.claim(self.now())
            if row is not None or fault is None:
                assert (None if row is None else row.id) == expected
                if expected is not None:
                    self.held.append(expected)
            # A claim cancelled at its COMMIT: claimed, but no worker has it (the
            # daemon's release_claims at stop and start puts it back).

    def _held(self, pick: int) -> int:
        return self.held[pick % len(self.held)]

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 9), delay=st.sampled_from([0.0, 30.0]), fault=faults)
    def retry_later(self, pick: int, delay: float, fault: Any) -> None:
        rid = self._held(pick)
        kept, _ = self.step(lambda: self.store.inbox.retry_later(rid, "down", delay), fault)
        if kept:
            self.model.give_back(rid, self.now(), delay=delay)
            self.held.remove(rid)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 9), fault=faults)
    def unclaim(self, pick: int, fault: Any) -> None:
        rid = self._held(pick)
        kept, _ = self.step(lambda: self.store.inbox.unclaim(rid), fault)
        if kept:
            self.model.give_back(rid, self.now(), delay=None)
            self.held.remove(rid)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 9), fault=faults)
    def fail(self, pick: int, fault: Any) -> None:
        rid = self._held(pick)
        kept, _ = self.step(lambda: self.store.inbox.fail(rid, "404"), fault)
        if kept:
            self.model.fail(rid)
            self.held.remove(rid)

    @rule(fault=faults)
    def release_claims(self, fault: Any) -> None:
        kept, _ = self.step(self.store.inbox.release_claims, fault)
        if kept:
            self.model.release(self.now())
            self.held.clear()

    @rule(seconds=st.sampled_from([1.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- records -----------------------------------------------------------------

    def _record(self, fid: int, name: int) -> Record:
        n = self.versions[fid] = self.versions.get(fid, 0) + 1
        rec = make_record(fid, name=NAMES[name])
        later = rec.fetched_at + dt.timedelta(seconds=n)  # each fetch newer than the last
        return dataclasses.replace(rec, fetched_at=later)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 9), name=st.integers(0, 2), fault=faults)
    def apply_fetched(self, pick: int, name: int, fault: Any) -> None:
        rid = self._held(pick)
        fid = self.model.inbox[rid].fid
        rec = self._record(fid, name)
        sinks = list(SINKS)  # the daemon queues for every enabled sink
        kept, applied = self.step(lambda: self.store.records.apply_record(rid, rec, sinks), fault)
        if kept:
            outcome = self.model.apply(rid, rec, sinks, self.now())
            assert applied is None or applied.outcome == outcome
            self.held.remove(rid)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 9), name=st.integers(0, 2), claim=st.integers(0, 2), fault=faults)
    def apply_and_claim(self, pick: int, name: int, claim: int, fault: Any) -> None:
        """A worker's record stored and its next rows claimed in one transaction."""
        rid = self._held(pick)
        fid = self.model.inbox[rid].fid
        rec = self._record(fid, name)
        sinks = list(SINKS)
        kept, result = self.step(
            lambda: self.store.records.apply_and_claim([(rid, rec, sinks)], claim), fault
        )
        if kept:
            outcome = self.model.apply(rid, rec, sinks, self.now())
            self.held.remove(rid)
            expected = [self.model.claim(self.now()) for _ in range(claim)]
            claimed = [r for r in expected if r is not None]
            self.held.extend(claimed)
            if result is not None:
                applied, rows = result
                assert [a.outcome for a in applied] == [outcome]
                assert sorted(r.id for r in rows) == sorted(claimed)

    @rule(fid=st.integers(1, 3), name=st.integers(0, 2), fault=faults)
    def apply_listed(self, fid: int, name: int, fault: Any) -> None:
        rec = self._record(fid, name)
        kept, applied = self.step(
            lambda: self.store.records.apply_record(None, rec, list(SINKS)), fault
        )
        if kept:
            outcome = self.model.apply(None, rec, list(SINKS), self.now())
            assert applied is None or applied.outcome == outcome

    # -- outbox --------------------------------------------------------------------

    @precondition(lambda self: len(self.inflight) < len(SINKS))
    @rule(sink=st.sampled_from(SINKS), limit=st.integers(1, 3), fault=faults)
    def take_batch(self, sink: str, limit: int, fault: Any) -> None:
        if sink in self.inflight:
            return
        _, rows = self.step(lambda: self.store.outbox.batch(sink, limit), fault)
        if rows is None:
            return  # the read failed or was cancelled: nothing changed
        seqs = [self.seq_of[r.id] for r in rows]
        assert seqs == self.model.batch(sink, limit)
        for r, seq in zip(rows, seqs, strict=True):
            assert r.record_key == r.record.key == self.model.outbox[seq].key
        if rows:
            self.inflight[sink] = ([r.id for r in rows], seqs, [r.record.fonzip_id for r in rows])

    def _sink_with_batch(self, pick: int) -> str:
        return sorted(self.inflight)[pick % len(self.inflight)]

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 1), fault=faults)
    def acknowledge(self, pick: int, fault: Any) -> None:
        sink = self._sink_with_batch(pick)
        ids, seqs, fids = self.inflight[sink]
        kept, _ = self.step(lambda: self.store.outbox.acknowledge(sink, ids), fault)
        if kept:
            for seq, fid in zip(seqs, fids, strict=True):
                newest = self.delivered.get((sink, fid), -1)
                assert seq > newest, f"{sink} got record {fid} ({seq}) after a newer version"
                self.delivered[(sink, fid)] = seq
            self.model.acknowledge(sink, seqs)
            del self.inflight[sink]

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 1), dead_after=st.sampled_from([0, 1, 2]), fault=faults)
    def sink_failed(self, pick: int, dead_after: int, fault: Any) -> None:
        sink = self._sink_with_batch(pick)
        ids, seqs, _ = self.inflight[sink]
        kept, _ = self.step(
            lambda: self.store.outbox.record_failure(sink, ids, "down", dead_after=dead_after),
            fault,
        )
        if kept:
            self.model.record_failure(sink, seqs, dead_after)
            del self.inflight[sink]

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 1), fault=faults)
    def dead_letter(self, pick: int, fault: Any) -> None:
        sink = self._sink_with_batch(pick)
        ids, seqs, _ = self.inflight[sink]
        kept, _ = self.step(lambda: self.store.outbox.dead_letter(sink, ids, "refused"), fault)
        if kept:
            self.model.dead_letter(sink, seqs)
            del self.inflight[sink]

    @rule(sink=st.sampled_from(SINKS), dead=st.booleans(), fault=faults)
    def replay(self, sink: str, dead: bool, fault: Any) -> None:
        if sink in self.inflight:
            return  # the CLI replays while the runner holds a batch: see take_batch
        kept, count = self.step(lambda: self.store.outbox.requeue(sink, dead=dead), fault)
        if kept:
            expected = self.model.requeue_dead(sink) if dead else self.model.requeue_all(sink)
            assert count is None or count == expected

    # -- after every step --------------------------------------------------------

    @invariant()
    def connection_is_clean_and_usable(self) -> None:
        conn = self.store.connection
        assert not conn.db.in_transaction
        assert not conn._lock.locked()
        self.loop.run_until_complete(self.store.meta.check_writable())

    @invariant()
    def database_equals_model(self) -> None:
        db = self.check
        inbox = db.execute(
            "SELECT id, fonzip_id, event_status, state, attempts, outcome FROM inbox ORDER BY id"
        ).fetchall()
        assert inbox == [
            (r.id, r.fid, r.status, r.state, r.attempts, r.outcome)
            for r in sorted(self.model.inbox.values(), key=lambda r: r.id)
        ]
        due = db.execute("SELECT id, next_attempt_at FROM inbox WHERE state = 'pending'")
        for rid, at in due:
            assert at == pytest.approx(self.model.inbox[rid].next_at, abs=1e-6)
        records = dict(
            db.execute("SELECT fonzip_id, kind || ':' || fonzip_id || ':' || version FROM records")
        )
        assert records == {fid: key for fid, (key, _) in self.model.records.items()}
        outbox = db.execute(
            "SELECT id, sink_id, record_key, state, attempts FROM outbox ORDER BY id"
        ).fetchall()
        assert [row[1:] for row in outbox] == [
            (o.sink, o.key, o.state, o.attempts)
            for o in sorted(self.model.outbox.values(), key=lambda o: o.seq)
        ]
        # Ids follow the model's order, never change, and are never reused.
        model_rows = sorted(self.model.outbox.values(), key=lambda o: o.seq)
        for (rid, *_), o in zip(outbox, model_rows, strict=True):
            if o.seq in self.id_of:
                assert self.id_of[o.seq] == rid
            else:
                assert rid > self.max_id, f"outbox id {rid} reused"
                self.id_of[o.seq], self.max_id = rid, rid
        self.seq_of = {rid: seq for seq, rid in self.id_of.items()}

    @invariant()
    def each_sinks_queue_holds_versions_in_creation_order(self) -> None:
        """Nothing queued for a sink is older than what it was given of that record."""
        for o in self.model.outbox.values():
            if o.state == "pending":
                fid = int(o.key.split(":")[1])
                assert o.seq > self.delivered.get((o.sink, fid), -1), f"{o.sink}: {o.key} stale"


StateMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStateUnderFaults = StateMachine.TestCase


@pytest.fixture(autouse=True, scope="module")
def _report_size() -> Iterator[None]:
    yield
    print(f"\nstate machine and sweep together: {STATS}")


def test_every_fault_at_every_statement_of_every_operation() -> None:
    """Exhaustive: each operation faulted at each of its statements, by each fault kind.

    An attempt that keeps nothing is simply made again with the next fault, so the
    scenario moves on; the model and the invariants are checked after every attempt.
    """
    machine = StateMachine()
    attempts: dict[str, int] = {}
    seen: set[str] = set()

    def sweep(name: str, op: Callable[[Any], None]) -> None:
        for k in range(12):
            for kind in FAULT_KINDS:
                for again in (False, True):
                    machine.injector.fired = None
                    op((k, kind, again))
                    if machine.injector.fired is None:
                        return  # k is past the operation's last statement: it ran
                    seen.add(machine.injector.fired[0].split()[0])
                    attempts[name] = attempts.get(name, 0) + 1
                    machine.connection_is_clean_and_usable()
                    machine.database_equals_model()
                    machine.each_sinks_queue_holds_versions_in_creation_order()
        raise AssertionError(f"{name}: more statements than the sweep covers")

    try:
        sweep("add_events", lambda f: machine.add_events([(1, 3), (2, 3)], f))
        sweep("claim", machine.claim)
        sweep("add_events", lambda f: machine.add_events([(1, 3), (3, 4)], f))
        sweep("apply_listed", lambda f: machine.apply_listed(2, 1, f))

        def top_up() -> None:
            machine.time_passes(31.0)
            machine.add_events([(fid, st) for fid in (1, 2, 3) for st in (3, 4)], None)
            for _ in range(6):
                machine.claim(None)
            assert len(machine.held) >= 5

        top_up()
        sweep("retry_later", lambda f: machine.retry_later(0, 30.0, f))
        top_up()
        sweep("unclaim", lambda f: machine.unclaim(0, f))
        top_up()
        sweep("apply_fetched", lambda f: machine.apply_fetched(0, 0, f))
        top_up()
        sweep("apply_and_claim", lambda f: machine.apply_and_claim(0, 1, 2, f))
        top_up()
        sweep("fail", lambda f: machine.fail(0, f))
        sweep("release_claims", machine.release_claims)
        sweep("take_batch", lambda f: machine.take_batch("csv", 2, f))
        sweep("sink_failed", lambda f: machine.sink_failed(0, 2, f) if machine.inflight else None)
        machine.take_batch("csv", 3, None)
        sweep("dead_letter", lambda f: machine.dead_letter(0, f) if machine.inflight else None)
        sweep("apply_listed", lambda f: machine.apply_listed(2, 2, f))
        sweep("replay", lambda f: machine.replay("csv", True, f))
        machine.take_batch("csv", 3, None)
        sweep("acknowledge", lambda f: machine.acknowledge(0, f) if machine.inflight else None)
        sweep("replay", lambda f: machine.replay("http", False, f))
    finally:
        machine.teardown()
    assert {"BEGIN", "SELECT", "INSERT", "UPDATE", "DELETE", "COMMIT"} <= seen
    assert machine.injector.count_again > 0  # cancelled again during a ROLLBACK
    print(f"faulted attempts: {sum(attempts.values())} ({attempts})")
