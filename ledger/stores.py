"""Where reports read usage records: the local SQLite ledger or PostgreSQL. A store only runs the
SQL that ledger.reports builds (in the store's dialect) and hands back rows as mappings; all
shaping is in reports. Both are async so the CLI reads them the same way; SQLite's calls run in a
thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ccr.v1.usage_record import FIELDS
from ledger import local
from ledger.env import expand_env, redact_url
from ledger.reports import POSTGRES, SQLITE, Dialect

FETCH_ROWS = 2000  # rows per round trip when streaming


class StoreError(Exception):
    """The store cannot be opened or read; the message says which one (never its password)."""


class UsageStore(Protocol):
    dialect: Dialect
    description: str  # for messages: the file, or the DSN with its password masked

    async def fetch_all(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]: ...

    def stream(self, sql: str, params: Sequence[Any]) -> AsyncGenerator[Mapping[str, Any], None]:
        """The rows one at a time, read ahead FETCH_ROWS at a time: never all in memory. Close it
        (contextlib.aclosing) before the store."""
        ...

    async def close(self) -> None: ...


class SqliteStore:
    dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self._connection.row_factory = sqlite3.Row
        self.description = str(path)

    @classmethod
    async def open(cls, path: Path | str) -> SqliteStore:
        path = Path(path).expanduser()
        try:
            connection = await asyncio.to_thread(local.connect, path, create=False)
        except FileNotFoundError:
            raise StoreError(f"no ledger at {path} (a gateway run with no --ledger writes one there)") from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the ledger {path}: {exc}") from exc
        return cls(connection, path)

    async def fetch_all(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        return await asyncio.to_thread(lambda: self._connection.execute(sql, params).fetchall())

    async def stream(self, sql: str, params: Sequence[Any]) -> AsyncGenerator[Mapping[str, Any], None]:
        cursor = await asyncio.to_thread(self._connection.execute, sql, params)
        try:
            while rows := await asyncio.to_thread(cursor.fetchmany, FETCH_ROWS):
                for row in rows:
                    yield row
        finally:
            cursor.close()

    async def close(self) -> None:
        self._connection.close()


class PostgresStore:
    dialect = POSTGRES

    def __init__(self, connection: Any, description: str) -> None:  # an asyncpg.Connection
        self._connection = connection
        self.description = description

    @classmethod
    async def open(cls, dsn: str, environ: Mapping[str, str] | None = None) -> PostgresStore:
        """``dsn`` may hold ``${VAR}`` references (expanded here; an unset one is a StoreError
        naming it). Messages show the DSN as given, with any literal password masked."""
        import asyncpg  # only a PostgreSQL reader pays for it

        description = redact_url(dsn)
        try:
            connection = await asyncpg.connect(expand_env(dsn, environ))
        except ValueError as exc:  # EnvError, or a DSN asyncpg cannot parse
            raise StoreError(f"--postgres {description}: {exc}") from None
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {description}: {exc}") from None
        if await connection.fetchval("SELECT to_regclass('usage_records')") is None:
            await connection.close()
            raise StoreError(
                f"{description} holds no ledger yet: `ccr-gateway db migrate --postgres DSN` creates it "
                "(the ledger writer does too when it starts)"
            )
        # A ledger older than this ccr-gateway (its writer not upgraded yet) lacks the newer
        # columns: said here, instead of as a failed query (a reader may not migrate it itself).
        columns = await connection.fetch(
            "SELECT attname FROM pg_attribute "
            "WHERE attrelid = 'usage_records'::regclass AND attnum > 0 AND NOT attisdropped"
        )
        missing = [name for name in FIELDS if name not in {row["attname"] for row in columns}]
        if missing:
            await connection.close()
            raise StoreError(
                f"{description}: the ledger's schema is older than this ccr-gateway (no {', '.join(missing)}): "
                "`ccr-gateway db migrate --postgres DSN` brings it up to date (the ledger writer does too when it starts)"
            )
        return cls(connection, description)

    @property
    def connection(self) -> Any:
        return self._connection

    async def fetch_all(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        return await self._connection.fetch(sql, *params)

    async def stream(self, sql: str, params: Sequence[Any]) -> AsyncGenerator[Mapping[str, Any], None]:
        # A server-side cursor (it needs a transaction): PostgreSQL holds the result, we read it
        # FETCH_ROWS at a time.
        async with self._connection.transaction(readonly=True, isolation="repeatable_read"):
            async for row in self._connection.cursor(sql, *params, prefetch=FETCH_ROWS):
                yield row

    async def close(self) -> None:
        await self._connection.close()


async def open_store(sqlite_path: Path | str | None = None, postgres_dsn: str | None = None) -> UsageStore:
    """PostgreSQL when a DSN is given, else the SQLite ledger (default: the local default path)."""
    if postgres_dsn:
        return await PostgresStore.open(postgres_dsn)
    return await SqliteStore.open(sqlite_path or local.default_ledger_path())
