"""The audit log as the Admin API shows it: filters, newest first, a cursor. Sans-IO."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from audit.chain import Entry
from control_plane.admin.views_common import NULLABLE_CURSOR, decode_cursor, encode_cursor, invalid, page

_RELATIVE = re.compile(r"(\d{1,6})([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["seq", "time", "actor", "action", "target", "source", "details"],
    "properties": {
        "seq": {"type": "integer"},
        "time": {"type": "string"},
        "actor": {"type": "string"},
        "action": {"type": "string"},
        "target": {"type": "string"},
        "source": {"type": "string"},
        "details": {"type": "object"},
    },
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data", "next_cursor"],
    "properties": {"data": {"type": "array", "items": ENTRY_SCHEMA}, "next_cursor": NULLABLE_CURSOR},
}


def since_bound(text: str | None, now: datetime) -> str | None:
    """``since`` (ISO 8601, or ``24h``/``7d``/``30m`` back from now) as the stores' ``at`` text
    (UTC, microseconds, Z), which sorts as time does; Invalid otherwise."""
    if not text:
        return None
    match = _RELATIVE.fullmatch(text.strip())
    if match is not None:
        when = now - timedelta(seconds=int(match.group(1)) * _UNIT[match.group(2)])
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise invalid("since", "an ISO 8601 time or a duration back from now like 24h, 7d") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, ValueError):
        raise invalid("since", "out of range") from None


def render(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "time": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "source": entry.source,
        "details": dict(entry.details),
    }


def matches(entry: Entry, action: str | None, actor: str | None) -> bool:
    """``action``: exact, or a prefix ending in ``*`` (``key.*``); ``actor``: exact."""
    if actor and entry.actor != actor:
        return False
    if action:
        if action.endswith("*"):
            return entry.action.startswith(action[:-1])
        return entry.action == action
    return True


def listing(
    entries: Iterable[Entry], action: str | None, actor: str | None, cursor: str | None, limit: int
) -> dict[str, Any]:
    """``{"data": [...], "next_cursor"}``, newest first."""
    chosen = sorted((e for e in entries if matches(e, action, actor)), key=lambda e: -e.seq)
    chunk, last = page(chosen, lambda e: [-e.seq], decode_cursor(cursor, (int,)), limit)
    return {"data": [render(entry) for entry in chunk], "next_cursor": encode_cursor(last) if last else None}
