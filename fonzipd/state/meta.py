"""The meta table: small named values (heartbeats, last-seen marks, the readiness probe)."""

from __future__ import annotations

from fonzipd.state.connection import Connection


class Meta:
    """The ``meta`` key/value table."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(self, key: str) -> str | None:
        """The value under ``key``, or None."""
        row = await self._conn.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any other."""
        async with self._conn.transaction() as tx:
            await tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    async def check_writable(self) -> None:
        """Raise sqlite3.Error when a write transaction cannot be committed."""
        async with self._conn.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('readiness_probe', ?)",
                (self._conn.clock.now().isoformat(),),
            )
