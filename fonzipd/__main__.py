"""Entry point for ``python -m fonzipd``."""

from fonzipd.cli import main

raise SystemExit(main())
