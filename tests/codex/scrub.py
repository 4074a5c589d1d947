"""Make a captured Codex request safe and stable to commit: no keys, no machine identity, no clock.

Replaced, in the headers and the body alike (one JSON text, so equal values stay equal):
- every UUID (session, thread, installation, turn, window, message ids, ``prompt_cache_key``),
  by ``00000000-0000-4000-8000-<n>`` numbered in order of first appearance: which ids repeat
  where is kept, their values are not;
- the capture's own directories (HOME and project), by ``/home/user`` and ``/work/project``;
- the date in ``<current_date>`` and the turn's start time in the turn metadata;
- the OS in the user agent;
- the random chunk id and the wall time heading a shell command's output.

``client_metadata`` (a hash map in Codex: its key order changes from run to run) is sorted by key.
Everything else stays byte for byte what the CLI sent: that is the point of the fixtures.
``scrub`` refuses a request that still holds a secret it was told of.
"""

from __future__ import annotations

import json
import re
from typing import Any

PROJECT_DIR = "/work/project"
HOME_DIR = "/home/user"
DATE = "2026-01-01"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DATE = re.compile(r"(<current_date>)[^<]*(</current_date>)")
# The turn metadata is a JSON string inside JSON (a header and client_metadata): quotes may be escaped.
_STARTED = re.compile(r'(turn_started_at_unix_ms\\*"\s*:\s*)\d+')
# What a command's output starts with (exec_command): a random chunk id and the time it took.
_CHUNK = re.compile(r"(Chunk ID: )[0-9a-f]+")
_WALL = re.compile(r"(Wall time: )[0-9.]+( seconds)")
# "codex_exec/0.171.0 (Debian 12.0.0; x86_64) ..." -> "(Linux; x86_64)"
_OS = re.compile(r"(codex_[a-z_]+/[0-9][^ ]* \()[^;()]+(; [^()]+\))")


class SecretLeft(AssertionError):
    """A value that must never be committed is still in the scrubbed request."""


def scrub(request: dict[str, Any], *, project: str, home: str, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """A scrubbed deep copy of ``request`` (any JSON value: headers and body together)."""
    text = json.dumps(_ordered(request), ensure_ascii=False)
    for secret in secrets:  # before anything else: a key is never written anywhere, not even scrubbed
        if secret and secret in text:
            raise SecretLeft("a secret is in the captured request")
    stand_ins: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        found = match[0]
        if found not in stand_ins:
            stand_ins[found] = f"00000000-0000-4000-8000-{len(stand_ins) + 1:012d}"
        return stand_ins[found]

    text = _UUID.sub(number, text)
    # Longest first: the project may lie under HOME, or both under one temporary directory.
    for path, stand_in in sorted(((project, PROJECT_DIR), (home, HOME_DIR)), key=lambda p: -len(p[0])):
        text = text.replace(path, stand_in)
    text = _DATE.sub(rf"\g<1>{DATE}\g<2>", text)
    text = _STARTED.sub(r"\g<1>0", text)
    text = _OS.sub(r"\g<1>Linux\g<2>", text)
    text = _CHUNK.sub(r"\g<1>000000", text)
    text = _WALL.sub(r"\g<1>0.0000\g<2>", text)
    return json.loads(text)


def _ordered(value: Any) -> Any:
    """``value`` with every ``client_metadata`` object's keys sorted (before the UUIDs are numbered)."""
    if isinstance(value, dict):
        return {
            k: dict(sorted(v.items())) if k == "client_metadata" and isinstance(v, dict) else _ordered(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    return value
