"""The command line: run | check | reconcile | backfill | replay | status | webhooks | sinks | demo."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run one fonzipd command; the return value is the exit code."""
    args = sys.argv[1:] if argv is None else argv
    print("fonzipd: not implemented yet", args, file=sys.stderr)
    return 2
