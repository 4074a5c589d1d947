"""ccr.v1.sqlite_files: the file opened as every store opens it, and the one locked connection."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from ccr.v1.sqlite_files import LockedConnection, open_file


class Unavailable(Exception):
    pass


def _create_table(connection: sqlite3.Connection) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS things (name TEXT)")


def test_open_file_is_in_wal_mode_without_implicit_transactions_and_runs_setup(tmp_path: Path) -> None:
    connection = open_file(tmp_path / "a.db", busy_timeout_ms=1234, setup=_create_table)
    try:
        assert connection.isolation_level is None
        assert connection.row_factory is None  # rows stay tuples: the ledger's readers rely on it
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert connection.execute("SELECT count(*) FROM things").fetchone() == (0,)
    finally:
        connection.close()


def test_open_file_closes_the_connection_when_setup_fails(tmp_path: Path) -> None:
    opened: list[sqlite3.Connection] = []

    def setup(connection: sqlite3.Connection) -> None:
        opened.append(connection)
        raise sqlite3.DatabaseError("no")

    with pytest.raises(sqlite3.DatabaseError, match="no"):
        open_file(tmp_path / "a.db", busy_timeout_ms=1000, setup=setup)
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")


async def test_nothing_is_opened_until_the_first_run_which_makes_the_folders(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"
    locked = LockedConnection(path, busy_timeout_ms=1000, setup=_create_table)
    assert not path.parent.exists()
    await locked.run(lambda connection: connection.execute("INSERT INTO things VALUES ('a')"))
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await locked.close()


async def test_the_connection_is_wal_with_the_busy_timeout_and_named_rows(tmp_path: Path) -> None:
    locked = LockedConnection(tmp_path / "store.db", busy_timeout_ms=4321, setup=_create_table)

    def look(connection: sqlite3.Connection) -> tuple[str, int, object, object]:
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
        timeout = connection.execute("PRAGMA busy_timeout").fetchone()[0]
        row = connection.execute("SELECT 'x' AS name").fetchone()
        return journal, timeout, row["name"], connection.isolation_level

    assert await locked.run(look) == ("wal", 4321, "x", None)
    await locked.close()


async def test_setup_runs_once_per_connection(tmp_path: Path) -> None:
    calls: list[int] = []

    def setup(connection: sqlite3.Connection) -> None:
        calls.append(1)
        _create_table(connection)

    locked = LockedConnection(tmp_path / "store.db", busy_timeout_ms=1000, setup=setup)
    for name in "abc":
        await locked.run(lambda connection, name=name: connection.execute("INSERT INTO things VALUES (?)", (name,)))
    assert len(calls) == 1
    await locked.close()
    assert await locked.run(lambda connection: connection.execute("SELECT count(*) FROM things").fetchone()[0]) == 3
    assert len(calls) == 2  # reopened after close: set up again
    await locked.close()


async def test_concurrent_runs_are_serialized(tmp_path: Path) -> None:
    locked = LockedConnection(tmp_path / "store.db", busy_timeout_ms=1000, setup=_create_table)
    inside, most = 0, 0
    guard = threading.Lock()

    def work(connection: sqlite3.Connection) -> None:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.01)
        connection.execute("INSERT INTO things VALUES ('x')")
        with guard:
            inside -= 1

    await asyncio.gather(*(locked.run(work) for _ in range(8)))
    assert most == 1
    assert await locked.run(lambda connection: connection.execute("SELECT count(*) FROM things").fetchone()[0]) == 8
    await locked.close()


async def test_sqlite_errors_become_the_stores_own_without_a_chained_cause(tmp_path: Path) -> None:
    locked = LockedConnection(
        tmp_path / "store.db",
        busy_timeout_ms=1000,
        setup=_create_table,
        unavailable=lambda exc: Unavailable(f"store: {exc}"),
    )
    with pytest.raises(Unavailable, match="store: no such table: missing") as caught:
        await locked.run(lambda connection: connection.execute("SELECT * FROM missing"))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(KeyError):  # not a sqlite3 error: the store's own business
        await locked.run(lambda connection: {}["nope"])
    await locked.close()


async def test_without_a_mapping_sqlite_errors_pass_through(tmp_path: Path) -> None:
    locked = LockedConnection(tmp_path / "store.db", busy_timeout_ms=1000, setup=_create_table)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await locked.run(lambda connection: connection.execute("SELECT * FROM missing"))
    await locked.close()


async def test_errors_chooses_what_is_mapped_such_as_a_folder_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / "store.db"
    plain = LockedConnection(path, busy_timeout_ms=1000, setup=_create_table, unavailable=Unavailable)
    with pytest.raises(OSError):
        await plain.run(lambda connection: None)
    mapped = LockedConnection(
        path, busy_timeout_ms=1000, setup=_create_table, unavailable=Unavailable, errors=(sqlite3.Error, OSError)
    )
    with pytest.raises(Unavailable):
        await mapped.run(lambda connection: None)


async def test_a_failed_setup_is_tried_again_on_the_next_run(tmp_path: Path) -> None:
    attempts: list[sqlite3.Connection] = []

    def setup(connection: sqlite3.Connection) -> None:
        attempts.append(connection)
        if len(attempts) == 1:
            raise sqlite3.DatabaseError("schema from the future")
        _create_table(connection)

    locked = LockedConnection(tmp_path / "store.db", busy_timeout_ms=1000, setup=setup, unavailable=Unavailable)
    with pytest.raises(Unavailable, match="schema from the future"):
        await locked.run(lambda connection: None)
    with pytest.raises(sqlite3.ProgrammingError):  # the failed one was closed
        attempts[0].execute("SELECT 1")
    assert await locked.run(lambda connection: connection.execute("SELECT count(*) FROM things").fetchone()[0]) == 0
    assert len(attempts) == 2
    await locked.close()


async def test_close_is_idempotent_and_fine_before_any_run(tmp_path: Path) -> None:
    locked = LockedConnection(tmp_path / "store.db", busy_timeout_ms=1000, setup=_create_table)
    await locked.close()
    assert not (tmp_path / "store.db").exists()
    kept: list[sqlite3.Connection] = []
    await locked.run(kept.append)
    await locked.close()
    await locked.close()
    with pytest.raises(sqlite3.ProgrammingError):
        kept[0].execute("SELECT 1")
