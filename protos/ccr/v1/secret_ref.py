"""Secret references in the policy: ``vault:<mount>/data/<path>#<field>`` (a KV v2 secret's field).

The reference, never the value, is what the policy and the xDS resources carry; the process that
needs the value reads it from Vault itself (the control plane for the provider keys Envoy
injects, ext_proc for the others). One parser in the contract
so the control plane rejects, with a line, exactly what ext_proc could not follow.

Pure: no I/O, standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "vault:"
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_FIELD = re.compile(r"^[A-Za-z0-9._-]+$")


class ReferenceError(ValueError):
    """A reference that cannot be followed; ``column`` is 0-based within the reference text."""

    def __init__(self, message: str, column: int = 0) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True, slots=True)
class SecretRef:
    mount: str  # "secret"; may hold slashes ("kv/team")
    path: str  # "providers/openai", under the mount's data/
    field: str  # "key"

    @property
    def api_path(self) -> str:
        """The path of Vault's KV v2 read, after /v1/."""
        return f"{self.mount}/data/{self.path}"

    def __str__(self) -> str:
        return f"{PREFIX}{self.api_path}#{self.field}"


def is_reference(text: str) -> bool:
    return text.startswith(PREFIX)


def parse_reference(text: str) -> SecretRef:
    """``vault:secret/data/providers/openai#key`` -> SecretRef("secret", "providers/openai", "key")."""
    if not text.startswith(PREFIX):
        raise ReferenceError(f"must start with {PREFIX!r} (vault:<mount>/data/<path>#<field>)")
    body = text[len(PREFIX) :]
    location, sep, field = body.partition("#")
    if not sep or not field:
        raise ReferenceError("names no field: add #<field> (vault:secret/data/providers/openai#key)", len(text))
    if not _FIELD.match(field):
        raise ReferenceError(
            f"field {field!r} must be letters, digits, '.', '_' or '-'", len(PREFIX) + len(location) + 1
        )
    mount, sep, path = location.partition("/data/")
    if not sep or not mount or not path:
        raise ReferenceError(
            "is not a KV v2 path: write <mount>/data/<path> (vault:secret/data/providers/openai#key)", len(PREFIX)
        )
    offset = len(PREFIX)
    for segment in [*mount.split("/"), "data", *path.split("/")]:
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            raise ReferenceError(f"path segment {segment!r} is empty or holds characters Vault paths do not", offset)
        offset += len(segment) + 1
    return SecretRef(mount, path, field)
