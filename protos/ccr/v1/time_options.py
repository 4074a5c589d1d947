"""The time forms every "since/until" option takes (`usage report --since`, the Admin API's
`/usage?since=`): one parser, so the CLI and the API read ``7d`` the same way. Standard library
only, like the rest of the contract package."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_time(text: str, now: datetime) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` (that long before ``now``), ``now``, an ISO date
    (``2026-01-31``: its midnight UTC) or an ISO date and time (UTC unless it names an offset).
    ValueError otherwise: each caller words the error for its own client."""
    value = text.strip()
    if value == "now":
        return now
    if match := _DURATION.fullmatch(value):
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    if len(value) == 10:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
