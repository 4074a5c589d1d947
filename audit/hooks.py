"""The one-call hooks the writers use. Two failure rules, on purpose different:

* The control plane (``PolicyAudit``): a policy change always applies. The entry is appended by a
  background task in the order recorded; if the store or key is unusable the change still takes
  effect, a warning is logged and ``ccr_audit_append_failures_total`` counts it. Refusing a valid
  policy because the audit database is down would turn an audit outage into a gateway outage.
* One-shot admin commands (``key_change`` for `keys create|update|revoke|rotate`, ``pushed`` for
  `policy push`, ``AdminAudit`` for `db migrate` and `ledger dlq replay`) fail closed: ``ready()`` checks the key and the store before anything changes, so
  an unaudited change is refused up front; if the append fails after the change (the store went
  away in between), the command says so and exits 1.

Never pass a secret in ``details``: entries are exported to SIEMs as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from audit.chain import ChainKey, Draft, Entry
from audit.keys import AuditKeyError, load_key
from audit.stores import (
    AUDIT_POSTGRES_ENV,
    AUDIT_SQLITE_ENV,
    AuditStore,
    AuditUnavailable,
    SqliteAuditStore,
    default_audit_path,
    open_audit_store,
)

ACTOR_ENV = "CCR_AUDIT_ACTOR"
DISABLE_ENV = "CCR_AUDIT"  # "off": no audit log (tests of other things, throwaway gateways)
log = logging.getLogger("ccr.audit")

AUDIT_FAILURES = Counter("ccr_audit_append_failures_total", "Audit entries that could not be appended", ["action"])
AUDIT_APPENDED = Counter("ccr_audit_appended_total", "Audit entries appended", ["action"])


def actor(explicit: str | None = None) -> str:
    """Who: ``--actor``, else ``$CCR_AUDIT_ACTOR``, else the OS user."""
    if explicit:
        return explicit
    if os.environ.get(ACTOR_ENV):
        return os.environ[ACTOR_ENV]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").lower() not in ("off", "0", "false")


class AuditLog:
    """A store and its key, opened together; ``append`` seals and writes one entry."""

    def __init__(self, store: AuditStore, key_file: str | None = None) -> None:
        self.store = store
        self.key_file = key_file
        self._key: ChainKey | None = None

    def key(self) -> ChainKey:
        if self._key is None:
            self._key = load_key(self.key_file, create=self.store.embedded)
        return self._key

    async def ready(self) -> None:
        """Raises AuditKeyError / AuditUnavailable unless an append would work now."""
        self.key()
        await self.store.head()

    async def append(self, draft: Draft) -> Entry:
        try:
            entry = await self.store.append(self.key(), draft)
        except (AuditKeyError, AuditUnavailable):
            AUDIT_FAILURES.labels(draft.action).inc()
            raise
        AUDIT_APPENDED.labels(draft.action).inc()
        return entry

    async def append_many(self, drafts: Sequence[Draft]) -> list[Entry]:
        """``drafts`` in one transaction, in order (a writer that queues many: one fsync for all)."""
        try:
            entries = await self.store.append_many(self.key(), drafts)
        except (AuditKeyError, AuditUnavailable):
            for draft in drafts:
                AUDIT_FAILURES.labels(draft.action).inc()
            raise
        for draft in drafts:
            AUDIT_APPENDED.labels(draft.action).inc()
        return entries

    async def close(self) -> None:
        await self.store.close()


class PolicyAudit:
    """The control plane's hook: ``accepted``/``rejected`` return at once and never raise."""

    def __init__(self, audit: AuditLog | None = None) -> None:
        self.audit = audit if audit is not None else (AuditLog(open_audit_store()) if enabled() else None)
        self.host = socket.gethostname()
        self._queue: asyncio.Queue[Draft] | None = None
        self._task: asyncio.Task[None] | None = None

    def accepted(self, source: str, xds_version: str, consul_index: int | None = None, **details: Any) -> None:
        extra = {"consul_index": consul_index} if consul_index else {}
        self.record("policy.accepted", source, xds_version, {**extra, **details})

    def rejected(self, source: str, message: str, consul_index: int | None = None) -> None:
        extra = {"consul_index": consul_index} if consul_index else {}
        self.record("policy.rejected", source, "", {**extra, "error": message[:2000]})

    def record(self, action: str, source: str, xds_version: str, details: Mapping[str, Any]) -> None:
        if self.audit is None:
            return
        draft = Draft("control-plane", action, source, source, self.host, xds_version, dict(details))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test driving the control plane): append now
            asyncio.run(self._append_then_close(draft))
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait(draft)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(self._queue))

    async def _drain(self, queue: asyncio.Queue[Draft]) -> None:
        while not queue.empty():  # one writer per process: entries keep the order they were recorded in
            await self._append_logged(queue.get_nowait())

    async def _append_then_close(self, draft: Draft) -> None:
        assert self.audit is not None
        try:
            await self._append_logged(draft)
        finally:
            with contextlib.suppress(Exception):
                await self.audit.close()  # its connection belongs to this short-lived loop

    async def _append_logged(self, draft: Draft) -> None:
        assert self.audit is not None
        try:
            await self.audit.append(draft)
        except (AuditKeyError, AuditUnavailable) as exc:
            log.warning("audit: %s not recorded (the change still applies): %s", draft.action, exc)
        except Exception:  # a bug here must not stop the control plane either
            AUDIT_FAILURES.labels(draft.action).inc()
            log.exception("audit: %s not recorded", draft.action)

    async def flush(self) -> None:
        """Wait for the entries recorded so far (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await self.flush()
        if self.audit is not None:
            await self.audit.close()


def for_key_store(key_store_dsn: str | None, key_file: str | None = None) -> AuditLog:
    """The audit log that goes with a key store: ``$CCR_AUDIT_POSTGRES``, else the key store's own
    PostgreSQL, else the local file (a local key store keeps a local log)."""
    dsn = os.environ.get(AUDIT_POSTGRES_ENV) or key_store_dsn
    return AuditLog(open_audit_store(postgres=dsn) if dsn else SqliteAuditStore(_local_path()), key_file)


def _local_path() -> str:
    return os.environ.get(AUDIT_SQLITE_ENV) or str(default_audit_path())


async def admin_change(
    audit: AuditLog | None, action: str, target: str, source: str, details: Mapping[str, Any], who: str | None = None
) -> Entry | None:
    """One admin command's entry (fail closed: raises AuditKeyError / AuditUnavailable)."""
    if audit is None:
        return None
    draft = Draft(actor(who), action, target, source, socket.gethostname(), "", dict(details))
    return await audit.append(draft)


