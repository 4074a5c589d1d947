"""The embedded batch store: one local SQLite file, for a gateway with no PostgreSQL configured.

The tables are PostgreSQL's (batches/pg_store.py), column for column. One connection, used by one
thread at a time (a lock), inside ``asyncio.to_thread`` so a busy file never stalls the event
loop. Every write is one ``BEGIN IMMEDIATE`` transaction: SQLite has one writer at a time, across
processes too, which is exactly the serialization a batch's writes need (two workers recording
the same item: the second reads the first's outcome and gets DUPLICATE or REFUSED).

WAL lets readers (results, listings) run beside the writer. ``synchronous=NORMAL``: a process
crash loses nothing; a power cut can roll back the last commits, which puts those items back to
``queued``/``sent``, so they run again and are recorded once (the embedded in-process queue is
gone after such a crash anyway, and the feeder republishes from the store).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
from ccr.v1.sqlite_files import LockedConnection, write_transaction

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_TABLE = "batches_schema_migrations"

# Versioned: each runs once, in order. Never edit one that has shipped (a user's file ran it).
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "batches",
        """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            api TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            total INTEGER NOT NULL,
            cancel_requested_at REAL,
            ended_at REAL,
            archived_at REAL,
            metadata BLOB NOT NULL,
            input_file_id TEXT,
            failure BLOB NOT NULL
        );
        CREATE INDEX batches_tenant_newest ON batches (tenant, created_at, id);
        CREATE INDEX batches_due_to_expire ON batches (expires_at) WHERE ended_at IS NULL;
        CREATE INDEX batches_due_for_archive ON batches (created_at) WHERE ended_at IS NOT NULL AND archived_at IS NULL;
        CREATE TABLE batch_items (
            batch_id TEXT NOT NULL,
            item_index INTEGER NOT NULL,
            custom_id TEXT NOT NULL,
            body BLOB,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            throttles INTEGER NOT NULL,
            status_code INTEGER,
            outcome_body BLOB,
            request_id TEXT,
            reason TEXT,
            sent_at REAL,
            finished_at REAL,
            PRIMARY KEY (batch_id, item_index)
        );
        CREATE INDEX batch_items_by_state ON batch_items (batch_id, state, item_index);
        CREATE TABLE batch_files (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            content BLOB NOT NULL
        );
        CREATE INDEX batch_files_expiry ON batch_files (expires_at) WHERE expires_at IS NOT NULL
        """,
    ),
    (
        2,
        "lanes_and_published",
        """
        ALTER TABLE batches ADD COLUMN lane TEXT NOT NULL DEFAULT 'batch';
        ALTER TABLE batch_items ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX batch_items_unpublished ON batch_items (batch_id, item_index) WHERE state = 'queued' AND published = 0
        """,
    ),
    (3, "owner_key", "ALTER TABLE batches ADD COLUMN owner_key TEXT NOT NULL DEFAULT ''"),
)

_UNFINISHED = tuple(state.value for state in UNFINISHED)
_INSERT_ITEM = f"INSERT INTO batch_items ({', '.join(ITEM_COLUMNS)}) VALUES ({', '.join('?' for _ in ITEM_COLUMNS)})"
_UPDATE_ITEM = (
    f"UPDATE batch_items SET {', '.join(f'{c} = ?' for c in ITEM_CHANGES)} WHERE batch_id = ? AND item_index = ?"
)
_BULK_UPDATE = f"UPDATE batch_items SET {', '.join(f'{c} = ?' for c in BULK_CHANGES)} WHERE batch_id = ? AND state = ?"
_UPDATE_BATCH = "UPDATE batches SET cancel_requested_at = ?, ended_at = ?, archived_at = ? WHERE id = ?"


class SqliteBatchStore:
    """Batches, items and input files in one SQLite file (created and migrated on first use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self.description = str(self.path)
        # Prompts and answers: nobody else's to read (LockedConnection makes the file 0600).
        # sqlite3 errors pass through unmapped.
        self._connection = LockedConnection(self.path, busy_timeout_ms=BUSY_TIMEOUT_MS, setup=_setup)

    # -- plumbing

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._connection.run(work)

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def in_transaction(connection: sqlite3.Connection) -> T:
            with write_transaction(connection):
                return work(connection)

        return await self._run(in_transaction)

    async def close(self) -> None:
        await self._connection.close()

    # -- batches

    async def create_batch(self, batch: Batch, items: Sequence[Item]) -> None:
        check_new_batch(batch, items)

        def work(connection: sqlite3.Connection) -> None:
            marks = ", ".join("?" for _ in BATCH_COLUMNS)
            try:
                connection.execute(
                    f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({marks})", batch_values(batch)
                )
            except sqlite3.IntegrityError:
                raise AlreadyStored(f"batch {batch.id!r} exists") from None
            connection.executemany(_INSERT_ITEM, (item_values(batch.id, item) for item in items))

        await self._write(work)

    async def get_batch(self, batch_id: str, *, tenant: str | None = None) -> Batch | None:
        def work(connection: sqlite3.Connection) -> Batch | None:
            batch = _find_batch(connection, batch_id)
            return None if batch is None or (tenant is not None and batch.tenant != tenant) else batch

        return await self._run(work)

    async def list_batches(
        self, tenant: str, *, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> BatchPage:
        if after_id is not None and before_id is not None:
            raise both_cursors()

        def work(connection: sqlite3.Connection) -> BatchPage:
            query, parameters, newer = "SELECT * FROM batches WHERE tenant = ?", [tenant], False
            for name, cursor in (("after_id", after_id), ("before_id", before_id)):
                if cursor is None:
                    continue
                at = connection.execute(
                    "SELECT created_at, id FROM batches WHERE id = ? AND tenant = ?", (cursor, tenant)
                ).fetchone()
                if at is None:
                    raise unknown_cursor(name, cursor)
                newer = name == "before_id"
                query += " AND (created_at, id) > (?, ?)" if newer else " AND (created_at, id) < (?, ?)"
                parameters += [at["created_at"], at["id"]]
            # before_id walks toward newer batches: the nearest ones first, then the page is reversed.
            query += " ORDER BY created_at, id LIMIT ?" if newer else " ORDER BY created_at DESC, id DESC LIMIT ?"
            rows = connection.execute(query, [*parameters, limit + 1]).fetchall()
            batches = [batch_of(row) for row in rows[:limit]]
            return BatchPage(batches[::-1] if newer else batches, has_more=len(rows) > limit)

        return await self._run(work)

    async def counts(self, batch_id: str) -> Counts:
        def work(connection: sqlite3.Connection) -> Counts:
            _load_batch(connection, batch_id)
            return _counts(connection, batch_id)

        return await self._run(work)

    async def request_cancel(self, batch_id: str, *, now: float) -> tuple[Batch, CancelResult]:
        def work(connection: sqlite3.Connection) -> tuple[Batch, CancelResult]:
            batch, result = model.request_cancel(_load_batch(connection, batch_id), now=now)
            if result is CancelResult.STARTED:
                _write_batch(connection, batch)
                _apply_bulk(connection, batch_id, canceling_all(now))
                batch = _settle(connection, batch, now)
            return batch, result

        return await self._write(work)

    async def expire_due(self, *, now: float, limit: int = EXPIRY_SWEEP_LIMIT) -> list[str]:
        def candidates(connection: sqlite3.Connection) -> list[str]:
            rows = connection.execute(
                "SELECT id FROM batches WHERE ended_at IS NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (now, limit),
            )
            return [row["id"] for row in rows]

        def expire(batch_id: str) -> Callable[[sqlite3.Connection], bool]:
            def work(connection: sqlite3.Connection) -> bool:
                batch = _find_batch(connection, batch_id)
                if batch is None or not model.is_due_to_expire(batch, now=now):
                    return False  # ended (or deleted) since the candidates were read
                _apply_bulk(connection, batch_id, expiring_all(now))
                _settle(connection, batch, now)
                return True

            return work

        return [batch_id for batch_id in await self._run(candidates) if await self._write(expire(batch_id))]

    async def settle(self, batch_id: str, *, now: float) -> Batch:
        return await self._write(lambda connection: _settle(connection, _load_batch(connection, batch_id), now))

    async def archive(self, batch_id: str, *, now: float) -> Batch:
        def work(connection: sqlite3.Connection) -> Batch:
            batch = _load_batch(connection, batch_id)
            archived = model.archive(batch, now=now)
            if archived is not batch:
                _write_batch(connection, archived)
                # Results are gone; states stay, so counts still derive from items.
                connection.execute(
                    "UPDATE batch_items SET body = NULL, outcome_body = NULL WHERE batch_id = ?", (batch_id,)
                )
            return archived

        return await self._write(work)

    async def delete_batch(self, batch_id: str) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM batch_items WHERE batch_id = ?", (batch_id,))
            return connection.execute("DELETE FROM batches WHERE id = ?", (batch_id,)).rowcount > 0

        return await self._write(work)

    async def active_batches(self) -> list[ActiveBatch]:
        def work(connection: sqlite3.Connection) -> list[ActiveBatch]:
            rows = connection.execute(
                "SELECT id, tenant, lane, (SELECT count(*) FROM batch_items i WHERE i.batch_id = b.id AND"
                " i.state = ?) AS queued FROM batches b WHERE ended_at IS NULL AND cancel_requested_at IS NULL",
                (ItemState.QUEUED.value,),
            )
            return [ActiveBatch(row["tenant"], row["id"], row["lane"], row["queued"]) for row in rows]

        return await self._run(work)

    # -- items

    async def get_item(self, batch_id: str, index: int) -> Item | None:
        return await self._run(lambda connection: _find_item(connection, batch_id, index))

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> list[Item]:
        unpublished = " AND published = 0" if unpublished_only else ""

        def work(connection: sqlite3.Connection) -> list[Item]:
            _load_batch(connection, batch_id)
            rows = connection.execute(
                f"SELECT * FROM batch_items WHERE batch_id = ? AND state = ? AND item_index > ?{unpublished}"
                " ORDER BY item_index LIMIT ?",
                (batch_id, ItemState.QUEUED.value, after_index, limit),
            )
            return [item_of(row) for row in rows]

        return await self._run(work)

    async def mark_published(self, batch_id: str, indexes: Collection[int]) -> None:
        def work(connection: sqlite3.Connection) -> None:
            _load_batch(connection, batch_id)
            connection.executemany(
                "UPDATE batch_items SET published = 1 WHERE batch_id = ? AND item_index = ?",
                ((batch_id, index) for index in indexes),
            )

        await self._write(work)

    async def _change_item(self, batch_id: str, index: int, change: ItemChange, now: float) -> tuple[Item, Any]:
        def work(connection: sqlite3.Connection) -> tuple[Item, Any]:
            batch = _load_batch(connection, batch_id)
            before = _find_item(connection, batch_id, index)
            if before is None:
                raise NotInStore(f"batch {batch_id!r} has no item {index}")
            after, result = change(batch, before)
            if after != before:
                connection.execute(_UPDATE_ITEM, (*item_changes(after), batch_id, index))
                if after.state is ItemState.QUEUED and before.state is not ItemState.QUEUED:
                    # put back (retry_later): whoever did publishes it again (BatchStore.mark_published)
                    connection.execute(
                        "UPDATE batch_items SET published = 0 WHERE batch_id = ? AND item_index = ?",
                        (batch_id, index),
                    )
                if after.attempts > before.attempts:  # handed to the provider now: for monitoring
                    connection.execute(
                        "UPDATE batch_items SET sent_at = ? WHERE batch_id = ? AND item_index = ?",
                        (now, batch_id, index),
                    )
                _settle(connection, batch, now)
            return after, result

        return await self._write(work)

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
        await self._run(lambda connection: _load_batch(connection, batch_id))
        wanted = [ItemState(state).value for state in states] if states is not None else None
        # Keyset pages (index > last seen), each its own short read: no transaction is held open
        # while a slow client reads, and only one page is in memory.
        last = -1
        while True:
            page = await self._run(lambda connection, after=last: _results_page(connection, batch_id, wanted, after))
            for item in page:
                yield item
            if len(page) < RESULTS_PAGE_SIZE:
                return
            last = page[-1].index

    # -- files

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        def work(connection: sqlite3.Connection) -> None:
            columns = (*FILE_COLUMNS, "content")
            try:
                connection.execute(
                    f"INSERT INTO batch_files ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    (*file_values(record), bytes(content)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyStored(f"file {record.id!r} exists") from None

        await self._write(work)

    async def get_file(self, file_id: str, *, tenant: str | None = None) -> FileRecord | None:
        def work(connection: sqlite3.Connection) -> FileRecord | None:
            row = connection.execute(
                f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files WHERE id = ?", (file_id,)
            ).fetchone()
            return None if row is None or (tenant is not None and row["tenant"] != tenant) else file_of(row)

        return await self._run(work)

    async def file_content(self, file_id: str) -> bytes | None:
        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute("SELECT content FROM batch_files WHERE id = ?", (file_id,)).fetchone()
            return None if row is None else bytes(row["content"])

        return await self._run(work)

    async def delete_file(self, file_id: str) -> bool:
        return await self._write(
            lambda connection: connection.execute("DELETE FROM batch_files WHERE id = ?", (file_id,)).rowcount > 0
        )

    # -- retention

    async def purge(self, *, now: float) -> Purged:
        def candidates(connection: sqlite3.Connection) -> list[Batch]:
            rows = connection.execute(
                "SELECT * FROM batches WHERE ended_at IS NOT NULL AND archived_at IS NULL AND created_at <= ?",
                (archive_cutoff(now),),
            )
            return [batch_of(row) for row in rows]

        archived = []
        for batch in await self._run(candidates):
            if is_due_for_archive(batch, now=now):  # the model decides; the query only narrows
                await self.archive(batch.id, now=now)
                archived.append(batch.id)
        deleted = await self._write(
            lambda connection: (
                connection.execute(
                    "DELETE FROM batch_files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
                ).rowcount
            )
        )
        return Purged(archived, deleted)


# -- queries inside a connection's thread ------------------------------------------------------------


def _find_batch(connection: sqlite3.Connection, batch_id: str) -> Batch | None:
    row = connection.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
    return None if row is None else batch_of(row)


def _load_batch(connection: sqlite3.Connection, batch_id: str) -> Batch:
    batch = _find_batch(connection, batch_id)
    if batch is None:
        raise NotInStore(f"no batch {batch_id!r}")
    return batch


def _find_item(connection: sqlite3.Connection, batch_id: str, index: int) -> Item | None:
    row = connection.execute(
        "SELECT * FROM batch_items WHERE batch_id = ? AND item_index = ?", (batch_id, index)
    ).fetchone()
    return None if row is None else item_of(row)


def _counts(connection: sqlite3.Connection, batch_id: str) -> Counts:
    rows = connection.execute("SELECT state, count(*) FROM batch_items WHERE batch_id = ? GROUP BY state", (batch_id,))
    return Counts.from_states({state: count for state, count in rows})


def _settle(connection: sqlite3.Connection, batch: Batch, now: float) -> Batch:
    """``model.settle`` inside the write that changed items. While any item is unfinished settle
    changes nothing, so the counts (a scan of the batch) are read only once none is: checking for
    one unfinished item is an index probe, counting 100,000 per result would not be."""
    unfinished = connection.execute(
        f"SELECT 1 FROM batch_items WHERE batch_id = ? AND state IN ({', '.join('?' for _ in _UNFINISHED)}) LIMIT 1",
        (batch.id, *_UNFINISHED),
    ).fetchone()
    if unfinished is not None:
        return batch
    settled = model.settle(batch, _counts(connection, batch.id), now=now)
    if settled is not batch:
        _write_batch(connection, settled)
    return settled


def _write_batch(connection: sqlite3.Connection, batch: Batch) -> None:
    connection.execute(_UPDATE_BATCH, (batch.cancel_requested_at, batch.ended_at, batch.archived_at, batch.id))


def _apply_bulk(connection: sqlite3.Connection, batch_id: str, changes: dict[ItemState, Item]) -> None:
    for state_before, after in changes.items():
        connection.execute(_BULK_UPDATE, (*bulk_values(after), batch_id, state_before.value))


def _results_page(connection: sqlite3.Connection, batch_id: str, states: list[str] | None, after: int) -> list[Item]:
    query, parameters = "SELECT * FROM batch_items WHERE batch_id = ? AND item_index > ?", [batch_id, after]
    if states is not None:
        query += f" AND state IN ({', '.join('?' for _ in states)})"
        parameters += states
    rows = connection.execute(f"{query} ORDER BY item_index LIMIT ?", [*parameters, RESULTS_PAGE_SIZE])
    return [item_of(row) for row in rows]


def _setup(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA synchronous = NORMAL")  # why: the module docstring
    _migrate(connection)


def _migrate(connection: sqlite3.Connection) -> None:
    with write_transaction(connection):
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in connection.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        known = {version for version, _, _ in MIGRATIONS}
        if done - known:
            raise sqlite3.DatabaseError(
                f"batch store schema version {max(done)} is newer than this ccr-gateway knows ({max(known)}); upgrade"
            )
        for version, name, sql in MIGRATIONS:
            if version not in done:
                for statement in filter(str.strip, sql.split(";")):
                    connection.execute(statement)
                connection.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?, ?)", (version, name, time.time()))
