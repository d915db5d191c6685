"""The built-in sinks: SQLite (upsert), CSV (files per day and kind, with a ledger), HTTP.

They are loaded by name through :mod:`fonzipd.registry`, only when the configuration
uses them.
"""

BUILTIN_SINKS: dict[str, str] = {
    "sqlite": "fonzipd.sinks.sqlite:SQLiteSink",
    "csv": "fonzipd.sinks.csv:CSVSink",
    "http": "fonzipd.sinks.http:HTTPSink",
}
"""Built-in sink types, by name, as ``module:Class`` (imported on demand)."""
