"""ledger.local: the SQLite ledger and the sink ext_proc workers write it through."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from ccr.v1.usage_record import FIELDS
from ledger import local
from ledger.local import SqliteSink, connect, default_ledger_path, write_records
from ledger.reports import record_from_row
from tests.unit.ledger_records import make_record


def stored(path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM usage_records ORDER BY time, request_id").fetchall()


def test_the_default_path_is_under_the_users_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_ledger_path() == Path.home() / ".local/share/ccr-gateway/ledger.db"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_ledger_path() == tmp_path / "ccr-gateway/ledger.db"


def test_first_open_creates_the_directories_and_the_versioned_schema(tmp_path):
    path = tmp_path / "a" / "b" / "ledger.db"
    connection = connect(path)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(usage_records)")]
    primary_key = [
        row[1] for row in sorted(connection.execute("PRAGMA table_info(usage_records)"), key=lambda r: r[5]) if row[5]
    ]
    versions = [row[0] for row in connection.execute("SELECT version FROM ledger_schema_migrations")]
    assert tuple(columns) == FIELDS
    assert primary_key == ["request_id", "time"]
    assert versions == [version for version, _, _ in local.MIGRATIONS]
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == local.BUSY_TIMEOUT_MS
    connection.close()
    assert local.migrate(connect(path)) == []  # a second open runs nothing


def test_a_ledger_from_before_cost_avoided_and_batch_id_gets_the_columns_and_keeps_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "ledger.db"
    monkeypatch.setattr(local, "MIGRATIONS", local.MIGRATIONS[:1])  # the file as the version before made it
    old = connect(path)
    row = dict(zip(FIELDS, local.row_of(make_record(0, cache="hit")), strict=True))
    del row["cost_avoided_usd"], row["batch_id"]  # fields that version did not have
    old.execute(
        f"INSERT INTO usage_records ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values())
    )
    old.close()
    monkeypatch.undo()

    reopened = sqlite3.connect(path, isolation_level=None)
    assert local.migrate(reopened) == [2, 3]
    assert local.migrate(reopened) == []
    hit = make_record(1, cache="hit", cost_usd=0.0, cost_avoided_usd=0.0042, batch_id="msgbatch_1")
    assert write_records(reopened, [hit]) == 1
    reopened.close()
    before, after = (record_from_row(row) for row in stored(path))
    assert before == make_record(0, cache="hit") and before.cost_avoided_usd == 0.0 and before.batch_id is None
    assert after == hit


def test_a_ledger_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "ledger.db"
    connect(path).execute("INSERT INTO ledger_schema_migrations VALUES (999, 'future', 'x')")
    with pytest.raises(RuntimeError, match="version 999, newer"):
        connect(path)


def test_a_reader_does_not_create_a_missing_ledger(tmp_path):
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_a_record_written_twice_is_one_row_and_reads_back_equal(tmp_path):
    connection = connect(tmp_path / "ledger.db")
    records = [make_record(0), make_record(1, stream=False, tenant=None, ttfb_ms=None, error_type="overloaded")]
    assert write_records(connection, records) == 2
    assert write_records(connection, [*records, make_record(2)]) == 1
    rows = stored(tmp_path / "ledger.db")
    assert len(rows) == 3
    assert [record_from_row(row) for row in rows[:2]] == records


def test_the_same_request_id_at_another_time_is_another_record(tmp_path):
    connection = connect(tmp_path / "ledger.db")
    assert write_records(connection, [make_record(0), make_record(0, time="2026-01-01T00:00:00.000000Z")]) == 2


def test_the_sink_writes_what_it_is_given_in_batches(tmp_path):
    sink = SqliteSink(tmp_path / "ledger.db", batch_size=7, flush_interval=0.05)
    records = [make_record(i) for i in range(50)]
    for start in range(0, 50, 3):
        sink.put(records[start : start + 3])
    assert sink.flush(5)
    sink.put(records[:10])  # a replay
    sink.close_sync()
    assert [record_from_row(row) for row in stored(tmp_path / "ledger.db")] == records
    assert (sink.written, sink.duplicates, sink.dropped) == (50, 10, 0)


async def test_close_writes_what_is_still_queued(tmp_path):
    sink = SqliteSink(tmp_path / "ledger.db", flush_interval=60)  # nothing written before close
    sink.put([make_record(i) for i in range(5)])
    await sink.close()
    assert len(stored(tmp_path / "ledger.db")) == 5


def test_put_returns_at_once_while_another_process_holds_the_write_lock(tmp_path):
    path = tmp_path / "ledger.db"
    sink = SqliteSink(path, batch_size=1, flush_interval=0.01)
    other = connect(path)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as a busy neighbour worker would hold it
    started = time.monotonic()
    for index in range(200):
        sink.put([make_record(index)])
    assert time.monotonic() - started < 0.1
    time.sleep(0.2)
    assert sink.written == 0  # the writer thread is waiting for the lock, not the caller
    other.execute("COMMIT")
    assert sink.flush(10)
    sink.close_sync()
    assert sink.written == 200


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path, caplog):
    sink = SqliteSink(tmp_path / "ledger.db", flush_interval=60, max_queued=10)
    sink.put([make_record(i) for i in range(8)])
    sink.put([make_record(i) for i in range(8, 16)])  # two fit
    sink.put([make_record(99)])
    sink.close_sync()
    assert sink.dropped == 7
    assert len(stored(tmp_path / "ledger.db")) == 10
    assert "dropping usage records" in caplog.text


def test_put_never_raises(tmp_path):
    sink = SqliteSink(tmp_path / "ledger.db")
    sink.put(None)  # type: ignore[arg-type]  # a caller's bug still must not break the request
    sink.close_sync()
    sink.put([make_record()])  # after close: counted, not raised
    assert sink.dropped == 1


def _write_from_another_process(path: str, start: int, count: int, shared: int, ready, go) -> None:
    sink = SqliteSink(path, batch_size=50, flush_interval=0.01)
    ready.set()
    go.wait()
    # Each process writes its own records and, interleaved, the same `shared` ones as the other
    # (a redelivery landing in two workers): all in small puts, as requests finish.
    for index in range(count):
        sink.put([make_record(start + index)])
        if index < shared:
            sink.put([make_record(1_000_000 + index)])
    sink.close_sync()


def test_two_processes_writing_at_once_lose_and_double_nothing(tmp_path):
    path = str(tmp_path / "ledger.db")
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    readies = [spawn.Event(), spawn.Event()]
    processes = [
        spawn.Process(target=_write_from_another_process, args=(path, start, 3000, 500, ready, go))
        for start, ready in zip((0, 100_000), readies, strict=True)
    ]
    for process in processes:
        process.start()
    for ready in readies:
        assert ready.wait(30)
    go.set()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    ids = [row["request_id"] for row in stored(Path(path))]
    assert len(ids) == len(set(ids)) == 3000 + 3000 + 500
