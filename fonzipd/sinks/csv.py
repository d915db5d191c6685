"""The CSV sink: files per kind and business date (or month), each row written once.

Files are ``<directory>/<kind>/<YYYY-MM-DD>.csv`` (``<YYYY-MM>.csv`` with
``period = "month"``; ``<kind>/undated.csv`` for rows without a date), a header row,
RFC 4180 quoting, CRLF line ends. Two layouts:

* ``entries`` (the default): bookkeeping entries, not snapshots. A payment is a row
  in the file of its business date; its refund is a row of its own, with the amount
  negated, in the file of the refund's business date, pointing at the payment; a
  day's file changes only when something on that day happens. Columns
  :data:`~fonzipd.sinks.csv_format.ENTRY_COLUMNS`; see :mod:`fonzipd.sinks.csv_format`.
  Separator, decimal mark, BOM and local or UTC times follow a ``profile``
  (``standard``, ``excel-tr``), each overridable on its own.
* ``snapshots``: the format of fonzipd before issue 12, kept for existing folders:
  one row per record version (a refund is a second row, in the payment's file), the
  columns of :data:`COLUMNS`, comma, decimal point, UTC times.

Cells a spreadsheet would run as a formula (text starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return: a donor named ``=HYPERLINK(...)``) get a single
quote in front, the OWASP way; the number columns (``fonzip_id``, ``amount``,
``fonzip_user_id``) come from typed values, never from text, and stay as they are,
so a refund's ``-12.50`` is still a number. Machine sinks (SQLite, HTTP) keep the raw
value.

Files and the directories fonzipd creates are 0600 and 0700, whatever the umask.

Exactly one row per entry (snapshots: per version), even across ``kill -9``: a ledger
(SQLite, ``synchronous=FULL``, in fonzipd's state directory, not among the files: see
:func:`ledger_path`) holds each file's committed size and every row key written
(entries: the ``entry_id``; snapshots: the record key). A batch: skip keys already in
the ledger; for each file, cut it back to its committed size (rows of a write whose
ledger commit never happened, or half a row) and append the rows; fsync the files
(and the directories of new files); then record the keys and new sizes in one ledger
transaction. A crash before that commit leaves rows the next write cuts away and
writes again; a crash after it leaves keys the next write skips. The ledger records
its layout: a folder written in the other layout is not mixed into (see ``_open``).

``forget`` (``fonzipd forget``) finds the files holding a person's records through the
ledger and rewrites each one: the person cells and ``data`` of those rows emptied, every
other row kept byte for byte, written to a temporary file in the same folder, fsynced
and renamed over the old one. A crash leaves the old file or the new one, never half
of one; emptied cells only make a file shorter, and a file shorter than its ledger size
is continued at its end, so the ledger's size may be updated after the rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import pydantic
import structlog

from fonzipd import crashpoints
from fonzipd.private_files import create_private_file, make_private_dir, open_private
from fonzipd.sink import (
    Erasure,
    PermanentSinkError,
    Record,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
    TransientSinkError,
)
from fonzipd.sinks.csv_format import (
    ENTRY_COLUMNS,
    PROFILES,
    Layout,
    entries,
    entry_path,
    entry_row,
    text_cell,
)

log = structlog.get_logger(__name__)

COLUMNS: tuple[str, ...] = (
    "key",
    "kind",
    "fonzip_id",
    "status",
    "amount",
    "currency",
    "occurred_at",
    "business_date",
    "person_name",
    "person_email",
    "person_phone",
    "fonzip_user_id",
    "source",
    "fetched_at",
    "version",
)
"""The columns of a ``snapshots`` file, in order; ``data`` follows with ``include_data``."""

OLD_LEDGER_NAME = ".fonzipd-csv-ledger.db"
"""Where the ledger was kept before (inside the directory): moved away at open."""
LOCK_NAME = ".fonzipd-csv.lock"
"""An empty lock file in the directory: two sinks (or two daemons) never share it."""
LEDGERS_DIR = "csv-ledgers"
_BOM = "\ufeff".encode()

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,      -- relative to the directory
    size INTEGER NOT NULL,      -- bytes committed: everything after is a torn write
    header TEXT NOT NULL        -- the header row the file was started with
);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL         -- 'directory': the CSV folder this ledger belongs to
);
"""


