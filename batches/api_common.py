"""What both API modules share: the validation error both raise, JSON parsing with a size limit,
and cursor pagination over a newest-first list of ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson


class ApiError(Exception):
    """The client sent something the API refuses: rendered in that API's error shape by its module.

    ``kind`` is the API-neutral category (invalid_request | not_found | too_large); each API module
    maps it to its own error type.
    """

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param


def parse_json_object(raw: bytes, *, limit: int, what: str = "request body") -> dict[str, Any]:
    """``raw`` as a JSON object, refusing anything over ``limit`` bytes before parsing it."""
    if len(raw) > limit:
        raise ApiError(413, f"{what} is {len(raw)} bytes; the limit is {limit}", kind="too_large")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        return self.ids[0] if self.ids else None

    @property
    def last_id(self) -> str | None:
        return self.ids[-1] if self.ids else None


def paginate(
    newest_first: Sequence[str], *, limit: int, after_id: str | None = None, before_id: str | None = None
) -> Page:
    """One page of a newest-first list, as both APIs page: ``after_id`` -> the ``limit`` ids right
    after it (older), ``before_id`` -> the ``limit`` ids right before it (newer), still newest
    first; ``has_more`` says whether more lie beyond the page in the direction of travel.

    The store will do this in SQL (``WHERE id < $1 ORDER BY ... LIMIT $2 + 1``); this is the
    reference it is tested against. Unknown cursors are the caller's to report (404 / 400).
    """
    if after_id is not None and before_id is not None:
        raise ApiError(400, "give at most one of before_id and after_id")
    position = {batch_id: n for n, batch_id in enumerate(newest_first)}
    for cursor, name in ((after_id, "after_id"), (before_id, "before_id")):
        if cursor is not None and cursor not in position:
            raise ApiError(400, f"{name} {cursor!r} does not name an object in this list", param=name)
    if before_id is not None:
        end = position[before_id]
        start = max(0, end - limit)
        return Page(list(newest_first[start:end]), has_more=start > 0)
    start = position[after_id] + 1 if after_id is not None else 0
    end = start + limit
    return Page(list(newest_first[start:end]), has_more=end < len(newest_first))


def parse_limit(value: str | int | None, *, default: int, maximum: int) -> int:
    """The ``limit`` query parameter: an integer in 1..maximum, ``default`` when absent."""
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"limit must be an integer, not {value!r}", param="limit") from None
    if not 1 <= limit <= maximum:
        raise ApiError(400, f"limit must be between 1 and {maximum}, not {limit}", param="limit")
    return limit
