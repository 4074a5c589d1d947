"""The embedded ledger: usage records in a local SQLite file, for a gateway with no broker and no
PostgreSQL configured (`ccr-gateway up` on a laptop still gets spend reports).

The table is PostgreSQL's ``usage_records``, column for column (the record's field names), with
``time`` as the record's own ISO 8601 UTC text (fixed width, so text order is time order) and the
primary key ``(request_id, time)``: every write is ``INSERT OR IGNORE``, so a record written twice is
one row. ``db import-sqlite`` later moves these rows into PostgreSQL unchanged.

Several ext_proc worker processes write the same file at once, each through its own connection:
WAL lets readers (``usage report``) run beside the writer, and the busy timeout makes a writer wait
its turn for the one write lock instead of failing.

``synchronous=FULL``: every commit is fsync'd. A sink commits one batch at a time (at most a few per
second), so this costs one fsync per batch, not per request. NORMAL would skip it, and in WAL mode a
power cut can then roll back every commit since the last checkpoint (up to ~1000 pages: thousands
of records), far more than the one batch a sink holds in memory; for a ledger that is money, FULL.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

from ccr.v1.sqlite_files import open_file
from ccr.v1.usage_record import FIELDS, UsageRecord

log = logging.getLogger("ccr.ledger.local")

BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_TABLE = "ledger_schema_migrations"

# Versioned schema: each entry runs once, in order, recorded in ledger_schema_migrations. Add new
# versions at the end; never edit one that has shipped (a user's file has already run it).
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "usage_records",
        """
        CREATE TABLE usage_records (
            request_id TEXT NOT NULL,
            time TEXT NOT NULL,
            client_api TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            requested_model TEXT NOT NULL,
            status INTEGER NOT NULL,
            stream INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cache_creation_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            usage_source TEXT NOT NULL,
            duration_ms REAL NOT NULL,
            tenant TEXT,
            key_id TEXT,
            scenario TEXT,
            provider TEXT,
            model TEXT,
            attempts INTEGER NOT NULL,
            error_type TEXT,
            ttfb_ms REAL,
            session_id TEXT,
            cache TEXT,
            PRIMARY KEY (request_id, time)
        );
        CREATE INDEX usage_records_time ON usage_records (time);
        """,
    ),
    (
        2,
        "cost_avoided",
        # REAL like cost_usd (reports sum both as whole 1e-10 dollars); the rows already there are 0.
        "ALTER TABLE usage_records ADD COLUMN cost_avoided_usd REAL NOT NULL DEFAULT 0.0",
    ),
    (3, "batch_id", "ALTER TABLE usage_records ADD COLUMN batch_id TEXT"),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_INSERT = f"INSERT OR IGNORE INTO usage_records ({', '.join(FIELDS)}) VALUES ({', '.join('?' for _ in FIELDS)})"


def default_ledger_path() -> Path:
    """``$XDG_DATA_HOME/ccr-gateway/ledger.db``, i.e. ``~/.local/share/ccr-gateway/ledger.db``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ccr-gateway" / "ledger.db"


def connect(path: Path | str, *, create: bool = True) -> sqlite3.Connection:
    """A connection to the ledger at ``path`` with the schema at its latest version (created or
    migrated here, once, whichever process gets there first). ``create=False``: a missing file is
    FileNotFoundError instead of a new empty ledger (for readers, which should say so)."""
    path = Path(path).expanduser()
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no ledger at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
    # open_file: each write says BEGIN IMMEDIATE itself; readers hand a connection from thread to
    # thread (never at once). Rows stay tuples (no row_factory).
    return open_file(path, busy_timeout_ms=BUSY_TIMEOUT_MS, setup=_setup)


def _setup(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA synchronous = FULL")  # per connection: why FULL, module docstring
    migrate(connection)


def _applied_versions(connection: sqlite3.Connection) -> set[int]:
    """The migrations the file has run ({} for a new file); RuntimeError for a file from a newer
    ccr-gateway, whose schema this one does not know."""
    exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,))
    if exists.fetchone() is None:
        return set()
    done = {row[0] for row in connection.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
    newer = sorted(done - {version for version, _, _ in MIGRATIONS})
    if newer:
        raise RuntimeError(
            f"the ledger's schema is version {newer[-1]}, newer than this ccr-gateway knows ({SCHEMA_VERSION}); upgrade ccr-gateway"
        )
    return done


def migrate(connection: sqlite3.Connection) -> list[int]:
    """Run the migrations the file has not run yet; returns their versions. Up to date (every
    open but the first): a read, no lock. Otherwise under BEGIN IMMEDIATE, looking again once
    the lock is held, so two processes opening a new file at once do not both create the table."""
    if len(_applied_versions(connection)) == len(MIGRATIONS):
        return []
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        done = _applied_versions(connection)
        applied = []
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            for statement in filter(str.strip, sql.split(";")):
                connection.execute(statement)
            connection.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (version, name),
            )
            applied.append(version)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            connection.execute("ROLLBACK")
        raise
    return applied


_ROW = operator.attrgetter(*FIELDS)


