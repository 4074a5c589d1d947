"""The Admin API's side of the audit log (audit.hooks), fail closed like the key CLI: a change is
refused up front (503, nothing changed) when the log could not record it (``ready``), and its
entry is appended before the answer goes out (``record``), with the principal as the actor.

The log is the one the key CLI writes for the same key store (``for_key_store``:
``$CCR_AUDIT_POSTGRES``, else the key store's PostgreSQL, else the local file), so `keys` run by
hand and the API's changes land in one chain. ``$CCR_AUDIT=off`` switches it off (tests of other
things), as for the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from audit.chain import Entry
from audit.hooks import AuditKeyError, AuditLog, AuditUnavailable, admin_change, enabled, for_key_store
from control_plane.admin.http import ApiError
from control_plane.admin.roles import Principal
from control_plane.admin.settings import AdminSettings

log = logging.getLogger("ccr.admin")
SOURCE = "admin-api"


class AdminAudit:
    def __init__(self, audit_log: AuditLog | None) -> None:
        self.log = audit_log

    @classmethod
    def for_settings(cls, settings: AdminSettings) -> AdminAudit:
        return cls(for_key_store(settings.keys_postgres or None) if enabled() else None)

    @property
    def description(self) -> str:
        return self.log.store.description if self.log is not None else "off"

    async def ready(self) -> None:
        """Before a change: ApiError 503 unless an append would work now."""
        if self.log is None:
            return
        try:
            await self.log.ready()
        except (AuditKeyError, AuditUnavailable) as exc:
            raise ApiError(503, f"the audit log is unavailable, nothing changed: {exc}") from None

    async def record(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        details: Mapping[str, Any],
        source: str = SOURCE,
        *,
        actor: str | None = None,
    ) -> Entry | None:
        """After the change, before answering. ``details`` never hold a secret. If the append fails
        now (the store went away since ``ready``) the caller gets a 503 that says the change was
        made but not audited: the same rule as the CLI's exit 1."""
        who = actor or (principal.id if principal is not None else "anonymous")
        try:
            return await admin_change(self.log, action, target, source, details, who)
        except (AuditKeyError, AuditUnavailable) as exc:
            log.error("audit: %s %s by %s was done but NOT audited: %s", action, target, who, exc)
            raise ApiError(503, f"{action} {target} was done but NOT audited: {exc}") from None

    async def record_quietly(self, action: str, target: str, details: Mapping[str, Any], *, actor: str) -> None:
        """For what is not a change (a failed sign-in): logged, never refused, if unrecorded."""
        try:
            await admin_change(self.log, action, target, SOURCE, details, actor)
        except (AuditKeyError, AuditUnavailable) as exc:
            log.warning("audit: %s not recorded: %s", action, exc)

    async def entries(self, since: str | None = None) -> list[Entry]:
        if self.log is None:
            return []
        try:
            return await self.log.store.entries(since)
        except AuditUnavailable as exc:
            raise ApiError(503, str(exc)) from None

    async def close(self) -> None:
        if self.log is not None:
            await self.log.close()