class CSVOptions(SinkOptions):
    """``[sinks.<id>] type = "csv"``."""

    directory: Path
    """Where the ``<kind>/<date>.csv`` files go; created (0700) if missing."""
    layout: Literal["entries", "snapshots"] = "entries"
    """``entries``: a row per payment and per refund, each in the file of its own day.
    ``snapshots``: a row per record version (the format before issue 12, for folders
    written by it)."""
    profile: Literal["standard", "excel-tr"] = "standard"
    """``standard``: ``,`` separator, decimal point, no BOM, UTC times. ``excel-tr``:
    ``;`` separator, decimal comma, BOM, local times (Excel in Turkish locales)."""
    delimiter: Literal[",", ";", "\t"] | None = None
    """Overrides the profile's field separator."""
    decimal_comma: bool | None = None
    """Overrides the profile's decimal mark: ``250,50`` instead of ``250.50``."""
    excel_bom: bool | None = None
    """Overrides the profile: start new files with a UTF-8 byte order mark."""
    local_times: bool | None = None
    """Overrides the profile: times in the configured timezone (``2026-11-25 14:03:00``)
    instead of UTC ISO-8601."""
    period: Literal["day", "month"] = "day"
    """One file per kind and day, or per kind and month (``<kind>/<YYYY-MM>.csv``)."""
    include_data: bool = False
    """Add a ``data`` column with the full Fonzip object as JSON."""

    @pydantic.model_validator(mode="after")
    def _snapshots_keep_their_format(self) -> CSVOptions:
        if self.layout == "snapshots":
            set_keys = [
                key
                for key in ("delimiter", "decimal_comma", "local_times")
                if getattr(self, key) is not None
            ]
            if self.profile != "standard":
                set_keys.insert(0, "profile")
            if self.period != "day":
                set_keys.append("period")
            if set_keys:
                raise ValueError(
                    f'{", ".join(set_keys)} need layout = "entries": the snapshots layout '
                    "is the format of earlier versions, kept as it was for existing folders"
                )
        return self

    def resolved(self) -> Layout:
        """The profile with the individual settings applied."""
        base = PROFILES[self.profile]
        return Layout(
            delimiter=base.delimiter if self.delimiter is None else self.delimiter,
            decimal_comma=(
                base.decimal_comma if self.decimal_comma is None else self.decimal_comma
            ),
            bom=base.bom if self.excel_bom is None else self.excel_bom,
            local_times=base.local_times if self.local_times is None else self.local_times,
        )


def _number(value: object) -> str:
    # An int or a Decimal: written as is, so that "-12.50" stays a number.
    return "" if value is None else str(value)


def _fields(record: Record, include_data: bool) -> list[str]:
    row = [
        text_cell(record.key),
        text_cell(record.kind),
        _number(record.fonzip_id),
        text_cell(record.status),
        _number(record.amount),
        text_cell(record.currency),
        "" if record.occurred_at is None else record.occurred_at.isoformat(),
        "" if record.business_date is None else record.business_date.isoformat(),
        text_cell(record.person.name),
        text_cell(record.person.email),
        text_cell(record.person.phone),
        _number(record.person.fonzip_user_id),
        text_cell(record.source),
        record.fetched_at.isoformat(),
        text_cell(record.version),
    ]
    if include_data:
        row.append(text_cell(json.dumps(record.data, ensure_ascii=False, separators=(",", ":"))))
    return row


def _csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    writer = csv.writer(
        buffer, delimiter=delimiter, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL
    )
    writer.writerows(rows)
    return buffer.getvalue()


def relative_path(record: Record) -> str:
    """The file of a record in the snapshots layout: ``<kind>/<date or undated>.csv``."""
    day = "undated" if record.business_date is None else record.business_date.isoformat()
    return f"{record.kind}/{day}.csv"


