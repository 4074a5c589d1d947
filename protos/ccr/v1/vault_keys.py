"""The values of the policy's ``vault:`` provider-key references, kept fresh: one engine for both
processes that hold provider keys. The control plane (control_plane.provider_keys) reads the keys
Envoy injects (served as SDS secrets); ext_proc (extproc.secrets.store) those it still injects
itself (fallback chains). Shared here so the two cannot drift apart.

A reader takes a key from memory (``KeyHandle.value``), never from Vault. The store:
- reads a new reference as soon as a policy names it (``read_new``, bounded by the client's
  timeout; the only Vault I/O on the event loop, once per policy that adds a reference);
- re-reads every reference each rotation interval, and soon after a provider refused its key
  (``KeyHandle.rejected``: a 401/403 means the key was probably rotated), at most every
  REREAD_MIN_S per reference;
- renews its token at 2/3 of the token's TTL (logging in again where renewal fails and the method
  can: AppRole, Kubernetes);
- keeps the last good value when a re-read fails, and retries every RETRY_S; a reference never read
  has no value, and its provider answers 503 (never an unauthenticated request to the provider).

``step(now)`` does whatever is due and is plain synchronous code (tests drive it with a fake clock);
``run()`` calls it from a thread whenever something falls due. ``step`` and ``read_new`` return the
values that changed (first reads and rotations, as ``Change``: reference and versions, never the
value); ``run`` hands them to ``on_change`` on the event loop. Rotations are logged with the
reference and the version, never the value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ccr.v1 import policy_pb2
from ccr.v1.secret_ref import SecretRef
from ccr.v1.vault_client import DEFAULT_JWT_PATH, METHODS, TokenInfo, VaultClient, VaultError, VaultSettings

RETRY_S = 5.0  # after a failed read or login
REREAD_MIN_S = 5.0  # a provider's 401/403 re-reads its key at most this often
RENEW_AT = 2 / 3  # of the token's TTL


@dataclass(frozen=True, slots=True)
class Change:
    """A reference whose value is new: read for the first time (``previous_version`` None) or rotated."""

    ref: SecretRef
    version: int
    previous_version: int | None

    @property
    def rotated(self) -> bool:
        return self.previous_version is not None


@dataclass
class _Entry:
    value: str | None = None
    version: int = 0
    problem: str | None = "not read from Vault yet"
    due: float = 0.0  # clock time of the next read
    last_read: float = float("-inf")


class KeyHandle:
    """One reference's current value, as the routing table sees it. Hashable by identity."""

    __slots__ = ("_store", "ref")

    def __init__(self, ref: SecretRef, store: SecretStore) -> None:
        self.ref = ref
        self._store = store

    @property
    def value(self) -> str | None:
        return self._store.entries[self.ref].value

    @property
    def problem(self) -> str | None:
        """Why there is no value (None when there is one)."""
        entry = self._store.entries[self.ref]
        return None if entry.value is not None else entry.problem

    def rejected(self) -> None:
        """The provider answered 401/403 with this key: re-read it soon (it may have been rotated)."""
        self._store.reread(self.ref)


