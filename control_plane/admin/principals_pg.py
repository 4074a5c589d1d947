"""Admin keys in PostgreSQL (table ``admin_keys``): for control planes sharing one database, or
a deployment that keeps every key off local disks. Split from principals.py so a control plane on
the SQLite default never imports asyncpg. The first operation connects and migrates, under an
advisory lock (control planes starting together are safe), as the other PostgreSQL stores do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ccr.v1 import env_refs
from control_plane.admin.principals import (
    COLUMNS,
    AdminKeyNotFound,
    AdminKeyRecord,
    AdminKeyStoreUnavailable,
    record_of,
    row_values,
)

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0
_MIGRATION_LOCK = 0x63637241444D  # "ccrADM"
_POSTGRES_MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "admin keys",
        """
        CREATE TABLE admin_keys (
            key_id text PRIMARY KEY,
            name text NOT NULL,
            role text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'tenant-admin')),
            tenant text,
            salt bytea NOT NULL,
            secret_hash bytea NOT NULL,
            created_at double precision NOT NULL,
            revoked_at double precision
        )
        """,
    ),
)


class PostgresAdminKeyStore:
    def __init__(self, dsn: str, *, environ: Mapping[str, str] | None = None) -> None:
        self._dsn = dsn
        self._environ = environ
        self.description = env_refs.redact_url(dsn)
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def _acquire_pool(self) -> Any:
        import asyncpg

        async with self._pool_lock:
            if self._pool is None:
                try:
                    dsn = env_refs.expand_env(self._dsn, self._environ)
                except env_refs.EnvError as error:
                    raise AdminKeyStoreUnavailable(str(error)) from None
                pool = await asyncpg.create_pool(
                    dsn, min_size=0, max_size=2, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
                )
                try:
                    async with pool.acquire() as connection:
                        await migrate(connection)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            return self._pool

    async def _call(self, work: Callable[[Any], Any]) -> Any:
        import asyncpg

        try:
            pool = await self._acquire_pool()
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
                return await work(connection)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise AdminKeyStoreUnavailable(f"admin key store {self.description}: {type(exc).__name__}: {exc}") from None

    async def create(self, record: AdminKeyRecord) -> AdminKeyRecord:
        async def work(connection: Any) -> AdminKeyRecord:
            marks = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
            await connection.execute(
                f"INSERT INTO admin_keys ({', '.join(COLUMNS)}) VALUES ({marks})", *row_values(record)
            )
            return record

        return await self._call(work)

    async def get(self, key_id: str) -> AdminKeyRecord | None:
        async def work(connection: Any) -> AdminKeyRecord | None:
            row = await connection.fetchrow("SELECT * FROM admin_keys WHERE key_id = $1", key_id)
            return None if row is None else record_of(row)

        return await self._call(work)

    async def list(self) -> list[AdminKeyRecord]:
        async def work(connection: Any) -> list[AdminKeyRecord]:
            rows = await connection.fetch("SELECT * FROM admin_keys ORDER BY created_at, key_id")
            return [record_of(row) for row in rows]

        return await self._call(work)

    async def revoke(self, key_id: str, now: float) -> AdminKeyRecord:
        async def work(connection: Any) -> AdminKeyRecord:
            async with connection.transaction():
                row = await connection.fetchrow("SELECT * FROM admin_keys WHERE key_id = $1 FOR UPDATE", key_id)
                if row is None:
                    raise AdminKeyNotFound(key_id)
                record = record_of(row)
                if record.revoked_at is None:
                    record = replace(record, revoked_at=now)
                    await connection.execute("UPDATE admin_keys SET revoked_at = $2 WHERE key_id = $1", key_id, now)
                return record

        return await self._call(work)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
            except (TimeoutError, OSError):
                pool.terminate()


async def migrate(connection: Any) -> list[str]:
    """The migrations not yet applied, in one transaction under an advisory lock; their names."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS admin_schema_migrations"
            " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM admin_schema_migrations")}
        known = {version for version, _, _ in _POSTGRES_MIGRATIONS}
        if done - known:
            raise ValueError(f"the admin schema is version {max(done)}, newer than this ccr-gateway knows")
        applied = []
        for version, name, sql in _POSTGRES_MIGRATIONS:
            if version not in done:
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO admin_schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
        return applied
