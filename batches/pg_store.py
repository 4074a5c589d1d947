"""The PostgreSQL batch store: batches, items and input files shared by every gateway and worker.

Tables (migration 1 below; the SQLite store's are the same, column for column):

  batches      one row per batch: the model's Batch header (times as unix seconds, float8)
  batch_items  one row per item, keyed (batch_id, item_index): custom_id, the request body, state,
               attempts and throttles, the outcome (status_code, outcome_body, request_id,
               reason), sent_at (last handed to a provider, for monitoring) and finished_at
  batch_files  OpenAI input files (purpose batch): the file object's fields and the bytes

Bodies are bytea holding the JSON as given (orjson bytes), not jsonb: the store never looks
inside them, and bytea keeps them byte for byte without a parse on the way in.

Concurrency: every write is one transaction that first locks its batch's row, then reads what it
changes, applies the model's transition and writes the result; locks are always taken batch
first, then items: no deadlocks. Batch-wide writes (cancel, expiry, settle, archive, published
marks) take the row ``FOR UPDATE``: they wait for every item write in flight and exclude the next
ones. One item's writes (send, record, retry, expire one) take it ``FOR SHARE`` and then the
item's own row ``FOR UPDATE``: several workers write the items of one batch at once (a batch is
not drained one result at a time), while two workers recording the same item still take turns (the
second reads the first's outcome and gets DUPLICATE or REFUSED). Because item writes run side by
side, the last two items finishing at once cannot see each other's result inside their
transactions; so a write that made its item final settles the batch afterwards, in a batch-wide
write of its own, when a probe finds no item unfinished. Both writers probe after committing,
and the later one sees both items final. Different batches never wait for each other. Reads take
no locks.

Migrations follow the ledger's (ledger/pg_schema.py): versioned, one transaction under an
advisory lock, so gateways and workers starting together are safe; a shipped migration is never
edited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from batches import model
from batches.feeder import ActiveBatch
from batches.model import UNFINISHED, Batch, CancelResult, Counts, Dispatch, Item, ItemState, Outcome, Recorded
from batches.openai_api import FileRecord
from batches.store import (
    BATCH_COLUMNS,
    BULK_CHANGES,
    EXPIRY_SWEEP_LIMIT,
    FILE_COLUMNS,
    ITEM_CHANGES,
    ITEM_COLUMNS,
    RESULTS_PAGE_SIZE,
    AlreadyStored,
    BatchPage,
    ItemChange,
    NotInStore,
    Purged,
    archive_cutoff,
    batch_of,
    batch_values,
    both_cursors,
    bulk_values,
    canceling_all,
    check_new_batch,
    expiring,
    expiring_all,
    file_of,
    file_values,
    is_due_for_archive,
    item_changes,
    item_of,
    item_values,
    recording,
    retrying,
    sending,
    unknown_cursor,
)

T = TypeVar("T")
MIGRATIONS_TABLE = "batches_schema_migrations"
MIGRATION_LOCK = 7_366_020_501  # pg_advisory_xact_lock key: any constant unique to the batch store
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0  # a 100,000-item insert or cancel is one statement

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "batches",
        """
        CREATE TABLE batches (
            id text PRIMARY KEY,
            tenant text NOT NULL,
            api text NOT NULL,
            endpoint text NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            total integer NOT NULL,
            cancel_requested_at double precision,
            ended_at double precision,
            archived_at double precision,
            metadata bytea NOT NULL,
            input_file_id text,
            failure bytea NOT NULL
        );
        -- a tenant's list, newest first (scanned backwards), and its cursors
        CREATE INDEX batches_tenant_newest ON batches (tenant, created_at, id);
        -- the sweeps: batches still running (expiry) and ended ones not yet archived (retention)
        CREATE INDEX batches_due_to_expire ON batches (expires_at) WHERE ended_at IS NULL;
        CREATE INDEX batches_due_for_archive ON batches (created_at) WHERE ended_at IS NOT NULL AND archived_at IS NULL;

        CREATE TABLE batch_items (
            batch_id text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
            item_index integer NOT NULL,
            custom_id text NOT NULL,
            body bytea,                 -- NULL once archived
            state text NOT NULL CHECK (state IN ('queued', 'sent', 'succeeded', 'errored', 'expired', 'canceled')),
            attempts integer NOT NULL,
            throttles integer NOT NULL,
            status_code integer,
            outcome_body bytea,         -- NULL once archived
            request_id text,
            reason text,
            sent_at double precision,
            finished_at double precision,
            PRIMARY KEY (batch_id, item_index)
        );
        -- the feeder's window (queued, by index), "is any item unfinished" and counts by state
        CREATE INDEX batch_items_by_state ON batch_items (batch_id, state, item_index);

        CREATE TABLE batch_files (
            id text PRIMARY KEY,
            tenant text NOT NULL,
            filename text NOT NULL,
            purpose text NOT NULL,
            bytes bigint NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision,
            content bytea NOT NULL
        );
        CREATE INDEX batch_files_expiry ON batch_files (expires_at) WHERE expires_at IS NOT NULL;
        """,
    ),
    (
        2,
        "lanes_and_published",
        """
        -- the lane a batch's items run in (lanes.LANES), read by the feeder
        ALTER TABLE batches ADD COLUMN lane text NOT NULL DEFAULT 'batch';
        -- set once the lanes confirmed the item's message; cleared when retry_later puts it back
        ALTER TABLE batch_items ADD COLUMN published boolean NOT NULL DEFAULT false;
        -- a restarted feeder's window: queued items not yet published, by index
        CREATE INDEX batch_items_unpublished ON batch_items (batch_id, item_index)
            WHERE state = 'queued' AND NOT published;
        """,
    ),
    (
        3,
        "owner_key",
        """
        -- the id of the key that created the batch ('' for none): the workers send its items for it
        ALTER TABLE batches ADD COLUMN owner_key text NOT NULL DEFAULT '';
        """,
    ),
)


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Apply what this database has not had, in one transaction under an advisory lock (a second
    process starting at once waits, then finds nothing to do). Returns what was applied."""
    applied: list[str] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        done = {row["version"] for row in await connection.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        known = {version for version, _, _ in MIGRATIONS}
        if done - known:
            raise RuntimeError(
                f"batch store schema version {max(done)} is newer than this ccr-gateway knows ({max(known)}); upgrade"
            )
        for version, name, sql in MIGRATIONS:
            if version not in done:
                await connection.execute(sql)
                await connection.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(f"{version:04d}_{name}")
    return applied


def _placeholders(columns: Sequence[str], start: int = 1) -> str:
    return ", ".join(f"${n}" for n in range(start, start + len(columns)))


def _assignments(columns: Sequence[str], start: int = 1) -> str:
    return ", ".join(f"{column} = ${n}" for n, column in enumerate(columns, start=start))


_UNFINISHED = [state.value for state in UNFINISHED]
_INSERT_BATCH = f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({_placeholders(BATCH_COLUMNS)})"
_UPDATE_ITEM = f"UPDATE batch_items SET {_assignments(ITEM_CHANGES, 3)} WHERE batch_id = $1 AND item_index = $2"
_BULK_UPDATE = f"UPDATE batch_items SET {_assignments(BULK_CHANGES, 3)} WHERE batch_id = $1 AND state = $2"
_SELECT_BATCH_EXCLUSIVE = "SELECT * FROM batches WHERE id = $1 FOR UPDATE"
_SELECT_BATCH_SHARED = "SELECT * FROM batches WHERE id = $1 FOR SHARE"
_ANY_UNFINISHED = "SELECT 1 FROM batch_items WHERE batch_id = $1 AND state = ANY($2::text[]) LIMIT 1"
_UPDATE_BATCH = "UPDATE batches SET cancel_requested_at = $2, ended_at = $3, archived_at = $4 WHERE id = $1"
_INSERT_FILE = (
    f"INSERT INTO batch_files ({', '.join(FILE_COLUMNS)}, content) VALUES ({_placeholders((*FILE_COLUMNS, 'content'))})"
)


def redact_dsn(dsn: str) -> str:
    """The DSN for messages, its password masked. (extproc has one too; the rooms share no code.)"""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class PostgresBatchStore:
    """Batches in PostgreSQL through a small asyncpg pool, opened (and the schema migrated) on
    first use, so a store can be made while the database is still starting."""

    def __init__(self, dsn: str, *, max_connections: int = 4, description: str | None = None) -> None:
        self._dsn = dsn
        self._max_connections = max_connections
        self.description = description or redact_dsn(dsn)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    # -- plumbing

    async def _acquire_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._max_connections,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                )
                try:
                    async with pool.acquire() as connection:
                        await migrate(connection)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            return self._pool

    async def _read(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = await self._acquire_pool()
        async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
            return await work(connection)

    async def _write(
        self, batch_id: str, work: Callable[[asyncpg.Connection, Batch], Awaitable[T]], *, shared: bool = False
    ) -> T:
        """``work`` in one transaction, holding the batch's row lock: exclusive, or ``shared`` for
        one item's write (why: module docstring)."""
        pool = await self._acquire_pool()
        lock = _SELECT_BATCH_SHARED if shared else _SELECT_BATCH_EXCLUSIVE
        async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection, connection.transaction():
            row = await connection.fetchrow(lock, batch_id)
            if row is None:
                raise NotInStore(f"no batch {batch_id!r}")
            return await work(connection, batch_of(row))

    async def close(self) -> None:
        async with self._pool_lock:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    # -- batches

    async def create_batch(self, batch: Batch, items: Sequence[Item]) -> None:
        check_new_batch(batch, items)
        pool = await self._acquire_pool()
        async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection, connection.transaction():
            try:
                await connection.execute(_INSERT_BATCH, *batch_values(batch))
            except asyncpg.UniqueViolationError:
                raise AlreadyStored(f"batch {batch.id!r} exists") from None
            if items:  # COPY: 100,000 rows in one round trip
                await connection.copy_records_to_table(
                    "batch_items", records=[item_values(batch.id, item) for item in items], columns=ITEM_COLUMNS
                )

    async def get_batch(self, batch_id: str, *, tenant: str | None = None) -> Batch | None:
        row = await self._read(lambda connection: connection.fetchrow("SELECT * FROM batches WHERE id = $1", batch_id))
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return batch_of(row)

    async def list_batches(
        self, tenant: str, *, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> BatchPage:
        if after_id is not None and before_id is not None:
            raise both_cursors()

        async def work(connection: asyncpg.Connection) -> BatchPage:
            query, parameters, newer = "SELECT * FROM batches WHERE tenant = $1", [tenant], False
            for name, cursor in (("after_id", after_id), ("before_id", before_id)):
                if cursor is None:
                    continue
                at = await connection.fetchrow(
                    "SELECT created_at, id FROM batches WHERE id = $1 AND tenant = $2", cursor, tenant
                )
                if at is None:
                    raise unknown_cursor(name, cursor)
                newer = name == "before_id"
                query += " AND (created_at, id) > ($2, $3)" if newer else " AND (created_at, id) < ($2, $3)"
                parameters += [at["created_at"], at["id"]]
            # before_id walks toward newer batches: the nearest ones first, then the page is reversed.
            order = "created_at, id" if newer else "created_at DESC, id DESC"
            rows = await connection.fetch(
                f"{query} ORDER BY {order} LIMIT ${len(parameters) + 1}", *parameters, limit + 1
            )
            batches = [batch_of(row) for row in rows[:limit]]
            return BatchPage(batches[::-1] if newer else batches, has_more=len(rows) > limit)

        return await self._read(work)

    async def counts(self, batch_id: str) -> Counts:
        async def work(connection: asyncpg.Connection) -> Counts:
            if await connection.fetchval("SELECT 1 FROM batches WHERE id = $1", batch_id) is None:
                raise NotInStore(f"no batch {batch_id!r}")
            return await _counts(connection, batch_id)

        return await self._read(work)

    async def request_cancel(self, batch_id: str, *, now: float) -> tuple[Batch, CancelResult]:
        async def work(connection: asyncpg.Connection, stored: Batch) -> tuple[Batch, CancelResult]:
            batch, result = model.request_cancel(stored, now=now)
            if result is CancelResult.STARTED:
                await _write_batch(connection, batch)
                await _apply_bulk(connection, batch_id, canceling_all(now))
                batch = await _settle(connection, batch, now)
            return batch, result

        return await self._write(batch_id, work)

    async def expire_due(self, *, now: float, limit: int = EXPIRY_SWEEP_LIMIT) -> list[str]:
        rows = await self._read(
            lambda connection: connection.fetch(
                "SELECT id FROM batches WHERE ended_at IS NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
                now,
                limit,
            )
        )

        async def expire(connection: asyncpg.Connection, batch: Batch) -> bool:
            if not model.is_due_to_expire(batch, now=now):
                return False  # ended since the candidates were read
            await _apply_bulk(connection, batch.id, expiring_all(now))
            await _settle(connection, batch, now)
            return True

        expired = []
        for row in rows:
            try:
                if await self._write(row["id"], expire):
                    expired.append(row["id"])
            except NotInStore:
                continue  # deleted since the candidates were read
        return expired

    async def settle(self, batch_id: str, *, now: float) -> Batch:
        return await self._write(batch_id, lambda connection, batch: _settle(connection, batch, now))

    async def archive(self, batch_id: str, *, now: float) -> Batch:
        async def work(connection: asyncpg.Connection, batch: Batch) -> Batch:
            archived = model.archive(batch, now=now)
            if archived is not batch:
                await _write_batch(connection, archived)
                # Results are gone; states stay, so counts still derive from items.
                await connection.execute(
                    "UPDATE batch_items SET body = NULL, outcome_body = NULL WHERE batch_id = $1", batch_id
                )
            return archived

        return await self._write(batch_id, work)

    async def delete_batch(self, batch_id: str) -> bool:
        status = await self._read(lambda connection: connection.execute("DELETE FROM batches WHERE id = $1", batch_id))
        return status != "DELETE 0"  # the items go with it (ON DELETE CASCADE)

    async def active_batches(self) -> list[ActiveBatch]:
        rows = await self._read(
            lambda connection: connection.fetch(
                "SELECT id, tenant, lane, (SELECT count(*) FROM batch_items i WHERE i.batch_id = b.id AND"
                " i.state = $1) AS queued FROM batches b WHERE ended_at IS NULL AND cancel_requested_at IS NULL",
                ItemState.QUEUED.value,
            )
        )
        return [ActiveBatch(row["tenant"], row["id"], row["lane"], row["queued"]) for row in rows]

    # -- items

    async def get_item(self, batch_id: str, index: int) -> Item | None:
        row = await self._read(
            lambda connection: connection.fetchrow(
                "SELECT * FROM batch_items WHERE batch_id = $1 AND item_index = $2", batch_id, index
            )
        )
        return None if row is None else item_of(row)

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> list[Item]:
        unpublished = " AND NOT published" if unpublished_only else ""

        async def work(connection: asyncpg.Connection) -> list[Item]:
            if await connection.fetchval("SELECT 1 FROM batches WHERE id = $1", batch_id) is None:
                raise NotInStore(f"no batch {batch_id!r}")
            rows = await connection.fetch(
                f"SELECT * FROM batch_items WHERE batch_id = $1 AND state = $2 AND item_index > $3{unpublished}"
                " ORDER BY item_index LIMIT $4",
                batch_id,
                ItemState.QUEUED.value,
                after_index,
                limit,
            )
            return [item_of(row) for row in rows]

        return await self._read(work)

    async def mark_published(self, batch_id: str, indexes: Collection[int]) -> None:
        async def work(connection: asyncpg.Connection, batch: Batch) -> None:
            # Under the batch's lock like every write that touches items: a multi-row UPDATE racing
            # a bulk cancel or expiry could otherwise lock their rows in another order (deadlock).
            await connection.execute(
                "UPDATE batch_items SET published = true WHERE batch_id = $1 AND item_index = ANY($2::integer[])",
                batch_id,
                sorted(indexes),
            )

        await self._write(batch_id, work)

    async def _change_item(self, batch_id: str, index: int, change: ItemChange, now: float) -> tuple[Item, Any]:
        async def work(connection: asyncpg.Connection, batch: Batch) -> tuple[Item, Any]:
            row = await connection.fetchrow(
                "SELECT * FROM batch_items WHERE batch_id = $1 AND item_index = $2 FOR UPDATE", batch_id, index
            )
            if row is None:
                raise NotInStore(f"batch {batch_id!r} has no item {index}")
            before = item_of(row)
            after, result = change(batch, before)
            if after != before:
                await connection.execute(_UPDATE_ITEM, batch_id, index, *item_changes(after))
                if after.state is ItemState.QUEUED and before.state is not ItemState.QUEUED:
                    # put back (retry_later): whoever did publishes it again (BatchStore.mark_published)
                    await connection.execute(
                        "UPDATE batch_items SET published = false WHERE batch_id = $1 AND item_index = $2",
                        batch_id,
                        index,
                    )
                if after.attempts > before.attempts:  # handed to the provider now: for monitoring
                    await connection.execute(
                        "UPDATE batch_items SET sent_at = $3 WHERE batch_id = $1 AND item_index = $2",
                        batch_id,
                        index,
                        now,
                    )
            return after, result, before

        after, result, before = await self._write(batch_id, work, shared=True)
        if after.state.final and not before.state.final:
            await self._settle_if_done(batch_id, now)
        return after, result

    async def _settle_if_done(self, batch_id: str, now: float) -> None:
        """After an item became final: end the batch if none is unfinished (module docstring)."""
        probe = await self._read(lambda connection: connection.fetchval(_ANY_UNFINISHED, batch_id, _UNFINISHED))
        if probe is None:
            await self._write(batch_id, lambda connection, batch: _settle(connection, batch, now))

    async def send_item(self, batch_id: str, index: int, *, now: float) -> tuple[Item, Dispatch]:
        return await self._change_item(batch_id, index, sending(now), now)

    async def record_item(self, batch_id: str, index: int, outcome: Outcome, *, now: float) -> tuple[Item, Recorded]:
        return await self._change_item(batch_id, index, recording(outcome, now), now)

    async def retry_item_later(self, batch_id: str, index: int, *, throttled: bool, now: float) -> Item:
        item, _ = await self._change_item(batch_id, index, retrying(throttled, now), now)
        return item

    async def expire_item(self, batch_id: str, index: int, *, now: float, reason: str | None = None) -> Item:
        item, _ = await self._change_item(batch_id, index, expiring(now, reason), now)
        return item

    async def results(self, batch_id: str, *, states: Collection[ItemState] | None = None) -> AsyncIterator[Item]:
        if await self.get_batch(batch_id) is None:
            raise NotInStore(f"no batch {batch_id!r}")
        wanted = None if states is None else [ItemState(state).value for state in states]
        query = "SELECT * FROM batch_items WHERE batch_id = $1 AND item_index > $2"
        if wanted is not None:
            query += " AND state = ANY($4::text[])"
        query += " ORDER BY item_index LIMIT $3"
        # Keyset pages (index > last seen), each its own short read: no transaction or connection
        # is held while a slow client reads, and only one page is in memory.
        last = -1
        while True:
            arguments = (batch_id, last, RESULTS_PAGE_SIZE, *(() if wanted is None else (wanted,)))
            rows = await self._read(lambda connection, arguments=arguments: connection.fetch(query, *arguments))
            for row in rows:
                yield item_of(row)
            if len(rows) < RESULTS_PAGE_SIZE:
                return
            last = rows[-1]["item_index"]

    # -- files

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        try:
            await self._read(lambda connection: connection.execute(_INSERT_FILE, *file_values(record), bytes(content)))
        except asyncpg.UniqueViolationError:
            raise AlreadyStored(f"file {record.id!r} exists") from None

    async def get_file(self, file_id: str, *, tenant: str | None = None) -> FileRecord | None:
        row = await self._read(
            lambda connection: connection.fetchrow(
                f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files WHERE id = $1", file_id
            )
        )
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return file_of(row)

    async def file_content(self, file_id: str) -> bytes | None:
        return await self._read(
            lambda connection: connection.fetchval("SELECT content FROM batch_files WHERE id = $1", file_id)
        )

    async def delete_file(self, file_id: str) -> bool:
        status = await self._read(
            lambda connection: connection.execute("DELETE FROM batch_files WHERE id = $1", file_id)
        )
        return status != "DELETE 0"

    # -- retention

    async def purge(self, *, now: float) -> Purged:
        rows = await self._read(
            lambda connection: connection.fetch(
                "SELECT * FROM batches WHERE ended_at IS NOT NULL AND archived_at IS NULL AND created_at <= $1",
                archive_cutoff(now),
            )
        )
        archived = []
        for batch in map(batch_of, rows):
            if is_due_for_archive(batch, now=now):  # the model decides; the query only narrows
                await self.archive(batch.id, now=now)
                archived.append(batch.id)
        status = await self._read(
            lambda connection: connection.execute(
                "DELETE FROM batch_files WHERE expires_at IS NOT NULL AND expires_at <= $1", now
            )
        )
        return Purged(archived, int(status.split()[-1]))


# -- inside a write's transaction ----------------------------------------------------------------


async def _counts(connection: asyncpg.Connection, batch_id: str) -> Counts:
    rows = await connection.fetch(
        "SELECT state, count(*) FROM batch_items WHERE batch_id = $1 GROUP BY state", batch_id
    )
    return Counts.from_states({row["state"]: row["count"] for row in rows})


async def _settle(connection: asyncpg.Connection, batch: Batch, now: float) -> Batch:
    """``model.settle``, in a batch-wide write (the batch's row held exclusively). While any item is
    unfinished settle changes nothing, so the counts (a scan of the batch) are read only once none
    is: checking for one unfinished item is an index probe, counting 100,000 per result would not
    be."""
    unfinished = await connection.fetchval(_ANY_UNFINISHED, batch.id, _UNFINISHED)
    if unfinished is not None:
        return batch
    settled = model.settle(batch, await _counts(connection, batch.id), now=now)
    if settled is not batch:
        await _write_batch(connection, settled)
    return settled


async def _write_batch(connection: asyncpg.Connection, batch: Batch) -> None:
    await connection.execute(_UPDATE_BATCH, batch.id, batch.cancel_requested_at, batch.ended_at, batch.archived_at)


async def _apply_bulk(connection: asyncpg.Connection, batch_id: str, changes: dict[ItemState, Item]) -> None:
    for state_before, after in changes.items():
        await connection.execute(_BULK_UPDATE, batch_id, state_before.value, *bulk_values(after))