def ledger_path(state_dir: Path, directory: Path) -> Path:
    """The ledger of a CSV directory: ``<state_dir>/csv-ledgers/<hash of the directory>.db``.

    In fonzipd's state directory, not in the CSV folder, which a user may share (with
    an accountant, say); keyed by the folder's resolved path, so that it follows the
    files rather than the sink's id.
    """
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return state_dir / LEDGERS_DIR / f"{digest}.db"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CSVSink(Sink):
    """Appends records to CSV files per kind and business date, each version once."""

    name: ClassVar[str] = "csv"
    Options: ClassVar[type[SinkOptions]] = CSVOptions
    batch_size: ClassVar[int] = 500

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, CSVOptions)
        self._opts = options
        self._dir = options.directory
        self._ledger_path = ledger_path(context.state_dir, options.directory)
        self._layout = options.resolved()
        columns = list(ENTRY_COLUMNS if options.layout == "entries" else COLUMNS)
        if options.include_data:
            columns.append("data")
        self._header = _csv_text([columns], self._layout.delimiter)
        self._ledger: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._log = log.bind(sink_id=context.sink_id, directory=str(self._dir))

    async def open(self) -> None:
        await asyncio.to_thread(self._open)
        self._log.info("sink_opened")

    async def write(self, batch: Sequence[Record]) -> None:
        if self._ledger is None:
            raise RuntimeError(f"CSV sink {self.context.sink_id!r} is not open")
        if not batch:
            return
        written = await asyncio.to_thread(self._write, batch)
        self._log.debug("batch_written", records=len(batch), rows=written)

    async def close(self) -> None:
        ledger, self._ledger = self._ledger, None
        lock_fd, self._lock_fd = self._lock_fd, None
        if ledger is not None:
            await asyncio.to_thread(ledger.close)
        if lock_fd is not None:
            os.close(lock_fd)  # releases the flock
        if ledger is not None:
            self._log.info("sink_closed")

    async def forget(self, erasure: Erasure) -> int:
        """Empty the person cells (and ``data``) of the rows about a person, file by file."""
        if self._ledger is None:
            raise RuntimeError(f"CSV sink {self.context.sink_id!r} is not open")
        rows, files = await asyncio.to_thread(self._forget, erasure)
        self._log.info("person_forgotten", records=len(erasure.records), rows=rows, files=files)
        return rows

    # The rest runs in a worker thread: fsync blocks.

    def _forget(self, erasure: Erasure) -> tuple[int, int]:
        assert self._ledger is not None
        ledger = self._ledger
        by_file: dict[str, set[str]] = {}
        with self._os_errors(f"read its ledger in {self._dir}"):
            for kind, fid in erasure.records:
                prefix = f"{kind}:{fid}:"
                for key, rel in ledger.execute(
                    "SELECT key, path FROM keys WHERE substr(key, 1, ?) = ?",
                    (len(prefix), prefix),
                ):
                    by_file.setdefault(rel, set()).add(key)
            sizes = dict(ledger.execute("SELECT path, size FROM files").fetchall())
        rows = files = 0
        with self._os_errors(f"clean {self._dir}"):
            # A rewrite a crash interrupted before its rename: the old file is intact.
            for leftover in self._dir.glob("*/.*.forget"):
                leftover.unlink(missing_ok=True)
        for rel, keys in sorted(by_file.items()):
            changed = self._rewrite(rel, keys, sizes.get(rel))
            rows += changed
            files += 1 if changed else 0
        return rows, files

    def _rewrite(self, rel: str, keys: set[str], committed: int | None) -> int:
        """Rewrite one file with the person cells of ``keys``' rows emptied; rows changed."""
        path = self._dir / rel
        with self._os_errors(f"rewrite {path}"):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                return 0
            if committed is not None:
                raw = raw[:committed]  # a torn tail is no committed row: it goes
            text, changed = erase_rows(raw, keys)
            if not changed:
                return 0
            tmp = path.with_name(f".{path.name}.forget")
            tmp.unlink(missing_ok=True)
            fd, _ = open_private(tmp, os.O_WRONLY)
            try:
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            assert self._ledger is not None
            # Emptied cells make the file shorter: the ledger's size is updated after
            # the rename (a longer file would need it before; see the module docstring).
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            self._ledger.execute("UPDATE files SET size = ? WHERE path = ?", (len(text), rel))
        return changed

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.OperationalError) as exc:
            # Unwritable, missing, full: all may pass (a remount, a freed disk).
            raise TransientSinkError(f"CSV sink cannot {doing}: {exc}") from exc

    def _open(self) -> None:
        with self._os_errors(f"use directory {self._dir}"):
            make_private_dir(self._dir)
            lock_fd, _ = open_private(self._dir / LOCK_NAME, os.O_RDWR)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise SinkConfigError(
                    f"sinks.{self.context.sink_id}: another CSV sink is writing to "
                    f"{self._dir}; give each CSV sink its own directory"
                ) from None
            try:
                make_private_dir(self._ledger_path.parent)
                self._move_old_ledger()
                create_private_file(self._ledger_path)
                ledger = sqlite3.connect(
                    self._ledger_path, isolation_level=None, check_same_thread=False
                )
                ledger.execute("PRAGMA journal_mode=WAL")
                ledger.execute("PRAGMA synchronous=FULL")
                ledger.executescript(_LEDGER_SCHEMA)
                ledger.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('directory', ?)",
                    (str(self._dir.resolve()),),
                )
                self._check_layout(ledger)
                self._recover(ledger)
            except BaseException:
                os.close(lock_fd)
                raise
        self._ledger, self._lock_fd = ledger, lock_fd

    def _move_old_ledger(self) -> None:
        """Move a ledger kept in the CSV folder (where fonzipd used to keep it) to the state dir.

        Copied with SQLite's backup (which reads its WAL too) to a temporary file,
        fsynced, renamed into place, and only then removed from the folder: a crash at
        any point leaves either the old ledger or a complete new one, never neither.
        Runs under the directory's lock.
        """
        old = self._dir / OLD_LEDGER_NAME
        leftovers = [old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")]
        if not any(p.exists() for p in leftovers):
            return
        if not self._ledger_path.exists():
            tmp = self._ledger_path.with_name(self._ledger_path.name + ".moving")
            tmp.unlink(missing_ok=True)
            create_private_file(tmp)
            source = sqlite3.connect(old)
            try:
                target = sqlite3.connect(tmp)
                try:
                    source.backup(target)
                finally:
                    target.close()
            finally:
                source.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._ledger_path)
            _fsync_dir(self._ledger_path.parent)
        for path in leftovers:
            path.unlink(missing_ok=True)
        _fsync_dir(self._dir)
        self._log.info("csv_ledger_moved", to=str(self._ledger_path))

    def _check_layout(self, ledger: sqlite3.Connection) -> None:
        """Never mix layouts in one folder; start afresh once the old files are moved away.

        A ledger without a layout was written before layouts existed: snapshots. When
        the configured layout differs and a file the ledger wrote is still in the
        folder, opening fails (a SinkConfigError saying what to do). When none is left
        (the user moved them aside), the ledger is emptied and takes the new layout, so
        that ``fonzipd replay`` can write every record again in it.
        """
        wanted = self._opts.layout
        row = ledger.execute("SELECT value FROM meta WHERE name = 'layout'").fetchone()
        paths = [str(p) for (p,) in ledger.execute("SELECT path FROM files")]
        have = str(row[0]) if row is not None else ("snapshots" if paths else wanted)
        if have != wanted:
            present = [p for p in paths if (self._dir / p).exists()]
            if present:
                raise SinkConfigError(
                    f"sinks.{self.context.sink_id}: {self._dir} holds CSV files in the "
                    f"{have} layout ({len(present)} file(s), e.g. {present[0]}); to write "
                    f"{wanted}, move them out of the folder (or set directory to a new "
                    f"one), start fonzipd, and run `fonzipd replay --sink "
                    f"{self.context.sink_id}` to write every stored record in the new "
                    f'layout; or set layout = "{have}" to keep the old format'
                )
            ledger.execute("BEGIN IMMEDIATE")
            ledger.execute("DELETE FROM keys")
            ledger.execute("DELETE FROM files")
            ledger.execute("COMMIT")
            self._log.info("csv_ledger_reset", old_layout=have, layout=wanted)
        ledger.execute(
            "INSERT INTO meta (name, value) VALUES ('layout', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (wanted,),
        )

    def _recover(self, ledger: sqlite3.Connection) -> None:
        """Cut every file back to its committed size: the tail is a write never acknowledged."""
        for rel, size in ledger.execute("SELECT path, size FROM files").fetchall():
            path = self._dir / rel
            with contextlib.suppress(FileNotFoundError):
                actual = path.stat().st_size
                if actual > size:
                    os.truncate(path, size)
                    self._log.warning("torn_write_truncated", file=rel, removed_bytes=actual - size)

    def _rows(self, record: Record) -> list[tuple[str, str, list[str]]]:
        """(ledger key, file, cells) of each row a record gives, in the layout configured."""
        opts = self._opts
        if opts.layout == "snapshots":
            return [(record.key, relative_path(record), _fields(record, opts.include_data))]
        tz = self.context.timezone
        return [
            (
                entry.entry_id,
                entry_path(entry, opts.period),
                entry_row(entry, tz=tz, layout=self._layout, include_data=opts.include_data),
            )
            for entry in entries(record, tz)
        ]

    def _write(self, batch: Sequence[Record]) -> int:
        assert self._ledger is not None
        ledger = self._ledger
        # (ledger key, record key, cells) per file, in the order of the batch.
        by_file: dict[str, list[tuple[str, str, list[str]]]] = {}
        candidates = [(record, self._rows(record)) for record in batch]
        keys = [key for _, rows in candidates for key, _, _ in rows]
        with self._os_errors(f"read its ledger in {self._dir}"):
            done = {
                k
                for (k,) in ledger.execute(
                    "SELECT key FROM keys WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(keys),),
                )
            }
            files = {
                rel: (size, header)
                for rel, size, header in ledger.execute("SELECT path, size, header FROM files")
            }
        for record, rows in candidates:
            for key, rel, cells in rows:
                if key in done:
                    continue
                done.add(key)  # the same key twice in one batch: one row
                by_file.setdefault(rel, []).append((key, record.key, cells))
        if not by_file:
            return 0

        new_sizes: dict[str, int] = {}
        rejected: list[PermanentSinkError] = []
        for rel, file_rows in list(by_file.items()):
            size, header = files.get(rel, (0, self._header))
            try:
                new_sizes[rel] = self._append(
                    rel,
                    size,
                    header,
                    [cells for _, _, cells in file_rows],
                    record_keys=[record_key for _, record_key, _ in file_rows],
                )
            except PermanentSinkError as exc:
                rejected.append(exc)
                del by_file[rel]

        with self._os_errors(f"commit its ledger in {self._dir}"):
            ledger.execute("BEGIN IMMEDIATE")
            try:
                ledger.executemany(
                    "INSERT OR IGNORE INTO keys (key, path) VALUES (?, ?)",
                    [(key, rel) for rel, rows in by_file.items() for key, _, _ in rows],
                )
                ledger.executemany(
                    "INSERT INTO files (path, size, header) VALUES (?, ?, ?) "
                    "ON CONFLICT (path) DO UPDATE "
                    "SET size = excluded.size, header = excluded.header",
                    [(rel, size, self._header) for rel, size in new_sizes.items()],
                )
                ledger.execute("COMMIT")
            except BaseException:
                if ledger.in_transaction:
                    ledger.execute("ROLLBACK")
                raise
        if rejected:
            raise PermanentSinkError(
                "; ".join(str(e) for e in rejected),
                failed_keys=frozenset().union(*(e.failed_keys or () for e in rejected)),
            )
        return sum(len(rows) for rows in by_file.values())

    def _append(
        self,
        rel: str,
        committed: int,
        header: str,
        rows: list[list[str]],
        *,
        record_keys: list[str],
    ) -> int:
        """Append ``rows`` after the first ``committed`` bytes of a file; its new size."""
        path = self._dir / rel
        with self._os_errors(f"write {path}"):
            created_dir = not path.parent.is_dir()
            if created_dir:
                make_private_dir(path.parent)
            fd, created = open_private(path, os.O_WRONLY)
            try:
                actual = os.fstat(fd).st_size
                if actual > committed:
                    os.ftruncate(fd, committed)
                    self._log.warning(
                        "torn_write_truncated", file=rel, removed_bytes=actual - committed
                    )
                elif actual < committed:
                    # Someone moved or cut the file (to import it, say): start it afresh.
                    self._log.warning("csv_file_shorter_than_ledger", file=rel, size=actual)
                    committed = actual
                if committed > 0 and header != self._header:
                    raise PermanentSinkError(
                        f"CSV sink: {path} was started with other columns (include_data, "
                        f"the profile or the separator changed?); move it away, then replay "
                        f"the dead letters",
                        failed_keys=record_keys,
                    )
                data = _csv_text(rows, self._layout.delimiter).encode()
                if committed == 0:
                    data = (_BOM if self._layout.bom else b"") + self._header.encode() + data
                os.lseek(fd, committed, os.SEEK_SET)
                crashpoints.reached("csv_torn_line", lambda: os.write(fd, data[: len(data) // 2]))
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(path.parent)
            if created_dir:
                _fsync_dir(path.parent.parent)
            return committed + len(data)


_PERSON_COLUMNS = ("person_name", "person_email", "person_phone", "fonzip_user_id")


def erase_rows(raw: bytes, keys: set[str]) -> tuple[bytes, int]:
    """The file ``raw`` with the person cells and ``data`` of the rows whose ``key`` is
    in ``keys`` emptied, every other byte kept; and how many rows changed.

    The separator is read from the header (the character after its first name), so
    files written with another one are rewritten with theirs. Rows are matched on
    ``entry_id`` in entries files, on ``key`` in snapshots files.
    """
    bom = _BOM if raw.startswith(_BOM) else b""
    lines = raw[len(bom) :].decode("utf-8").splitlines(keepends=True)
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for line in lines:
            consumed.append(line)
            yield line

    header_line = lines[0] if lines else ""
    # The header's first name is "key" (snapshots) or "entry_id" (entries): the
    # character after it is the separator.
    first = "entry_id" if header_line.startswith("entry_id") else "key"
    delimiter = header_line[len(first)] if len(header_line) > len(first) else ","
    reader = csv.reader(feed(), delimiter=delimiter)
    out: list[str] = []
    changed = 0
    header: list[str] | None = None
    for cells in reader:
        text = "".join(consumed)
        consumed.clear()
        if header is None:
            header = cells
            out.append(text)
            continue
        # The ledger's keys: entry ids (entries) or record keys (snapshots).
        key_column = "entry_id" if "entry_id" in header else "key"
        at = header.index(key_column) if key_column in header else len(cells)
        if at >= len(cells) or cells[at] not in keys:
            out.append(text)
            continue
        blank = [header.index(c) for c in (*_PERSON_COLUMNS, "data") if c in header]
        new = list(cells)
        for i in blank:
            if i < len(new):
                new[i] = "{}" if header[i] == "data" else ""
        ending = "\r\n" if text.endswith("\r\n") else "\n"
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=delimiter, lineterminator=ending).writerow(new)
        rewritten = buffer.getvalue()
        if new != cells:
            changed += 1
        out.append(rewritten if new != cells else text)
    out.append("".join(consumed))
    return bom + "".join(out).encode(), changed
