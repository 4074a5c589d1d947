"""What every embedded SQLite store does the same way (the key store, the local ledger, the batch
store, the audit log, the admin keys): the file opened the same way (``open_file``), one
connection used under a lock in a worker thread (``LockedConnection``), one write at a time with
the lock taken up front, and WAL switched on despite a racing opener. They live with the contract,
as ccr.v1.env_refs does: the rooms import nothing else of each other's. Standard library only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock up front, so a read-then-write never meets another writer in
    between and versions commit in order), COMMIT, or ROLLBACK. For a connection opened with
    ``isolation_level=None`` (no implicit transactions)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def switch_to_wal(connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """journal_mode = WAL, persistent: set in the file once. Processes opening a new file at the same
    moment (the workers of one `up`) can find it locked, and SQLite does not wait for the busy
    timeout on this pragma: retried here, up to that timeout."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def open_file(
    path: Path | str, *, busy_timeout_ms: int, setup: Callable[[sqlite3.Connection], None]
) -> sqlite3.Connection:
    """A connection to ``path`` as every store opens one: no implicit transactions
    (``isolation_level=None``: each write says BEGIN IMMEDIATE, ``write_transaction``), usable from
    any thread (``check_same_thread=False``: the caller makes sure it is one at a time), waiting up
    to the busy timeout for another process's lock, in WAL mode (readers never wait for the
    writer); then ``setup`` (the store's own pragmas and migrations). Closed again if any of that
    fails. The parent folder must exist."""
    connection = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        switch_to_wal(connection, busy_timeout_ms)
        setup(connection)
    except BaseException:
        connection.close()
        raise
    return connection


class LockedConnection:
    """One store's one connection: opened on first use (the parent folder made, ``open_file``
    with the store's ``setup``, rows as ``sqlite3.Row``, the file made private: 0600), then used
    from one thread at a time (a lock) inside ``asyncio.to_thread``, so a busy file never stalls
    the event loop. An error of a kind in ``errors`` becomes ``unavailable(error)`` (the store's
    own exception, raised ``from None``) when that is given; anything else passes through."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int,
        setup: Callable[[sqlite3.Connection], None],
        unavailable: Callable[[Exception], Exception] | None = None,
        errors: tuple[type[Exception], ...] = (sqlite3.Error,),
    ) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._setup = setup
        self._unavailable = unavailable
        self._errors = errors
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in a worker thread, holding the lock."""

        def locked() -> T:
            with self._lock:
                try:
                    return work(self._connect())
                except self._errors as exc:
                    if self._unavailable is None:
                        raise
                    raise self._unavailable(exc) from None

        return await asyncio.to_thread(locked)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = open_file(self.path, busy_timeout_ms=self._busy_timeout_ms, setup=self._setup)
            connection.row_factory = sqlite3.Row
            with contextlib.suppress(OSError):  # what a store keeps is nobody else's to read
                os.chmod(self.path, 0o600)
            self._connection = connection
        return self._connection

    async def close(self) -> None:
        """Close the connection if open (the next ``run`` opens it again). Idempotent."""

        def work() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        await asyncio.to_thread(work)
