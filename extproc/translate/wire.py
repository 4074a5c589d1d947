"""Small helpers both chat translators share: the request's message list, and numbers and error
messages read off provider bodies.

Provider bodies are untrusted: every reader here accepts any JSON value (or none) and never raises.
"""

from __future__ import annotations

from typing import Any

import orjson

_MESSAGE_LIMIT = 2000  # an HTML error page must not become a 1 MB error message


def short(value: Any) -> str:
    """A value quoted in an error message, cut short (a client may send a megabyte there)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_int(value: Any) -> int:
    """A non-negative token count from whatever the provider put there (null, float, garbage -> 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else 0
    if isinstance(value, float) and value > 0:
        return int(value)
    return 0


def error_message(err: Any) -> str | None:
    """The human-readable message of an error object in OpenAI, Anthropic or similar shapes."""
    if isinstance(err, list) and err:  # Gemini and some proxies wrap the error in a list
        err = err[0]
    if isinstance(err, str):
        return err[:_MESSAGE_LIMIT] or None
    if not isinstance(err, dict):
        return None
    inner = err.get("error")
    if inner is not None and inner is not err:
        found = error_message(inner)
        if found:
            return found
    for key in ("message", "detail", "error_description"):
        value = err.get(key)
        if isinstance(value, str) and value:
            return value[:_MESSAGE_LIMIT]
    return None


def upstream_error_message(status: int, body: bytes) -> str:
    """The provider's own message from an error body (JSON of any common shape, or plain text)."""
    message: str | None = None
    try:
        message = error_message(orjson.loads(body)) if body else None
    except orjson.JSONDecodeError:
        message = body.decode("utf-8", "replace").strip()[:_MESSAGE_LIMIT] or None
    return message or f"upstream returned HTTP {status}"


# Error "type"/"code" words used by OpenAI, Anthropic and OpenAI-compatible servers -> HTTP status,
# so a mid-stream error (which has no status line of its own) keeps its meaning across formats.
_STATUS_BY_WORD = (
    ("overloaded", 529),
    ("rate_limit", 429),
    ("quota", 429),
    ("authentication", 401),
    ("permission", 403),
    ("not_found", 404),
    ("request_too_large", 413),
    ("context_length", 400),
    ("invalid_request", 400),
)


def error_status(err: Any) -> int:
    """Best HTTP status for an error object that arrived inside a 200 stream (default 500)."""
    if isinstance(err, dict):
        inner = err.get("error")
        if isinstance(inner, dict):
            err = inner
        for key in ("status", "code"):
            value = err.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                return value
        words = " ".join(str(err.get(key) or "") for key in ("type", "code")).lower()
        for word, status in _STATUS_BY_WORD:
            if word in words:
                return status
    return 500
