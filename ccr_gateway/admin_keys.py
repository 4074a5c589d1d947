"""The virtual keys' store, adapted for the Admin API (control_plane.admin.key_admin's ``KeyAdmin``).

Here in the composition root because ext_proc and the control plane share only the contract
(pyproject's import contracts): this module is the one place that knows both. The server is
handed ``open_key_admin`` (``app[routes_keys.KEYS]``), opens it once at setup and closes it with
the app. Changes go through extproc.auth.key_changes, as `ccr-gateway keys` makes them, so the
audit actions and details are the CLI's; ext_proc's records and errors are translated into the
control plane's own (a ``Key``, ``KeyChange``, ``KeysUnavailable``/``KeyNotFound``/``KeyRejected``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from control_plane.admin.key_admin import Key, KeyChange, KeyNotFound, KeyRejected, KeysUnavailable
from control_plane.admin.settings import AdminSettings
from extproc.auth import key_changes, key_store
from extproc.auth.key_store import KeyStore, open_key_store
from extproc.auth.keys import KeyFormatError, KeyRecord


def key_of(record: KeyRecord) -> Key:
    key = record.key
    return Key(
        id=key.key_id,
        tenant=key.tenant,
        name=key.name,
        models=key.models,
        rpm=key.rpm,
        rph=key.rph,
        rpd=key.rpd,
        tpm=key.tpm,
        tpd=key.tpd,
        max_parallel=key.max_parallel,
        budget_usd=key.budget_usd,
        budget_period=key.budget_period,
        created_at=record.created_at,
        expires_at=key.expires_at,
        revoked=key.revoked,
    )


def change_of(change: key_changes.Change) -> KeyChange:
    return KeyChange(change.action, key_of(change.record), change.details, change.presented)


@contextmanager
def _translated() -> Iterator[None]:
    """ext_proc's store and format errors as the port's."""
    try:
        yield
    except key_store.KeyStoreUnavailable as exc:
        raise KeysUnavailable(str(exc)) from None
    except key_store.KeyNotFound as exc:
        raise KeyNotFound(str(exc)) from None
    except KeyFormatError as exc:
        raise KeyRejected(str(exc)) from None


class StoreKeyAdmin:
    """A ``KeyAdmin`` over one key store (SQLite or PostgreSQL), which connects on first use."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.description = store.description

    async def list_keys(self, tenant: str | None) -> list[Key]:
        with _translated():
            return [key_of(record) for record in await self.store.list(tenant)]

    async def get(self, key_id: str) -> Key | None:
        with _translated():
            record = await self.store.get(key_id)
        return None if record is None else key_of(record)

    async def create(self, tenant: str, name: str, now: float, limits: Mapping[str, object]) -> KeyChange:
        with _translated():
            return change_of(await key_changes.create(self.store, tenant, name, now, limits))

    async def update(self, key_id: str, changes: Mapping[str, object]) -> KeyChange:
        with _translated():
            return change_of(await key_changes.update(self.store, key_id, changes))

    async def revoke(self, key_id: str) -> KeyChange:
        with _translated():
            return change_of(await key_changes.revoke(self.store, key_id))

    async def rotate(self, key_id: str, grace_seconds: float) -> KeyChange:
        with _translated():
            return change_of(await key_changes.rotate(self.store, key_id, grace_seconds))

    async def close(self) -> None:
        await self.store.close()


def open_key_admin(settings: AdminSettings) -> StoreKeyAdmin:
    """The key store the settings name: PostgreSQL (``keys_postgres``), else the SQLite file
    (``keys_sqlite``, else the key CLI's default path). Nothing is connected yet: a store down now
    is a 503 on first use, not an admin API that cannot start."""
    return StoreKeyAdmin(open_key_store(settings.keys_sqlite or None, settings.keys_postgres or None))
