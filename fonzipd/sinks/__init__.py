"""The built-in sinks: SQLite, CSV, HTTP, and PostgreSQL, MySQL/MariaDB and NATS JetStream.

They are loaded by name through :mod:`fonzipd.registry`, only when the configuration
uses them. The database and bus sinks need a driver that is an optional extra
(``pip install 'fonzipd[postgresql]'``); their modules import it only when a sink is
created, so that ``fonzipd sinks`` lists them, and says what is missing, without it.
"""

from __future__ import annotations

import importlib.util

from fonzipd.sink import SinkConfigError

BUILTIN_SINKS: dict[str, str] = {
    "sqlite": "fonzipd.sinks.sqlite:SQLiteSink",
    "csv": "fonzipd.sinks.csv:CSVSink",
    "http": "fonzipd.sinks.http:HTTPSink",
    "postgresql": "fonzipd.sinks.postgresql:PostgreSQLSink",
    "mysql": "fonzipd.sinks.mysql:MySQLSink",
    "nats": "fonzipd.sinks.nats:NATSSink",
}
"""Built-in sink types, by name, as ``module:Class`` (imported on demand)."""

DRIVERS: dict[str, tuple[str, str]] = {
    "postgresql": ("asyncpg", "postgresql"),
    "mysql": ("asyncmy", "mysql"),
    "nats": ("nats", "nats"),
}
"""Built-in sink type -> (the driver module it imports, the extra that installs it)."""


def missing_extra(sink_type: str) -> str | None:
    """``pip install 'fonzipd[<extra>]'`` when the sink type's driver is not installed."""
    if sink_type not in DRIVERS:
        return None
    module, extra = DRIVERS[sink_type]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"pip install 'fonzipd[{extra}]'"


def require_driver(sink_type: str) -> None:
    """Raise :class:`SinkConfigError` naming the extra when the driver is missing."""
    command = missing_extra(sink_type)
    if command is not None:
        module = DRIVERS[sink_type][0]
        raise SinkConfigError(
            f"the {sink_type} sink needs the {module} driver, which is not installed: {command}"
        )
