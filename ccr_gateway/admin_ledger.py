"""The usage ledger, read for the Admin API (control_plane.admin.views_usage's ``UsageReader``).

Here in the composition root because the ledger and the control plane are services that import
each other's code in neither direction (pyproject's import contracts): this module is the one
place that knows both. The server is handed ``open_reader`` (``app[routes_usage.LEDGER]``) and
opens a reader per request: a new connection (PostgreSQL) or file handle (SQLite) each time costs
a few milliseconds on an operator's page, and a database restarted in between just works.

On PostgreSQL the whole UTC days of a window are read from the ``usage_daily`` rollup and only
its partial first and last days from ``usage_records`` (ledger.reports.split_at_days); the local
SQLite ledger has no rollup and is read as `usage report` reads it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from control_plane.admin.errors import AdminError
from control_plane.admin.settings import AdminSettings
from ledger import reports
from ledger.reports import POSTGRES, ReportQuery
from ledger.stores import StoreError, UsageStore, open_store


def _unavailable(store: str, exc: BaseException) -> AdminError:
    return AdminError(503, "unavailable", f"the usage ledger ({store}) cannot be read: {exc}")


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, TimeoutError)
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return errors
    return (*errors, asyncpg.PostgresError, asyncpg.InterfaceError)


class LedgerReader:
    """One store, opened for one request; raises AdminError(503) when a query fails."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        try:
            return await self.store.fetch_all(sql, params)
        except _store_errors() as exc:
            raise _unavailable(self.store.description, exc) from None

    async def usage(
        self, since: datetime, until: datetime, by: Sequence[str], tenant: str | None
    ) -> list[dict[str, Any]]:
        dialect = self.store.dialect
        if dialect is not POSTGRES:
            sql, params = reports.report_sql(dialect, ReportQuery(since, until, tuple(by)), tenant)
            return reports.usage_rows(dialect, by, [await self._fetch(sql, params)])
        split = reports.split_at_days(since, until)
        parts = []
        for edge in (split.head, split.tail):
            if edge is not None:
                sql, params = reports.report_sql(dialect, ReportQuery(edge[0], edge[1], tuple(by)), tenant)
                parts.append(await self._fetch(sql, params))
        if split.days is not None:
            sql, params = reports.rollup_report_sql(by, split.days[0], split.days[1], tenant)
            parts.append(await self._fetch(sql, params))
        return reports.usage_rows(dialect, by, parts)

    async def series(
        self, since: datetime, until: datetime, step: str, by: str | None, tenant: str | None
    ) -> list[dict[str, Any]]:
        """``since``/``until`` on step boundaries (views_usage.series_params makes them so): a
        daily series on PostgreSQL is then all rollup."""
        dialect = self.store.dialect
        if dialect is POSTGRES and step == "day":
            sql, params = reports.rollup_series_sql(by, since.date(), until.date(), tenant)
        else:
            sql, params = reports.series_sql(dialect, since, until, step, by, tenant)
        rows = await self._fetch(sql, params)
        return [{**dict(row), **{name: dialect.cost_of(row[name]) for name in reports.COSTS}} for row in rows]

    async def newest_record(self) -> datetime | None:
        rows = await self._fetch(reports.NEWEST_RECORD_SQL, [])
        newest = rows[0]["newest"] if rows else None
        if newest is None or isinstance(newest, datetime):
            return newest
        return datetime.fromisoformat(str(newest).replace("Z", "+00:00"))  # SQLite: the record's ISO text

    async def close(self) -> None:
        try:
            await self.store.close()
        except _store_errors():
            pass  # closing a connection the server already dropped: nothing left to release


async def open_reader(settings: AdminSettings) -> LedgerReader:
    """The ledger the settings name: PostgreSQL (``ledger_postgres``), else the SQLite file
    (``ledger_sqlite``, else the local ledger's default path). AdminError(503) when it cannot be
    opened."""
    try:
        store = await open_store(settings.ledger_sqlite or None, settings.ledger_postgres or None)
    except StoreError as exc:
        raise AdminError(503, "unavailable", f"the usage ledger cannot be read: {exc}") from None
    return LedgerReader(store)
