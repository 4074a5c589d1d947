"""Stored responses in PostgreSQL (asyncpg): the same table and halves as the embedded store
(extproc.responses_store), for gateways whose workers run on several machines. Switched on by a
DSN (``$CCR_RESPONSES_POSTGRES``, else the ledger's ``$CCR_LEDGER_POSTGRES``); the schema is
migrated when the store opens (an advisory lock keeps two workers from doing it at once).

``schema``: the PostgreSQL schema holding the table (tests use one of their own)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.responses_store import AnswerHalf, RequestHalf, StoredResponse

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOCK_ID = 0x63637272  # "ccrr": the migration's advisory lock

# Versioned: append, never edit a shipped one. {s}: the schema.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "stored_responses",
        """
        CREATE TABLE {s}.stored_responses (
            token TEXT PRIMARY KEY,
            id TEXT,
            tenant TEXT NOT NULL,
            key_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            input JSONB,
            instructions TEXT,
            response JSONB
        );
        CREATE INDEX stored_responses_id ON {s}.stored_responses (id, tenant, key_id);
        CREATE INDEX stored_responses_expires ON {s}.stored_responses (expires_at)
        """,
    ),
)


class PostgresResponseStore:
    """A pool of connections (asyncpg) to the ledger's PostgreSQL or its own."""

    def __init__(self, pool: Any, schema: str) -> None:  # an asyncpg.Pool
        self._pool = pool
        self._table = f"{schema}.stored_responses"

    @classmethod
    async def open(
        cls, dsn: str, schema: str = "public", min_size: int = 1, max_size: int = 4
    ) -> PostgresResponseStore:
        import asyncpg  # only a worker that stores in PostgreSQL pays for it

        if not _NAME.match(schema):
            raise ValueError(f"schema {schema!r} is not a plain PostgreSQL name")
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        try:
            async with pool.acquire() as connection:
                await migrate(connection, schema)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, schema)

    async def put_request(self, half: RequestHalf) -> None:
        await self._pool.execute(
            f"INSERT INTO {self._table} (token, tenant, key_id, created_at, expires_at, input, instructions) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT (token) DO UPDATE SET input = excluded.input, "
            "instructions = excluded.instructions, created_at = excluded.created_at, expires_at = excluded.expires_at",
            half.token,
            half.tenant,
            half.key_id,
            half.created_at,
            half.expires_at,
            orjson.dumps(half.input_items).decode(),
            half.instructions,
        )

    async def put_answer(self, half: AnswerHalf) -> None:
        await self._pool.execute(
            f"INSERT INTO {self._table} (token, id, tenant, key_id, created_at, expires_at, response) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) "
            "ON CONFLICT (token) DO UPDATE SET id = excluded.id, response = excluded.response",
            half.token,
            half.response_id,
            half.tenant,
            half.key_id,
            half.created_at,
            half.expires_at,
            orjson.dumps(half.response).decode(),
        )

    async def put(self, record: StoredResponse, token: str) -> None:
        half = RequestHalf(
            token,
            record.tenant,
            record.key_id,
            record.created_at,
            record.expires_at,
            record.input_items,
            record.instructions,
        )
        await self.put_request(half)
        await self.put_answer(
            AnswerHalf(
                token, record.tenant, record.key_id, record.created_at, record.expires_at, record.id, record.response
            )
        )

    async def get(self, tenant: str, key_id: str, response_id: str, now: float) -> StoredResponse | None:
        row = await self._pool.fetchrow(
            f"SELECT id, tenant, key_id, created_at, expires_at, input::text, instructions, response::text "
            f"FROM {self._table} WHERE id = $1 AND tenant = $2 AND key_id = $3 AND expires_at > $4 "
            "AND input IS NOT NULL AND response IS NOT NULL ORDER BY created_at DESC LIMIT 1",
            response_id,
            tenant,
            key_id,
            now,
        )
        if row is None:
            return None
        return StoredResponse(
            row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]), row[6], orjson.loads(row[7])
        )

    async def delete(self, tenant: str, key_id: str, response_id: str, now: float) -> bool:
        status = await self._pool.execute(
            f"DELETE FROM {self._table} WHERE id = $1 AND tenant = $2 AND key_id = $3 AND expires_at > $4 "
            "AND response IS NOT NULL",
            response_id,
            tenant,
            key_id,
            now,
        )
        return not status.endswith(" 0")

    async def purge(self, now: float) -> int:
        status = await self._pool.execute(f"DELETE FROM {self._table} WHERE expires_at <= $1", now)
        return int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        await self._pool.close()


async def migrate(connection: Any, schema: str = "public") -> list[int]:
    """Run the migrations ``schema`` has not run yet (under an advisory lock); their versions."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.responses_schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await connection.fetch(f"SELECT version FROM {schema}.responses_schema_migrations")}
        applied = []
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            for statement in filter(str.strip, sql.format(s=schema).split(";")):
                await connection.execute(statement)
            await connection.execute(
                f"INSERT INTO {schema}.responses_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    return applied
