"""Connection strings kept in Vault: ``storage.postgres.dsn: vault:secret/data/ccr/postgres#dsn``.

A connection field of the policy (the ledger's PostgreSQL and RabbitMQ, the key store's PostgreSQL,
the limits' and the cache's Redis) may be a whole ``vault:`` reference instead of a URL. The process
that connects reads it when it connects (``ccr.v1.env_refs.expand_env``), so a rotated password is
used by the next connection, without a restart; a value is kept ``CACHE_S`` seconds, so a burst of
reconnections costs Vault one read.

Where Vault is and how to log in: ``CCR_VAULT`` (JSON of the policy's ``vault:`` section, no secret
in it: `ccr-gateway up` sets it for every process it starts), else ``VAULT_ADDR`` with the token in
``VAULT_TOKEN``. The token or AppRole secret id comes from the environment, as for provider keys.

Reads block (hvac is synchronous): they happen when a connection is made, bounded by the client's
timeout (5 s), never per request. Nothing here logs or raises a value.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ccr.v1.secret_ref import ReferenceError, parse_reference
from ccr.v1.vault_client import PermissionDenied, VaultClient, VaultError, VaultSettings

SETTINGS_ENV = "CCR_VAULT"
CACHE_S = 30.0
_SETTING_FIELDS = ("address", "method", "mount", "token_env", "role_id", "secret_id_env", "role", "jwt_path")


class VaultReferenceError(ValueError):
    """A reference that could not be read; the message names it and why, never a value."""


def settings_json(settings: VaultSettings) -> str:
    """What ``up`` puts in CCR_VAULT for its children (no secret: how to log in, not with what)."""
    return json.dumps({name: getattr(settings, name) for name in _SETTING_FIELDS}, sort_keys=True)


def settings_from(environ: Mapping[str, str]) -> VaultSettings | None:
    text = environ.get(SETTINGS_ENV, "")
    if text:
        try:
            fields = json.loads(text)
        except ValueError:
            raise VaultReferenceError(f"{SETTINGS_ENV} is not JSON") from None
        return VaultSettings(**{name: fields[name] for name in _SETTING_FIELDS if name in fields})
    address = environ.get("VAULT_ADDR", "")
    return VaultSettings(address=address.rstrip("/")) if address else None


class VaultReferences:
    """Reads references with one client per settings, logging in when it has no token or its token
    was refused, and keeps each value CACHE_S seconds."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        client_factory: Callable[[VaultSettings, Mapping[str, str]], Any] = VaultClient,
    ) -> None:
        self.clock = clock
        self.client_factory = client_factory
        self._clients: dict[VaultSettings, Any] = {}
        self._values: dict[tuple[VaultSettings, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def resolve(self, text: str, environ: Mapping[str, str]) -> str:
        try:
            ref = parse_reference(text)
        except ReferenceError as exc:
            raise VaultReferenceError(f"{text}: {exc}") from None
        settings = settings_from(environ)
        if settings is None:
            raise VaultReferenceError(f"{text}: no Vault to read it from (set {SETTINGS_ENV} or VAULT_ADDR)")
        with self._lock:
            cached = self._values.get((settings, text))
            now = self.clock()
            if cached is not None and cached[1] > now:
                return cached[0]
            try:
                value = self._read(settings, environ, ref)
            except VaultError as exc:
                raise VaultReferenceError(f"cannot read {text} from Vault: {exc}") from None
            self._values[(settings, text)] = (value, now + CACHE_S)
            return value

    def _read(self, settings: VaultSettings, environ: Mapping[str, str], ref: Any) -> str:
        client = self._clients.get(settings)
        if client is None:
            client = self._clients[settings] = self.client_factory(settings, environ)
        for attempt in range(2):
            if not client.has_token:
                client.login()
            try:
                data = client.read(ref).data
                break
            except PermissionDenied:
                if attempt:
                    raise
                client = self._clients[settings] = self.client_factory(settings, environ)  # log in again
        value = data.get(ref.field)
        if not isinstance(value, str) or not value:
            raise VaultError(f"the secret has no field {ref.field!r}")
        return value


_DEFAULT = VaultReferences()


def resolve(text: str, environ: Mapping[str, str]) -> str:
    """The value ``text`` (a ``vault:`` reference) names, read with the process's Vault settings."""
    return _DEFAULT.resolve(text, environ)
