"""Sans-IO pieces every view shares: ``Invalid`` (the caller's input, a 400 with ``details``),
opaque cursors and keyset pagination, and times as the API shows them. No aiohttp here."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


class Invalid(ValueError):
    """Input the caller got wrong; the server answers 400 ``invalid_request`` with ``details``."""

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


def invalid(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}", [{"path": path, "message": message}])


def encode_cursor(sort_key: Sequence[Any]) -> str:
    """base64url (unpadded) of the last row's sort key as JSON: opaque to callers, stable for us."""
    return base64.urlsafe_b64encode(orjson.dumps(list(sort_key))).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    """The sort key in a cursor (each item of the type ``shape`` says), None for no cursor;
    Invalid for one this API did not make."""
    if not cursor:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise invalid("cursor", "not a cursor of this API") from None
    if (
        not isinstance(value, list)
        or len(value) != len(shape)
        or not all(_is(item, kind) for item, kind in zip(value, shape, strict=True))
    ):
        raise invalid("cursor", "not a cursor of this API")
    return value


def _is(item: Any, kind: type) -> bool:
    if isinstance(item, bool):
        return kind is bool
    if kind is float:
        return isinstance(item, int | float)
    return isinstance(item, kind)


def page(
    rows: Sequence[T], sort_key: Callable[[T], list[Any]], after: list[Any] | None, limit: int
) -> tuple[list[T], list[Any] | None]:
    """The ``limit`` rows after the ``after`` sort key, with the key to continue from (None: the
    last page). ``rows`` must be sorted by ``sort_key`` ascending; rows added or removed between
    pages are neither repeated nor skipped, unlike offsets."""
    start = 0
    if after is not None:
        start = next((i for i, row in enumerate(rows) if sort_key(row) > after), len(rows))
    chunk = list(rows[start : start + limit])
    more = start + limit < len(rows)
    return chunk, (sort_key(chunk[-1]) if more and chunk else None)


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2025-01-02T03:04:05Z``), None for None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def limit_schema(default: int = 50, maximum: int = 200) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}


CURSOR_SCHEMA: dict[str, Any] = {"type": "string"}
NULLABLE_CURSOR: dict[str, Any] = {"type": ["string", "null"]}
