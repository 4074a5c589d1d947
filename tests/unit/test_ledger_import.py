"""`db import-sqlite`: a local ledger moved into PostgreSQL (a throwaway database), rerunnable."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from ccr.v1.usage_record import UsageRecord
from ledger import pg_schema
from ledger.import_sqlite import SqliteImportError, add_import_sqlite, run_import
from ledger.local import connect, write_records
from ledger.reports import record_from_row
from tests.unit.ledger_records import make_record, throwaway_postgres


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    with throwaway_postgres("ccr_import_test") as dsn:
        yield dsn


async def _query(dsn: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


def query(dsn: str, sql: str) -> list[asyncpg.Record]:
    return asyncio.run(_query(dsn, sql))


@pytest.fixture
def empty_postgres(postgres_dsn) -> str:
    query(postgres_dsn, "TRUNCATE usage_records, usage_daily")
    return postgres_dsn


def local_ledger(path: Path, records: list[UsageRecord]) -> Path:
    write_records(connect(path), records)
    return path


def db_import(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ccr-gateway db")
    add_import_sqlite(parser.add_subparsers(dest="db_command", required=True))
    return parser.parse_args(["import-sqlite", *argv])


def test_import_copies_every_record_and_its_daily_rollup(empty_postgres, tmp_path):
    records = [make_record(i, tenant=["acme", None][i % 2], cost_usd=0.25) for i in range(2500)]
    path = local_ledger(tmp_path / "ledger.db", records)
    counts = asyncio.run(run_import(path, empty_postgres, batch_records=300))
    assert (counts.read, counts.inserted, counts.already_there) == (2500, 2500, 0)
    rows = query(empty_postgres, "SELECT * FROM usage_records ORDER BY time, request_id")
    assert [record_from_row(row) for row in rows] == records
    daily = query(
        empty_postgres, "SELECT tenant, sum(requests) AS n, sum(cost_usd) AS cost FROM usage_daily GROUP BY 1"
    )
    assert {row["tenant"]: (row["n"], row["cost"]) for row in daily} == {
        "acme": (1250, Decimal("312.5")),
        "": (1250, Decimal("312.5")),
    }


def test_cache_hits_arrive_with_the_cost_they_avoided(empty_postgres, tmp_path):
    hit = {"cache": "hit", "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "cost_avoided_usd": 0.1}
    records = [make_record(i, **(hit if i % 4 == 0 else {})) for i in range(40)]
    path = local_ledger(tmp_path / "ledger.db", records)
    assert asyncio.run(run_import(path, empty_postgres)).inserted == 40
    rows = query(empty_postgres, "SELECT * FROM usage_records ORDER BY time, request_id")
    assert [record_from_row(row) for row in rows] == records
    (daily,) = query(
        empty_postgres, "SELECT sum(cache_hits) AS hits, sum(cost_avoided_usd) AS avoided FROM usage_daily"
    )
    assert (daily["hits"], daily["avoided"]) == (10, Decimal("1"))


def test_a_rerun_adds_only_what_is_missing(empty_postgres, tmp_path):
    first = [make_record(i) for i in range(100)]
    path = local_ledger(tmp_path / "ledger.db", first)
    asyncio.run(run_import(path, empty_postgres))
    write_records(connect(path), [make_record(i) for i in range(100, 130)])  # the gateway ran on
    again = asyncio.run(run_import(path, empty_postgres, batch_records=7))
    assert (again.read, again.inserted, again.already_there) == (130, 30, 100)
    assert query(empty_postgres, "SELECT sum(requests) AS n FROM usage_daily")[0]["n"] == 130


def test_the_command_prints_the_counts(empty_postgres, tmp_path, capsys):
    path = local_ledger(tmp_path / "ledger.db", [make_record(i) for i in range(3)])
    args = db_import("--sqlite", str(path), "--postgres", empty_postgres)
    assert args.func(args) == 0
    assert capsys.readouterr().out == f"3 read, 3 inserted, 0 already there (from {path})\n"
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("3 read, 0 inserted, 3 already there")


def test_a_missing_variable_in_the_dsn_is_named(tmp_path, capsys):
    path = local_ledger(tmp_path / "ledger.db", [make_record()])
    args = db_import("--sqlite", str(path), "--postgres", "postgresql://ledger:${CCR_UNSET_PASSWORD}@127.0.0.1/x")
    assert args.func(args) == 1
    assert "environment variable CCR_UNSET_PASSWORD is not set" in capsys.readouterr().err


def test_a_missing_ledger_file_is_said_before_anything_is_written(empty_postgres, tmp_path):
    with pytest.raises(SqliteImportError, match="no ledger at"):
        asyncio.run(run_import(tmp_path / "none.db", empty_postgres))
    assert not (tmp_path / "none.db").exists()


def test_the_schema_is_migrated_first(tmp_path):
    """Into a database the writer has never seen: import-sqlite brings the schema itself."""
    with throwaway_postgres("ccr_import_fresh") as dsn:
        query(dsn, "DROP TABLE usage_records, usage_daily, ledger_schema_migrations")
        path = local_ledger(tmp_path / "ledger.db", [make_record(i) for i in range(5)])
        assert asyncio.run(run_import(path, dsn)).inserted == 5
        assert query(dsn, "SELECT count(*) AS n FROM usage_records")[0]["n"] == 5
        assert (
            pg_schema.MIGRATIONS[-1].version
            == query(dsn, "SELECT max(version) AS v FROM ledger_schema_migrations")[0]["v"]
        )


def test_without_a_dsn_it_says_how_to_give_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CCR_LEDGER_POSTGRES", raising=False)
    args = db_import("--sqlite", str(tmp_path / "ledger.db"))
    assert args.func(args) == 2
    assert "give --postgres DSN (or set CCR_LEDGER_POSTGRES)" in capsys.readouterr().err


def test_it_sits_beside_migrate_under_db(tmp_path):
    """The way `db` holds both: ledger.db_cli's parser, then add_import_sqlite on its subparsers."""
    from ledger import db_cli

    parser = argparse.ArgumentParser(prog="ccr-gateway db")
    db_cli.add_arguments(parser)
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    if "import-sqlite" not in subparsers.choices:  # until db_cli adds it itself
        add_import_sqlite(subparsers)
    imported = parser.parse_args(["import-sqlite", "--postgres", "postgresql://x/y"])
    migrated = parser.parse_args(["migrate", "--postgres", "postgresql://x/y"])
    assert imported.func.__name__ == "run_import_sqlite"
    assert migrated.func is db_cli.run
