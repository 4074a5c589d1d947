"""The PostgreSQL key store: keys shared by every gateway, changes announced with NOTIFY.

Split from ``extproc.auth.key_store`` (the interface, the rows, the SQLite store) so that a worker
with the embedded store never imports asyncpg. The first operation connects and migrates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ccr.v1 import tracing
from extproc.auth.key_store import (
    _DAILY_LIMITS,
    COLUMNS,
    COMMAND_TIMEOUT,
    NOTIFY_CHANNEL,
    KeyNotFound,
    KeyStoreUnavailable,
    Listening,
    _Modifications,
    _record_of,
    _row_values,
    expand_env,
    redact_dsn,
)
from extproc.auth.keys import KeyFormatError, KeyRecord

_WRITE_LOCK = 0x63637241  # "ccrA": advisory lock serializing writers, so versions commit in order
_MIGRATION_LOCK = 0x6363724D  # "ccrM"
CONNECT_TIMEOUT = 5.0
_SET_CHANGED = ", ".join(f"{column} = ${i}" for i, column in enumerate(COLUMNS[1:], start=2))
_POSTGRES_MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "virtual keys",
        """
        CREATE TABLE virtual_keys (
            key_id text PRIMARY KEY,
            tenant text NOT NULL,
            name text NOT NULL,
            models text[] NOT NULL,              -- {} = any model
            rpm integer,
            tpm integer,
            max_parallel integer,
            budget_usd double precision,
            budget_period text CHECK (budget_period IN ('day', 'week', 'month')),
            expires_at double precision,         -- epoch seconds, as the rest of ext_proc counts time
            revoked boolean NOT NULL,
            salt bytea NOT NULL,
            secret_hash bytea NOT NULL,
            previous_salt bytea,
            previous_secret_hash bytea,
            previous_valid_until double precision,
            created_at double precision NOT NULL,
            changed_at double precision NOT NULL,
            version bigint NOT NULL UNIQUE
        );
        CREATE INDEX virtual_keys_tenant ON virtual_keys (tenant);
        """,
    ),
    (2, "hourly and daily limits", _DAILY_LIMITS),
)


class PostgresKeyStore(_Modifications):
    """Keys in PostgreSQL, shared by every gateway. A small pool, opened on first use (so a store
    can be made while the database is down) and reconnecting by itself after an outage; the schema
    is migrated on first use too (under an advisory lock, so gateways starting together are safe)."""

    poll_interval = 1.0

    def __init__(
        self, dsn: str, *, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._dsn = dsn
        self._environ = environ
        self.description = redact_dsn(dsn)
        self._clock = clock
        self._pool: Any = None  # asyncpg.Pool
        self._pool_lock = asyncio.Lock()

    async def _acquire_pool(self) -> Any:
        import asyncpg  # only PostgreSQL users pay for it

        async with self._pool_lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    expand_env(self._dsn, self._environ),
                    min_size=0,
                    max_size=2,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                )
                try:
                    async with pool.acquire() as connection:
                        await _migrate_postgres(connection)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            return self._pool

    async def _call(self, work: Callable[[Any], Any]) -> Any:
        import asyncpg

        try:
            pool = await self._acquire_pool()
            # A request's span when one waits on it, else a trace of its own (a key cache refresh).
            with _span(_operation(work)):
                async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
                    return await work(connection)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise KeyStoreUnavailable(f"key store {self.description}: {type(exc).__name__}: {exc}") from None
        except KeyFormatError:
            raise
        except ValueError as exc:  # a DSN asyncpg cannot parse
            raise KeyStoreUnavailable(f"key store {self.description}: {exc}") from None

    @staticmethod
    async def _write(connection: Any, record: KeyRecord, *, insert: bool) -> KeyRecord:
        """Inside a transaction: the record stored with the table's next version, and a NOTIFY
        (sent by PostgreSQL when the transaction commits, not before)."""
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _WRITE_LOCK)
        version = await connection.fetchval("SELECT coalesce(max(version), 0) + 1 FROM virtual_keys")
        values = _row_values(record, version, list)
        if insert:
            marks = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
            await connection.execute(f"INSERT INTO virtual_keys ({', '.join(COLUMNS)}) VALUES ({marks})", *values)
        else:
            await connection.execute(f"UPDATE virtual_keys SET {_SET_CHANGED} WHERE key_id = $1", *values)
        await connection.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, record.key_id)
        return replace(record, version=version)

    @staticmethod
    def _record(row: Any) -> KeyRecord:
        return _record_of(row, tuple(row["models"]))

    async def _modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        async def work(connection: Any) -> KeyRecord:
            async with connection.transaction():
                row = await connection.fetchrow("SELECT * FROM virtual_keys WHERE key_id = $1 FOR UPDATE", key_id)
                if row is None:
                    raise KeyNotFound(key_id)
                return await self._write(connection, change(self._record(row)), insert=False)

        return await self._call(work)

    async def create(self, record: KeyRecord) -> KeyRecord:
        async def work(connection: Any) -> KeyRecord:
            async with connection.transaction():
                return await self._write(connection, record, insert=True)

        return await self._call(work)

    async def get(self, key_id: str) -> KeyRecord | None:
        async def work(connection: Any) -> KeyRecord | None:
            row = await connection.fetchrow("SELECT * FROM virtual_keys WHERE key_id = $1", key_id)
            return None if row is None else self._record(row)

        return await self._call(work)

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        async def work(connection: Any) -> list[KeyRecord]:
            if tenant is None:
                rows = await connection.fetch("SELECT * FROM virtual_keys ORDER BY tenant, created_at, key_id")
            else:
                rows = await connection.fetch(
                    "SELECT * FROM virtual_keys WHERE tenant = $1 ORDER BY created_at, key_id", tenant
                )
            return [self._record(row) for row in rows]

        return await self._call(work)

    async def changes_since(self, version: int) -> list[KeyRecord]:
        async def work(connection: Any) -> list[KeyRecord]:
            rows = await connection.fetch("SELECT * FROM virtual_keys WHERE version > $1 ORDER BY version", version)
            return [self._record(row) for row in rows]

        return await self._call(work)

    async def listen(self, wake: Callable[[], None]) -> Listening:
        """A connection of its own (a pooled one would be handed to others) LISTENing on
        NOTIFY_CHANNEL; ``wake()`` runs for each change. ``alive`` turns False when PostgreSQL
        closes it; a silently dead line is noticed by the cache's poll instead."""
        import asyncpg

        try:
            await self._acquire_pool()  # the table exists before anyone listens for its changes
            connection = await asyncpg.connect(
                expand_env(self._dsn, self._environ), timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
            )
            await connection.add_listener(NOTIFY_CHANNEL, lambda *_: wake())
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise KeyStoreUnavailable(f"key store {self.description}: cannot LISTEN: {exc}") from None
        return _PostgresListening(connection)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
            except (TimeoutError, OSError):
                pool.terminate()


