"""The token table: the Fonzip access token, shared by every process of the account."""

from __future__ import annotations

import datetime as dt

from fonzipd.fonzip.token import StoredToken, TokenStore
from fonzipd.state.connection import Connection, ts


class TokenTable(TokenStore):
    """The ``token`` table, a :class:`~fonzipd.fonzip.token.TokenStore`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def load(self, key: str) -> StoredToken | None:
        """The token stored under ``key``, expired or not; None when there is none."""
        row = await self._conn.fetchone(
            "SELECT access_token, expires_at FROM token WHERE key = ?", (key,)
        )
        if row is None:
            return None
        return StoredToken(
            access_token=row[0], expires_at=dt.datetime.fromtimestamp(row[1], dt.UTC)
        )

    async def save(self, key: str, token: StoredToken) -> None:
        """Store ``token`` under ``key``, replacing any other."""
        async with self._conn.transaction() as tx:
            await tx.execute(
                "INSERT OR REPLACE INTO token (key, access_token, expires_at) VALUES (?, ?, ?)",
                (key, token.access_token, ts(token.expires_at)),
            )

    async def discard(self, key: str, access_token: str) -> None:
        """Forget the token under ``key`` only if it is still ``access_token``."""
        async with self._conn.transaction() as tx:
            await tx.execute(
                "DELETE FROM token WHERE key = ? AND access_token = ?", (key, access_token)
            )
