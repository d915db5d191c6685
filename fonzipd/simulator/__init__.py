"""A fake Fonzip (API v2 + webhook sender) for the demo, the tests and trying a set-up.

Modules: ``server`` (the Simulator: HTTP API, admin API, faults, tokens, rate limit),
``account`` (the seeded generated data), ``shapes`` (list rows and detail objects as
Fonzip shapes them), ``sender`` (webhook deliveries, 3 tries).
"""

from __future__ import annotations

from fonzipd.simulator.account import Account, Entry
from fonzipd.simulator.sender import Delivery, Sender
from fonzipd.simulator.server import (
    API_PREFIX,
    DEFAULT_CLIENTS,
    EVENT_KEYS,
    Faults,
    Hold,
    RequestLog,
    Simulator,
    Webhook,
    serve,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_CLIENTS",
    "EVENT_KEYS",
    "Account",
    "Delivery",
    "Entry",
    "Faults",
    "Hold",
    "RequestLog",
    "Sender",
    "Simulator",
    "Webhook",
    "serve",
]
