"""fonzipd's state database, one module per job; :class:`Store` opens it and holds the parts."""

from fonzipd.state.connection import StoreError
from fonzipd.state.inbox import InboxEvent, InboxRow
from fonzipd.state.outbox import OutboxRow
from fonzipd.state.records import Applied, status_rank
from fonzipd.state.store import Store

__all__ = ["Applied", "InboxEvent", "InboxRow", "OutboxRow", "Store", "StoreError", "status_rank"]