class _PostgresListening:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @property
    def alive(self) -> bool:
        return not self._connection.is_closed()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._connection.close(), 2)
        except Exception:  # already broken: nothing to say goodbye to
            self._connection.terminate()


async def _migrate_postgres(connection: Any) -> list[str]:
    """Apply the migrations not yet applied (one transaction, under an advisory lock); returns their names."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS auth_schema_migrations"
            " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM auth_schema_migrations")}
        known = {version for version, _, _ in _POSTGRES_MIGRATIONS}
        if done - known:
            raise ValueError(f"the keys schema is version {max(done)}, newer than this ccr-gateway knows; upgrade it")
        applied = []
        for version, name, sql in _POSTGRES_MIGRATIONS:
            if version not in done:
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO auth_schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
        return applied


def _operation(work: Callable[..., Any]) -> str:
    """The store method a ``work`` closure belongs to ("PostgresKeyStore.get.<locals>.work" -> "get")."""
    parts = work.__qualname__.split(".")
    return parts[-3] if len(parts) >= 3 and parts[-2] == "<locals>" else parts[-1]


def _span(operation: str) -> Any:
    attributes = {"db.system": "postgresql", "db.operation.name": operation}
    if tracing.current() is not None:
        return tracing.span("ccr.key_store", tracing.CLIENT, attributes)
    return tracing.background("ccr.key_store", tracing.CLIENT, attributes)
