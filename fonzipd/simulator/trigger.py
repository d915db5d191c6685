"""``fonzipd simulate trigger``: named events (``donation.refunded``) made through the admin API.

Like ``stripe trigger``: the running simulator (``fonzipd simulate``) creates the
object and sends its webhooks to the target it was given, so a daemon pointed at it
sees exactly what Fonzip would send for that event.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from fonzipd.kinds import Kind

PAID, FAILED = 3, 5
_ACTIONS = {"created", "succeeded", "paid", "failed", "refunded"}


class TriggerError(Exception):
    """The event name is unknown, or the simulator refused or could not be reached."""


def events() -> list[str]:
    """Every event name ``trigger`` knows, for the help text and errors."""
    names = ["campaign.created"]
    for kind in Kind:
        if kind is not Kind.CAMPAIGN:
            names += [f"{kind}.succeeded", f"{kind}.failed", f"{kind}.refunded"]
    return names


def parse(name: str) -> tuple[Kind, str]:
    """``donation.refunded`` -> (Kind.DONATION, "refunded"); TriggerError if unknown."""
    kind_name, _, action = name.partition(".")
    try:
        kind = Kind(kind_name)
    except ValueError:
        raise TriggerError(f"unknown event {name!r}: one of {', '.join(events())}") from None
    if action == "paid":
        action = "succeeded"
    if action not in _ACTIONS or (kind is Kind.CAMPAIGN) != (action == "created"):
        raise TriggerError(f"unknown event {name!r}: one of {', '.join(events())}")
    if kind is not Kind.CAMPAIGN and action == "created":
        action = "succeeded"
    return kind, action


async def trigger(admin_url: str, name: str, *, fonzip_id: int | None = None) -> str:
    """Make ``name`` happen in the simulator at ``admin_url`` (``.../_sim``); what was done."""
    kind, action = parse(name)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if action == "refunded":
                if fonzip_id is None:
                    made = await _post(session, f"{admin_url}/events", {"kind": str(kind)})
                    fonzip_id = int(made["id"])
                await _post(session, f"{admin_url}/refund", {"kind": str(kind), "id": fonzip_id})
                return f"{kind} {fonzip_id} refunded (webhook status 4 sent)"
            if fonzip_id is not None:
                raise TriggerError("--id goes only with a .refunded event")
            status = FAILED if action == "failed" else PAID
            made = await _post(
                session, f"{admin_url}/events", {"kind": str(kind), "status": status}
            )
            return f"{kind} {made['id']} {action} (webhook status {made['status']} sent)"
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TriggerError(
            f"no simulator at {admin_url} ({exc or type(exc).__name__}): start one with "
            "fonzipd simulate --port 8788 --webhook-url ... --webhook-token ..."
        ) from None


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as resp:
        answer: dict[str, Any] = await resp.json(content_type=None)
        if resp.status != 200:
            raise TriggerError(f"the simulator refused: HTTP {resp.status}: {answer}")
        return answer
