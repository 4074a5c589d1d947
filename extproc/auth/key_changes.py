"""The four changes an operator makes to virtual keys (create, update, revoke, rotate), each with
the audit entry it owes: one place for the `keys` CLI and the Admin API (control_plane.admin) alike,
so both name their actions and shape their details the same way.

Each function makes the change in the store and returns a ``Change``; the caller appends
``change.action`` / ``change.details`` to the audit log with its own actor. ``details`` never hold
a secret or a hash (entries are exported to SIEMs as they are); ``presented`` (create, rotate) is
the key to show once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extproc.auth.key_store import KeyStore
from extproc.auth.keys import KeyRecord, new_key, public_fields

_BUDGET = ("budget_usd", "budget_period")


@dataclass(frozen=True, slots=True)
class Change:
    action: str  # key.create | key.update | budget.change | key.revoke | key.rotate
    record: KeyRecord  # as stored after the change
    details: dict[str, Any] = field(default_factory=dict)
    presented: str | None = field(default=None, repr=False)  # the key, shown once (create, rotate)

    @property
    def key_id(self) -> str:
        return self.record.key_id


async def create(store: KeyStore, tenant: str, name: str, now: float, limits: Mapping[str, object]) -> Change:
    """``limits``: VirtualKey fields from ``models`` on (``expires_at`` absolute); KeyFormatError
    when one is invalid, before anything is stored."""
    presented, record = new_key(tenant, name, now, **limits)
    stored = await store.create(record)
    return Change("key.create", stored, public_fields(stored), presented)


async def update(store: KeyStore, key_id: str, changes: Mapping[str, object]) -> Change:
    """``changes``: editable VirtualKey fields (None clears a limit). A change touching the budget is
    audited as ``budget.change`` (alerts follow budget changes on their own)."""
    record = await store.update_limits(key_id, changes)
    action = "budget.change" if set(_BUDGET) & set(changes) else "key.update"
    return Change(action, record, {"tenant": record.key.tenant, "changes": _json_changes(changes)})


async def revoke(store: KeyStore, key_id: str) -> Change:
    record = await store.revoke(key_id)
    return Change("key.revoke", record, {"tenant": record.key.tenant, "name": record.key.name})


async def rotate(store: KeyStore, key_id: str, grace_seconds: float) -> Change:
    presented, record = await store.rotate(key_id, grace_seconds)
    details = {
        "tenant": record.key.tenant,
        "grace_seconds": grace_seconds,
        "previous_valid_until": record.previous_valid_until,
    }
    return Change("key.rotate", record, details, presented)


def _json_changes(changes: Mapping[str, object]) -> dict[str, object]:
    # models arrive as a tuple; the audit chain hashes JSON, where it is a list either way.
    return {name: list(value) if isinstance(value, tuple) else value for name, value in changes.items()}
