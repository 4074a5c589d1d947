"""What every embedded SQLite store does the same way (the key store, the local ledger, the batch
store): one write at a time with the lock taken up front, and WAL switched on despite a racing
opener. They live with the contract, as ccr.v1.env_refs does: the rooms import nothing else of each
other's. Standard library only."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator


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
