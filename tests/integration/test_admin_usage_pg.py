"""GET /usage's reads on a real PostgreSQL ledger (a throwaway database): whole days come from the
usage_daily rollup, the partial edge days from usage_records, and together they equal the sums
over the raw records. Speed on a million rows is shown by the plan, not timed: EXPLAIN of the
rollup query reads usage_daily and never usage_records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from ccr.v1.usage_record import time_of
from ccr_gateway.admin_ledger import open_reader
from control_plane.admin.settings import AdminSettings
from ledger import pg_schema, reports
from ledger.reports import POSTGRES, ReportQuery
from tests.unit.ledger_records import BASE_SECONDS, make_record, throwaway_postgres

START = datetime.fromtimestamp(BASE_SECONDS, UTC) - timedelta(days=5)


@pytest.fixture(scope="module")
def dsn() -> str:
    with throwaway_postgres("ccr_admin_usage") as url:
        yield url


def records() -> list:
    # Every 37 minutes over 5 days: tenants, models, a key, errors and cache hits all varying.
    out = []
    for i in range(5 * 24 * 60 // 37):
        out.append(
            make_record(
                i,
                request_id=f"r{i}",
                time=time_of(START.timestamp() + i * 37 * 60 + 0.123),
                tenant=["acme", "globex", None][i % 3],
                model=["m1", "m2"][i % 2],
                key_id=["k1", None][i % 5 == 0],
                status=[200, 200, 500][i % 3],
                cache=["hit", None, None, None][i % 4],
                cost_usd=[0.001, 0.0125, 0.3][i % 3],
                cost_avoided_usd=0.01 if i % 4 == 0 else 0.0,
            )
        )
    return out


@pytest.fixture(scope="module")
async def loaded(dsn: str) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        await pg_schema.prepare_connection(connection)
        stored = await pg_schema.store_batch(connection, records())
        assert stored.inserted == len(records())
    finally:
        await connection.close()
    return dsn


async def raw_rows(dsn: str, since: datetime, until: datetime, by: tuple[str, ...], tenant: str | None) -> list:
    connection = await asyncpg.connect(dsn)
    try:
        sql, params = reports.report_sql(POSTGRES, ReportQuery(since, until, by), tenant)
        return reports.usage_rows(POSTGRES, by, [await connection.fetch(sql, *params)])
    finally:
        await connection.close()


@pytest.mark.parametrize("by", [(), ("tenant",), ("tenant", "model"), ("key_id", "provider", "day")])
@pytest.mark.parametrize("tenant", [None, "acme"])
async def test_rollup_and_edges_together_equal_the_raw_records(
    loaded: str, by: tuple[str, ...], tenant: str | None
) -> None:
    since, until = START + timedelta(hours=7, minutes=13), START + timedelta(days=4, hours=2)
    reader = await open_reader(AdminSettings(ledger_postgres=loaded))
    try:
        rows = await reader.usage(since, until, by, tenant)
    finally:
        await reader.close()
    expected = await raw_rows(loaded, since, until, by, tenant)
    assert reports.split_at_days(since, until).days is not None  # the rollup answered a part
    # Equal sums; errors unknown where the rollup answered part of a group (it does not count
    # them), counted where only records did (a partial edge day grouped by day).
    assert [{**row, "errors": None} for row in expected] == [{**row, "errors": None} for row in rows]
    assert all(row["errors"] in (None, raw["errors"]) for row, raw in zip(rows, expected, strict=True))
    assert any(row["errors"] is None for row in rows)
    assert sum(row["requests"] for row in rows) > (40 if tenant else 100)
    assert all(isinstance(row["cost_usd"], Decimal) for row in rows)


async def test_a_window_inside_one_day_is_read_from_the_records_with_errors(loaded: str) -> None:
    since = START + timedelta(days=1, hours=1)
    reader = await open_reader(AdminSettings(ledger_postgres=loaded))
    try:
        rows = await reader.usage(since, since + timedelta(hours=6), ("tenant",), None)
    finally:
        await reader.close()
    assert rows == await raw_rows(loaded, since, since + timedelta(hours=6), ("tenant",), None)
    assert all(row["errors"] is not None for row in rows)


async def test_a_daily_series_is_the_rollup_and_an_hourly_one_the_records(loaded: str) -> None:
    first = datetime.combine(START.date(), datetime.min.time(), UTC)
    reader = await open_reader(AdminSettings(ledger_postgres=loaded))
    try:
        daily = await reader.series(first, first + timedelta(days=6), "day", "tenant", None)
        hourly = await reader.series(first, first + timedelta(days=6), "hour", "tenant", None)
        newest = await reader.newest_record()
    finally:
        await reader.close()
    assert sum(row["requests"] for row in daily) == sum(row["requests"] for row in hourly) == len(records())
    assert sum(row["cost_usd"] for row in daily) == sum(row["cost_usd"] for row in hourly)
    assert {row["t"][:10] for row in hourly} == {row["t"] for row in daily}
    assert newest == max(datetime.fromisoformat(r.time.replace("Z", "+00:00")) for r in records())


async def test_the_plan_reads_the_rollup_table_not_the_records(loaded: str) -> None:
    connection = await asyncpg.connect(loaded)
    try:
        for sql, params in (
            reports.rollup_report_sql(("tenant", "model", "day"), START.date(), (START + timedelta(days=30)).date()),
            reports.rollup_series_sql("model", START.date(), (START + timedelta(days=30)).date(), "acme"),
        ):
            plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {sql}", *params))
            assert "usage_daily" in plan and "usage_records" not in plan, plan
    finally:
        await connection.close()


async def test_a_database_that_is_not_there_is_a_503() -> None:
    from control_plane.admin.errors import AdminError

    with pytest.raises(AdminError) as raised:
        await open_reader(AdminSettings(ledger_postgres="postgresql://postgres@127.0.0.1:1/none"))
    assert raised.value.status == 503 and raised.value.code == "unavailable"
