"""Make a captured Claude Code request safe and stable to commit: no keys, no machine identity.

What is replaced: the device id and session id in ``metadata.user_id`` (everywhere they appear),
the capture's own directories (HOME and project, also in the dashed form Claude Code uses for
transcript folders), the kernel version. Everything else stays byte for byte what the CLI sent:
that is the point of the corpus. ``scrub`` refuses a body that still holds a secret it was told of.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEVICE_ID = "0" * 64
SESSION_ID = "00000000-0000-4000-8000-000000000000"
PROJECT_DIR = "/work/project"
HOME_DIR = "/home/user"
_OS_VERSION = re.compile(r"(OS Version: )[^\n\\]+")


class SecretLeft(AssertionError):
    """A value that must never be committed is still in the scrubbed body."""


def scrub(body: dict[str, Any], *, project: str, home: str, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """A scrubbed deep copy of ``body``."""
    text = json.dumps(body, ensure_ascii=False)
    replacements: list[tuple[str, str]] = []
    user = _user_id(body)
    if user.get("device_id"):
        replacements.append((user["device_id"], DEVICE_ID))
    if user.get("session_id"):
        replacements.append((user["session_id"], SESSION_ID))
    # Longest first: the project usually lies under the capture's temporary directory.
    for path, stand_in in sorted(((project, PROJECT_DIR), (home, HOME_DIR)), key=lambda p: -len(p[0])):
        replacements.append((path, stand_in))
        replacements.append((path.replace("/", "-"), stand_in.replace("/", "-")))
    for old, new in replacements:
        text = text.replace(old, new)
    text = _OS_VERSION.sub(r"\1Linux 6.0.0", text)
    for secret in secrets:
        if secret and secret in text:
            raise SecretLeft("a secret is still in the scrubbed body")
    return json.loads(text)


def _user_id(body: dict[str, Any]) -> dict[str, str]:
    metadata = body.get("metadata")
    raw = metadata.get("user_id") if isinstance(metadata, dict) else None
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}
