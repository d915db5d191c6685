"""fonzipd: Fonzip's webhooks and daily reconciliation, delivered exactly once to your sinks."""

__version__ = "0.1.0"
