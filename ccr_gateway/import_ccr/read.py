"""CCR's config.json dialect: JSON with ``//`` and ``/* */`` comments and trailing commas."""

from __future__ import annotations

import json
from typing import Any

from ccr_gateway.import_ccr.model import ConfigError


def parse_config(text: str, source: str = "<config>") -> dict[str, Any]:
    """CCR's config.json -> dict. Comments and trailing commas are blanked out in place, so a JSON
    error's line:col still points into the user's file."""
    try:
        value = json.loads(_blank_comments_and_trailing_commas(text.removeprefix("\ufeff"), source))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object, got {_kind(value)}")
    return value


def _blank_comments_and_trailing_commas(text: str, source: str) -> str:
    out = list(text)

    def blank(start: int, end: int) -> None:
        for i in range(start, end):
            if out[i] not in "\r\n":
                out[i] = " "

    # pending_comma: a comma after a value, removed if the next significant character closes the
    # container. A comma after "[", "{", ":" or another comma is left for json to reject.
    i, n, pending_comma, previous = 0, len(text), -1, ""
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            pending_comma, previous = -1, '"'
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                line = text.count("\n", 0, i) + 1
                col = i - (text.rfind("\n", 0, i) + 1) + 1
                raise ConfigError(f"{source}:{line}:{col}: invalid JSON: unterminated /* comment")
            blank(i, end + 2)
            i = end + 2
            continue
        if c == "," and previous not in ("", "[", "{", ",", ":"):
            pending_comma = i
        elif c in "}]" and pending_comma >= 0:
            out[pending_comma] = " "
            pending_comma = -1
        elif not c.isspace():
            pending_comma = -1
        if not c.isspace():
            previous = c
        i += 1
    return "".join(out)


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