def row_of(record: UsageRecord) -> tuple[object, ...]:
    """A record as the INSERT's parameters, in FIELDS' order (one C call: a ledger writes one per
    request). ``stream`` goes as the bool it is: sqlite3 binds a bool as the integer 0 or 1."""
    return _ROW(record)


def write_records(connection: sqlite3.Connection, records: Iterable[UsageRecord]) -> int:
    """One transaction; returns how many rows were new (the rest were already there)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        before = connection.total_changes
        connection.executemany(_INSERT, (row_of(record) for record in records))
        inserted = connection.total_changes - before
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            connection.execute("ROLLBACK")
        raise
    return inserted


class SqliteSink:
    """A UsageSink (extproc.usage_sink) writing to the local ledger.

    ``put`` appends to an in-memory queue and returns; one background thread, owning its own
    connection, writes what has queued up in batches of up to ``batch_size`` every
    ``flush_interval`` seconds (sooner when a batch is full). A batch that fails for a passing
    reason (the write lock held past the busy timeout, a full disk) is kept and retried; a record
    SQLite refuses outright is logged and dropped so that it cannot hold back the others. Past
    ``max_queued`` records held, new ones are dropped and counted rather than growing without bound.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_queued: int = 100_000,
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_ledger_path()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queued = max_queued
        self.written = 0  # rows inserted
        self.duplicates = 0  # records already in the ledger (a replay)
        self.dropped = 0  # records refused: the queue was full, or SQLite would not take them
        self._queue: deque[UsageRecord] = deque()
        self._wake = threading.Condition()
        self._in_flight = 0  # records taken off the queue, not yet committed
        self._flush_requested = False
        self._stopping = False
        # Opened (and migrated) here, in the caller's thread: a bad path fails the worker's start.
        self._connection = connect(self.path)
        self._thread = threading.Thread(target=self._run, name="ledger-sqlite", daemon=True)
        self._thread.start()

    def put(self, records: Sequence[UsageRecord]) -> None:
        try:
            with self._wake:
                if self._stopping:
                    self._note_dropped(len(records), "the sink is closed")
                    return
                room = max(self.max_queued - len(self._queue) - self._in_flight, 0)
                if room < len(records):
                    self._note_dropped(len(records) - room, "the queue is full")
                    records = records[:room]
                self._queue.extend(records)
                if len(self._queue) >= self.batch_size:
                    self._wake.notify_all()
        except Exception:  # the request path must never see the ledger fail
            log.exception("ledger: could not queue usage records")

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything put so far is committed (or ``timeout``); True if it was.
        For tests and synchronous callers, never from the event loop."""
        deadline = time.monotonic() + timeout
        with self._wake:
            self._flush_requested = True
            self._wake.notify_all()
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._wake.wait(min(remaining, 0.05))
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the thread, close the file."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("ledger: %d usage records not yet written to %s after %ss", len(self._queue), self.path, timeout)
            return
        self._connection.close()

    def _note_dropped(self, count: int, why: str) -> None:
        # At the first drop and then every 1000th: not a line per request while the disk is full.
        if self.dropped == 0 or self.dropped // 1000 != (self.dropped + count) // 1000:
            log.error("ledger: dropping usage records (%s); %d dropped so far", why, self.dropped + count)
        self.dropped += count

    def _take_batch(self) -> list[UsageRecord] | None:
        """The next batch to write, after waiting for a full one or the interval; [] for nothing
        yet; None when stopping with nothing left."""
        with self._wake:
            while not (self._stopping or self._flush_requested) and len(self._queue) < self.batch_size:
                if not self._wake.wait(self.flush_interval):
                    break
            if not self._queue:
                self._flush_requested = False
                return None if self._stopping else []
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._in_flight = len(batch)
            return batch

    def _run(self) -> None:
        failures = 0
        while (batch := self._take_batch()) is not None:
            if not batch:
                continue
            try:
                inserted, refused = write_records(self._connection, batch), 0
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, I/O
                failures += 1
                log.error("ledger: writing %d usage records to %s failed (%s); will retry", len(batch), self.path, exc)
                with self._wake:
                    self._queue.extendleft(reversed(batch))  # back at the front, in their order
                    self._in_flight = 0
                    if self._stopping and failures >= 3:
                        log.error("ledger: stopping; %d usage records not written", len(self._queue))
                        return
                time.sleep(min(0.1 * 2**failures, 5.0))
                continue
            except Exception:  # a record SQLite will never take: find it, write the rest
                inserted, refused = self._write_one_by_one(batch)
            failures = 0
            with self._wake:
                self.written += inserted
                self.duplicates += len(batch) - inserted - refused
                if refused:
                    self._note_dropped(refused, "SQLite refused them")
                self._in_flight = 0
                self._wake.notify_all()

    def _write_one_by_one(self, batch: list[UsageRecord]) -> tuple[int, int]:
        inserted = refused = 0
        for record in batch:
            try:
                inserted += write_records(self._connection, [record])
            except Exception:
                log.exception("ledger: usage record %s %s refused", record.request_id, record.time)
                refused += 1
        return inserted, refused
