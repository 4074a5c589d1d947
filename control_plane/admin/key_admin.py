"""Virtual keys as the Admin API's key routes need them: the port (``KeyAdmin``), the key it
answers with, the change it reports, and the errors it raises. No I/O.

The key store and the key format are ext_proc's (extproc.auth), which the control plane does not
import (pyproject's import contracts): ccr_gateway.admin_keys adapts them to this port, and the
composition root hands it to the app (routes_keys.KEYS). Every change goes through the same
functions as `ccr-gateway keys` (extproc.auth.key_changes), so the CLI and the API name their
audit actions and shape their details alike; a ``KeyChange`` carries both to the route, which
appends them to the audit log with its own actor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# extproc.auth.keys.BUDGET_PERIODS, copied (a plain constant); tests/unit/admin/test_views.py
# checks that the two stay equal.
BUDGET_PERIODS = ("day", "week", "month")


class KeysUnavailable(Exception):
    """The key store cannot be reached; the message names it (never a password)."""


class KeyNotFound(LookupError):
    """No key of that id (a change to one that went away since it was read)."""


class KeyRejected(ValueError):
    """Values the key format refuses (e.g. a budget period left without a budget by a patch)."""


@dataclass(frozen=True, slots=True)
class Key:
    """A virtual key's public fields: who it belongs to, its limits and dates (epoch seconds).
    Never a secret or a hash. A limit None is no limit; ``models`` empty is any model."""

    id: str
    tenant: str
    name: str
    models: tuple[str, ...]
    rpm: int | None
    rph: int | None
    rpd: int | None
    tpm: int | None
    tpd: int | None
    max_parallel: int | None
    budget_usd: float | None
    budget_period: str | None
    created_at: float
    expires_at: float | None
    revoked: bool

    def unusable_at(self, now: float) -> str | None:
        """Why the key cannot be used at ``now`` ("revoked", "expired"), or None if it can: the
        gateways' own rule (extproc.auth.keys.VirtualKey.usable_at; a test holds them equal)."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return None


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A change made, and the audit entry it owes: ``action`` (key.create | key.update |
    budget.change | key.revoke | key.rotate) and ``details`` (never a secret or a hash)."""

    action: str
    key: Key  # as stored after the change
    details: dict[str, Any] = field(default_factory=dict)
    presented: str | None = field(default=None, repr=False)  # the key, shown once (create, rotate)

    @property
    def key_id(self) -> str:
        return self.key.id


class KeyAdmin(Protocol):
    """What the key routes need from the key store the gateways read. Every method may raise
    KeysUnavailable; the changes raise KeyNotFound for an id that is not there and KeyRejected
    for values the key format refuses (before anything is stored)."""

    description: str  # the store, for the audit entry's source: the file, or the DSN masked

    async def list_keys(self, tenant: str | None) -> list[Key]:
        """One tenant's keys, or every key (None)."""
        ...

    async def get(self, key_id: str) -> Key | None: ...

    async def create(self, tenant: str, name: str, now: float, limits: Mapping[str, object]) -> KeyChange:
        """``limits``: the fields views_keys.create_request makes (``expires_at`` absolute); the
        change's ``presented`` is the new key."""
        ...

    async def update(self, key_id: str, changes: Mapping[str, object]) -> KeyChange:
        """``changes``: editable fields (name, models, limits, budget, expires_at; None clears)."""
        ...

    async def revoke(self, key_id: str) -> KeyChange: ...

    async def rotate(self, key_id: str, grace_seconds: float) -> KeyChange:
        """A new secret (the change's ``presented``); the old one works for ``grace_seconds``."""
        ...

    async def close(self) -> None: ...