class OneShot:
    """For a command with no event loop of its own (`policy push`): ``ready()`` before the change,
    ``record()`` after it; both raise AuditKeyError / AuditUnavailable (fail closed). A no-op when
    the audit log is switched off ($CCR_AUDIT=off)."""

    def __init__(self, who: str | None = None) -> None:
        self.who = who
        self.store_description = ""

    def _open(self) -> AuditLog | None:
        if not enabled():
            return None
        audit = AuditLog(open_audit_store())
        self.store_description = audit.store.description
        return audit

    def ready(self) -> None:
        asyncio.run(self._with(lambda audit: audit.ready()))

    def record(self, action: str, target: str, source: str, details: Mapping[str, Any]) -> Entry | None:
        return asyncio.run(self._with(lambda audit: admin_change(audit, action, target, source, details, self.who)))

    async def _with(self, work: Any) -> Any:
        audit = self._open()
        if audit is None:
            return None
        try:
            return await work(audit)
        finally:
            await audit.close()


class AdminAudit:
    """OneShot's twin for commands that run their own event loop (`db migrate`, `ledger dlq
    replay`): ``async with AdminAudit(who) as audit`` checks the key and the store first (fail
    closed: raises AuditKeyError / AuditUnavailable before anything changes), then ``await
    audit.record(...)`` after the change. A no-op when the audit log is switched off."""

    def __init__(self, who: str | None = None) -> None:
        self.who = who
        self.log: AuditLog | None = None

    async def __aenter__(self) -> AdminAudit:
        if enabled():
            self.log = AuditLog(open_audit_store())
            try:
                await self.log.ready()
            except BaseException:
                await self.log.close()
                raise
        return self

    async def record(self, action: str, target: str, source: str, details: Mapping[str, Any]) -> Entry | None:
        return await admin_change(self.log, action, target, source, details, self.who)

    async def __aexit__(self, *exc_info: object) -> None:
        if self.log is not None:
            await self.log.close()
