"""An example sink plugin: appends records to a JSON Lines file, each version once.

Configure it with::

    plugins_dir = "plugins"          # the folder holding this file

    [sinks.archive]
    type = "jsonl"
    path = "/var/lib/fonzipd/records.jsonl"

Each line is ``Record.to_json_dict()``. Exactly one line per record version, even across
``kill -9``: every line carries its ``key``, so at ``open`` the sink reads the file,
cuts away a last line left half written by a crash, and remembers the keys it holds;
``write`` appends only new keys and returns after ``fsync``. (It keeps every key in
memory: fine for hundreds of thousands of records; for more, keep a ledger as the
built-in CSV sink does.) The file holds donors' personal data, so it is created 0600
(its missing folders 0700) whatever the umask, with ``fonzipd.private_files``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from fonzipd.private_files import create_private_file, make_private_dir
from fonzipd.sink import Record, Sink, SinkContext, SinkOptions, TransientSinkError


class JSONLOptions(SinkOptions):
    """``[sinks.<id>] type = "jsonl"``."""

    path: Path
    """The file; created (with its directory) if missing."""


class JSONLSink(Sink):
    """One JSON object per line, one line per record version."""

    name: ClassVar[str] = "jsonl"
    Options: ClassVar[type[SinkOptions]] = JSONLOptions
    batch_size: ClassVar[int] = 200

    def __init__(self, options: SinkOptions, context: SinkContext) -> None:
        super().__init__(options, context)
        assert isinstance(options, JSONLOptions)
        self.path = options.path
        self._keys: set[str] | None = None  # None: not open
        self._torn = False  # a failed append may have left half a line

    async def open(self) -> None:
        try:
            self._keys = await asyncio.to_thread(self._recover)
        except OSError as exc:
            raise TransientSinkError(f"jsonl sink cannot open {self.path}: {exc}") from exc

    async def write(self, batch: Sequence[Record]) -> None:
        if self._keys is None:
            raise RuntimeError("jsonl sink is not open")
        lines: list[str] = []
        new: set[str] = set()
        for record in batch:
            if record.key not in self._keys and record.key not in new:
                new.add(record.key)
                lines.append(json.dumps(record.to_json_dict(), ensure_ascii=False) + "\n")
        if not lines:
            return
        try:
            if self._torn:
                self._keys = await asyncio.to_thread(self._recover)
                self._torn = False
            await asyncio.to_thread(self._append, "".join(lines).encode())
        except OSError as exc:
            self._torn = True
            raise TransientSinkError(f"jsonl sink cannot write {self.path}: {exc}") from exc
        self._keys |= new

    async def close(self) -> None:
        self._keys = None

    def _recover(self) -> set[str]:
        """The keys in the file, after cutting away a half-written last line."""
        make_private_dir(self.path.parent)
        created = create_private_file(self.path)
        keys: set[str] = set()
        with open(self.path, "a+b") as f:
            f.seek(0)
            good = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a crash in the middle of this line
                keys.add(json.loads(line)["key"])
                good += len(line)
            f.truncate(good)
            os.fsync(f.fileno())
        if created:  # make the new file's directory entry durable too
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return keys

    def _append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
