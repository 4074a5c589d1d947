"""Stored responses of the Responses API (``store``, ``previous_response_id``, ``GET``/``DELETE
/v1/responses/{id}``): where they are kept. docs/responses.md, "Stored responses".

A record is written in two halves, because no one place sees both: the decision knows the request
(its tenant and key, the input items after previous_response_id was expanded, the instructions) and
mints a ``token`` for it; whoever reads the provider's answer (``/respond``, or ext_proc on a
stream, on any worker) knows the response object and its id. Each half is an upsert on the token,
in the background, in either order; a record can be read once both have arrived. A request whose
answer never came leaves a half that expires like any record.

Every read and delete names the caller's tenant and key: another tenant's or key's id is not
found, exactly like an unknown one.

``ResponseStore`` is the interface; ``SqliteResponseStore`` the embedded default (a file beside the
local ledger), extproc.responses_store_pg the PostgreSQL one. Saving never fails or delays an
answer: ``Saver`` runs the writes as tasks and counts their failures.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from prometheus_client import Counter

from ccr.v1.sqlite_files import LockedConnection, write_transaction

log = logging.getLogger("ccr.responses")

BUSY_TIMEOUT_MS = 10_000
FILE_NAME = "responses.db"  # beside the local ledger's ledger.db
PURGE_EVERY_S = 3600.0  # expired records are deleted at most this often, by whichever write comes

SAVE_FAILURES = Counter(
    "ccr_responses_store_failures",
    "Stored-response writes or reads that failed (the client's answer went out regardless)",
    ["operation"],
)


@dataclass(frozen=True, slots=True)
class RequestHalf:
    """What the decision knows of a stored response: written when the request is forwarded."""

    token: str
    tenant: str
    key_id: str
    created_at: float
    expires_at: float
    input_items: list[Any]  # the request's input after previous_response_id was expanded
    instructions: str | None


@dataclass(frozen=True, slots=True)
class AnswerHalf:
    """What the reader of the answer knows: the response object as the client got it."""

    token: str
    tenant: str
    key_id: str
    created_at: float
    expires_at: float
    response_id: str
    response: dict[str, Any]  # non-stream form


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    key_id: str
    created_at: float
    expires_at: float
    input_items: list[Any]
    instructions: str | None
    response: dict[str, Any]


class ResponseStore(Protocol):
    """Where stored responses are kept. ``get`` and ``delete`` find a record only for its own
    tenant and key, and only before it expires."""

    async def put_request(self, half: RequestHalf) -> None: ...

    async def put_answer(self, half: AnswerHalf) -> None: ...

    async def put(self, record: StoredResponse, token: str) -> None:
        """A whole record at once (both halves known in one place)."""
        ...

    async def get(self, tenant: str, key_id: str, response_id: str, now: float) -> StoredResponse | None: ...

    async def delete(self, tenant: str, key_id: str, response_id: str, now: float) -> bool: ...

    async def purge(self, now: float) -> int:
        """Delete every expired record; returns how many."""
        ...

    async def close(self) -> None: ...


def default_path(ledger_dir: Path) -> Path:
    return ledger_dir / FILE_NAME


# --- SQLite --------------------------------------------------------------------------------------

MIGRATIONS_TABLE = "responses_schema_migrations"
# Versioned like the local ledger's: append, never edit a shipped one.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "stored_responses",
        """
        CREATE TABLE stored_responses (
            token TEXT PRIMARY KEY,
            id TEXT,
            tenant TEXT NOT NULL,
            key_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            input TEXT,
            instructions TEXT,
            response TEXT
        );
        CREATE INDEX stored_responses_id ON stored_responses (id, tenant, key_id);
        CREATE INDEX stored_responses_expires ON stored_responses (expires_at)
        """,
    ),
)

_UPSERT_REQUEST = """
INSERT INTO stored_responses (token, tenant, key_id, created_at, expires_at, input, instructions)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (token) DO UPDATE SET input = excluded.input, instructions = excluded.instructions,
    created_at = excluded.created_at, expires_at = excluded.expires_at
