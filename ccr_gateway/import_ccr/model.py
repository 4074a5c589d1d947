"""What an import yields: findings for the user, the conversion, and the one error kind."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    ACTION = "action needed"  # the gateway will not work as CCR did until the user does this
    CANNOT = "cannot express"  # a CCR feature the policy has no equivalent for; it was dropped
    NOTE = "note"  # mapped, perhaps differently than the user may expect


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    text: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.text}"


class ConfigError(ValueError):
    """The CCR config cannot be imported at all: unreadable, not JSON, or no usable provider."""

    def __init__(self, message: str, findings: tuple[Finding, ...] = ()) -> None:
        super().__init__(message)
        self.findings = findings


@dataclass(frozen=True, slots=True)
class Conversion:
    policy: dict[str, Any]  # plain data, in the order it is written
    findings: tuple[Finding, ...]  # action needed first, then cannot express, then notes


class Target(str):
    """A "provider,model" string, always written double-quoted (a bare comma splits values inside
    YAML flow collections, and a reader copying it into one must not be surprised)."""