class SecretStore:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        client_factory: Callable[[VaultSettings, Mapping[str, str]], VaultClient] = VaultClient,
        logger: str = "ccr.secrets",
    ) -> None:
        self.log = logging.getLogger(logger)
        self.clock = clock
        self.client_factory = client_factory
        self.settings: VaultSettings | None = None
        self.environ: Mapping[str, str] = os.environ  # where the client finds its credentials
        self.client: VaultClient | None = None
        self.entries: dict[SecretRef, _Entry] = {}
        self.token_due: float | None = None  # when to renew (or log in again); None: nothing to do
        self.logged_in = False
        self._token_renewable = False
        self._lock = threading.Lock()  # step() runs in a thread, read_new() on the loop
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._changes: list[Change] = []
        # Called on the event loop with what ``run``'s re-reads changed (a rotation, a first read).
        self.on_change: Callable[[list[Change]], None] | None = None

    # --- from the routing table (event loop) -------------------------------------------------------

    def configure(self, settings: VaultSettings, environ: Mapping[str, str] | None = None) -> None:
        """The policy's vault section; a change starts over with a new client and a new login.
        ``environ``: where the token or secret id is read at login (default: this process's)."""
        with self._lock:
            self.environ = os.environ if environ is None else environ
            if settings == self.settings:
                return
            self.settings, self.client, self.logged_in, self.token_due = settings, None, False, None
            for entry in self.entries.values():
                entry.due = 0.0  # read again through the new settings (values kept until then)

    def handle(self, ref: SecretRef) -> KeyHandle:
        with self._lock:
            self.entries.setdefault(ref, _Entry())
        return KeyHandle(ref, self)

    def read_new(self) -> list[Change]:
        """Read every reference never read (a new policy's), now. Called off the request path."""
        with self._lock:
            pending = [ref for ref, entry in self.entries.items() if entry.last_read == float("-inf")]
            if pending:
                self._read(pending, self.clock())
            changes, self._changes = self._changes, []
        self._start()
        return changes

    def value(self, ref: SecretRef) -> str | None:
        entry = self.entries.get(ref)
        return entry.value if entry is not None else None

    def problem(self, ref: SecretRef) -> str | None:
        """Why ``ref`` has no value (None when it has one)."""
        entry = self.entries.get(ref)
        if entry is None:
            return "not read from Vault yet"
        return None if entry.value is not None else entry.problem

    def reread(self, ref: SecretRef) -> None:
        with self._lock:
            entry = self.entries.get(ref)
            if entry is None:
                return
            entry.due = min(entry.due, max(self.clock(), entry.last_read + REREAD_MIN_S))
        if self._wake is not None:
            self._wake.set()

    # --- the refresher ---------------------------------------------------------------------------

    def next_due(self) -> float | None:
        times = [entry.due for entry in self.entries.values()]
        if self.token_due is not None:
            times.append(self.token_due)
        return min(times) if times and self.settings is not None else None

    def step(self, now: float | None = None) -> list[Change]:
        """Renew the token and re-read the references that are due; what changed."""
        with self._lock:
            now = self.clock() if now is None else now
            if self.token_due is not None and now >= self.token_due:
                self._keep_token(now)
            due = [ref for ref, entry in self.entries.items() if entry.due <= now]
            if due:
                self._read(due, now)
            changes, self._changes = self._changes, []
        return changes

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            due = self.next_due()
            wait = None if due is None else max(0.0, due - self.clock())
            if wait is None or wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                continue
            try:
                changes = await asyncio.to_thread(self.step)
                if changes and self.on_change is not None:
                    self.on_change(changes)
            except Exception:  # a bug here must not stop the refreshing for good
                self.log.exception("refreshing Vault secrets failed")
                await asyncio.sleep(RETRY_S)

    def stop(self) -> None:
        """Stop re-reading (the process is stopping)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _start(self) -> None:
        if self._task is not None or self.settings is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (the `explain` command): values read once, never refreshed
            return
        self._task = loop.create_task(self.run(), name="vault-secrets")
        if self._wake is not None:
            self._wake.set()

    # --- under the lock --------------------------------------------------------------------------

    def _ensure_login(self, now: float) -> VaultClient:
        assert self.settings is not None
        if self.client is None:
            self.client = self.client_factory(self.settings, self.environ)
        if not self.logged_in:
            self._schedule_token(self.client.login(), now)
            self.logged_in = True
            self.log.info("logged in to Vault at %s (%s auth)", self.settings.address, self.settings.method)
        return self.client

    def _schedule_token(self, info: TokenInfo, now: float) -> None:
        # A token that never expires needs nothing; else act at 2/3 of its TTL, when a renewal (or
        # a new login) still has a third of the TTL to succeed in, retries included.
        self.token_due = now + info.ttl_s * RENEW_AT if info.ttl_s > 0 else None
        self._token_renewable = info.renewable

    def _keep_token(self, now: float) -> None:
        assert self.settings is not None and self.client is not None
        try:
            if self._token_renewable:
                self._schedule_token(self.client.renew_token(), now)
                self.log.info("renewed the Vault token")
                return
        except VaultError as exc:
            self.log.warning("renewing the Vault token failed: %s", exc)
        if self.settings.method == "token":  # nothing else to do: the operator gives a new token
            self.log.warning(
                "the Vault token cannot be renewed; it expires soon (set a new %s)", self.settings.token_env
            )
            self.token_due = None
            return
        self.logged_in = False  # the next read logs in again
        try:
            self._ensure_login(now)
        except VaultError as exc:
            self.log.warning("logging in to Vault again failed: %s; retrying in %.0fs", exc, RETRY_S)
            self.token_due = now + RETRY_S

    def _read(self, refs: list[SecretRef], now: float) -> None:
        assert self.settings is not None
        interval = self.settings.rotation_interval_s
        try:
            client = self._ensure_login(now)
        except VaultError as exc:
            self._failed(refs, now, f"cannot log in to Vault ({self.settings.method}): {exc}")
            return
        for ref in refs:
            entry = self.entries[ref]
            entry.last_read = now
            try:
                secret = client.read(ref)
            except VaultError as exc:
                if exc.status == 403 and self.settings.method != "token":
                    self.logged_in = False  # the token may have expired: log in again next time
                self._failed([ref], now, f"cannot read {ref} from Vault: {exc}")
                continue
            value = secret.data.get(ref.field)
            if not isinstance(value, str) or not value:
                self._failed([ref], now, f"{ref}: version {secret.version} has no field {ref.field!r}")
                continue
            if entry.value is not None and value != entry.value:
                self.log.info("secret %s rotated: version %d now in use", ref, secret.version)
                self._changes.append(Change(ref, secret.version, entry.version))
            elif entry.value is None:
                self.log.info("secret %s read (version %d)", ref, secret.version)
                self._changes.append(Change(ref, secret.version, None))
            entry.value, entry.version, entry.problem, entry.due = value, secret.version, None, now + interval

    def _failed(self, refs: list[SecretRef], now: float, problem: str) -> None:
        for ref in refs:
            entry = self.entries[ref]
            entry.problem, entry.due = problem, now + RETRY_S
            entry.last_read = now
            kept = " (the last value read stays in use)" if entry.value is not None else ""
            self.log.warning("%s; retrying in %.0fs%s", problem, RETRY_S, kept)


def policy_settings(vault: policy_pb2.Vault, environ: Mapping[str, str]) -> VaultSettings:
    """How this process reaches Vault: the policy's vault section, the address defaulting to
    VAULT_ADDR. Credentials are read at login, from ``environ`` and files, never from the policy.
    ValueError says what cannot be followed."""
    method = vault.auth_method or "token"
    if method not in METHODS:
        raise ValueError(f"vault.auth.method {method!r} is not one of {', '.join(METHODS)}")
    address = vault.address or environ.get("VAULT_ADDR", "")
    if not address.startswith(("http://", "https://")):
        raise ValueError("no address (set vault.address in the policy or VAULT_ADDR)")
    return VaultSettings(
        address=address,
        method=method,
        mount=vault.auth_mount,
        token_env=vault.token_env or "VAULT_TOKEN",
        role_id=vault.role_id,
        secret_id_env=vault.secret_id_env,
        role=vault.role,
        jwt_path=vault.jwt_path or DEFAULT_JWT_PATH,
        rotation_interval_s=vault.rotation_interval_s or 24 * 3600.0,
    )