"""
_UPSERT_ANSWER = """
INSERT INTO stored_responses (token, id, tenant, key_id, created_at, expires_at, response)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (token) DO UPDATE SET id = excluded.id, response = excluded.response
"""
_SELECT = """
SELECT id, tenant, key_id, created_at, expires_at, input, instructions, response FROM stored_responses
WHERE id = ? AND tenant = ? AND key_id = ? AND expires_at > ? AND input IS NOT NULL AND response IS NOT NULL
ORDER BY created_at DESC LIMIT 1
"""


def _migrate(connection: sqlite3.Connection) -> None:
    exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,))
    if exists.fetchone() is not None:
        done = {row[0] for row in connection.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        if len(done) == len(MIGRATIONS):
            return
    with write_transaction(connection):
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in connection.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            for statement in filter(str.strip, sql.split(";")):
                connection.execute(statement)
            connection.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )


def _record(row: Any) -> StoredResponse:
    return StoredResponse(
        row[0],
        row[1],
        row[2],
        float(row[3]),
        float(row[4]),
        orjson.loads(row[5]),
        row[6],
        orjson.loads(row[7]),
    )


class SqliteResponseStore:
    """The embedded store: one SQLite file shared by the workers of one gateway (WAL, one write at
    a time, ccr.v1.sqlite_files), its calls in a thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self._db = LockedConnection(self.path, busy_timeout_ms=BUSY_TIMEOUT_MS, setup=_migrate)

    async def put_request(self, half: RequestHalf) -> None:
        row = (
            half.token,
            half.tenant,
            half.key_id,
            half.created_at,
            half.expires_at,
            orjson.dumps(half.input_items).decode(),
            half.instructions,
        )
        await self._write(_UPSERT_REQUEST, row)

    async def put_answer(self, half: AnswerHalf) -> None:
        row = (
            half.token,
            half.response_id,
            half.tenant,
            half.key_id,
            half.created_at,
            half.expires_at,
            orjson.dumps(half.response).decode(),
        )
        await self._write(_UPSERT_ANSWER, row)

    async def put(self, record: StoredResponse, token: str) -> None:
        await self.put_request(
            RequestHalf(
                token,
                record.tenant,
                record.key_id,
                record.created_at,
                record.expires_at,
                record.input_items,
                record.instructions,
            )
        )
        await self.put_answer(
            AnswerHalf(
                token, record.tenant, record.key_id, record.created_at, record.expires_at, record.id, record.response
            )
        )

    async def get(self, tenant: str, key_id: str, response_id: str, now: float) -> StoredResponse | None:
        def work(connection: sqlite3.Connection) -> StoredResponse | None:
            row = connection.execute(_SELECT, (response_id, tenant, key_id, now)).fetchone()
            return _record(row) if row is not None else None

        return await self._db.run(work)

    async def delete(self, tenant: str, key_id: str, response_id: str, now: float) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            with write_transaction(connection):
                cursor = connection.execute(
                    "DELETE FROM stored_responses WHERE id = ? AND tenant = ? AND key_id = ? AND expires_at > ?"
                    " AND response IS NOT NULL",
                    (response_id, tenant, key_id, now),
                )
            return cursor.rowcount > 0

        return await self._db.run(work)

    async def purge(self, now: float) -> int:
        def work(connection: sqlite3.Connection) -> int:
            with write_transaction(connection):
                cursor = connection.execute("DELETE FROM stored_responses WHERE expires_at <= ?", (now,))
            return cursor.rowcount

        return await self._db.run(work)

    async def close(self) -> None:
        await self._db.close()

    async def _write(self, sql: str, row: tuple[Any, ...]) -> None:
        def work(connection: sqlite3.Connection) -> None:
            with write_transaction(connection):
                connection.execute(sql, row)

        await self._db.run(work)


# --- saving in the background --------------------------------------------------------------------


class Saver:
    """Runs a store's writes as tasks the answer never waits for: a failure is logged and counted
    (``ccr_responses_store_failures``), never the client's. Purges expired records at most once
    per PURGE_EVERY_S, from whichever write comes."""

    def __init__(self, store: ResponseStore, clock: Any = time.time) -> None:
        self.store = store
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._purged_at = 0.0

    def request(self, half: RequestHalf) -> None:
        self._spawn("put_request", self.store.put_request(half))

    def answer(self, half: AnswerHalf) -> None:
        self._spawn("put_answer", self.store.put_answer(half))
        now = self._clock()
        if now - self._purged_at >= PURGE_EVERY_S:
            self._purged_at = now
            self._spawn("purge", self._purge(now))

    async def drain(self) -> None:
        """Wait for the writes under way (a worker shutting down)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _purge(self, now: float) -> None:
        purged = await self.store.purge(now)
        if purged:
            log.info("purged %d expired stored responses", purged)

    def _spawn(self, operation: str, work: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                SAVE_FAILURES.labels(operation).inc()
                log.exception("stored responses: %s failed", operation)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no loop (a synchronous test): nothing can run it
            work.close()
            SAVE_FAILURES.labels(operation).inc()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
