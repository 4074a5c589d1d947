"""ledger.reports: options, the report and export SQL (run on a real SQLite ledger), the shaping
and the three output formats; `usage report|export` end to end on a local ledger."""

from __future__ import annotations

import argparse
import csv
import io
import random
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccr.v1.usage_record import UsageRecord, parse_time, record_from_dict, time_of
from ledger import reports, usage_cli
from ledger.local import connect, write_records
from ledger.reports import (
    GROUP_KEYS,
    SQLITE,
    ReportError,
    ReportQuery,
    Totals,
    parse_group_by,
    parse_time_option,
    render_csv,
    render_json,
    render_table,
    report_sql,
    shape_report,
)
from ledger.stores import PostgresStore, SqliteStore, StoreError
from tests.unit.ledger_records import BASE_SECONDS, make_record, throwaway_postgres, usage_records

NOW = datetime(2026, 3, 15, 12, 30, tzinfo=UTC)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# --- options ---------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(["m", "h", "d", "w"]))
def test_a_duration_is_that_long_before_now(amount, unit):
    length = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
    assert parse_time_option(f"{amount}{unit}", NOW) == NOW - amount * length[unit]


offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=offsets.map(lambda offset: timezone(timedelta(minutes=offset // timedelta(minutes=1)))),
    )
)
def test_an_iso_time_with_an_offset_is_that_moment_in_utc(moment):
    parsed = parse_time_option(moment.isoformat(), NOW)
    assert parsed == moment and parsed.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T12:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),  # no offset: UTC
        ("2026-01-31 12:00:05Z", datetime(2026, 1, 31, 12, 0, 5, tzinfo=UTC)),
        ("2026-01-31T12:00+02:00", datetime(2026, 1, 31, 10, tzinfo=UTC)),
        (" 24h ", NOW - timedelta(hours=24)),
        ("now", NOW),
    ],
)
def test_dates_and_times_people_type(text, expected):
    assert parse_time_option(text, NOW) == expected


@pytest.mark.parametrize("text", ["7", "7 days", "-7d", "1y", "yesterday", "2026-13-01", ""])
def test_a_time_that_is_neither_says_what_would_be(text):
    with pytest.raises(ReportError, match=r"--until .*expected a duration like 7d, 24h, 30m"):
        parse_time_option(text, NOW, "--until")


def test_group_by_takes_known_columns_once_each_in_order():
    assert parse_group_by("tenant, model,tenant,day") == ("tenant", "model", "day")
    assert parse_group_by(None) == parse_group_by("") == ()
    with pytest.raises(ReportError, match=r"--by team: not a column.*tenant, key_id"):
        parse_group_by("tenant,team")


def test_a_window_that_ends_before_it_starts_is_refused():
    with pytest.raises(ReportError, match=r"--until .* must be after --since"):
        ReportQuery(NOW, NOW - timedelta(days=1))


# --- the report against a reference, on a real SQLite ledger ---------------------------------


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> sqlite3.Connection:
    connection = connect(tmp_path_factory.mktemp("reports") / "ledger.db")
    connection.row_factory = sqlite3.Row
    return connection


def run_report(connection: sqlite3.Connection, query: ReportQuery) -> reports.Report:
    sql, params = report_sql(SQLITE, query)
    return shape_report(SQLITE, query, connection.execute(sql, params).fetchall(), NOW)


def bucket(record: UsageRecord, period: str) -> str:
    day = parse_time(record.time).date()
    if period == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    return day.isoformat()[: 7 if period == "month" else 10]


def expected_rows(records: list[UsageRecord], query: ReportQuery) -> dict[tuple, Totals]:
    """The report worked out the slow way, one record at a time."""
    groups: dict[tuple, Totals] = defaultdict(Totals)
    for record in records:
        moment = parse_time(record.time)
        if moment < query.since or (query.until and moment >= query.until):
            continue
        key = (
            bucket(record, query.period) if query.period else None,
            *(bucket(record, "day") if name == "day" else getattr(record, name) for name in query.by),
        )
        groups[key] += Totals(
            1,
            int(record.status >= 400 or record.error_type is not None),
            record.input_tokens,
            record.output_tokens,
            record.cache_read_tokens,
            record.cache_creation_tokens,
            Decimal(round(record.cost_usd * 1e10)).scaleb(-10),
            int(record.cache == "hit"),
            Decimal(round(record.cost_avoided_usd * 1e10)).scaleb(-10),
        )
    return groups


windows = st.sampled_from([None, -10, 0, 5]).map(
    lambda days: EPOCH if days is None else datetime.fromtimestamp(BASE_SECONDS, UTC) + timedelta(days=days)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(usage_records(), max_size=40, unique_by=lambda r: r.request_id),
    by=st.lists(st.sampled_from(GROUP_KEYS), unique=True, max_size=3),
    period=st.sampled_from([None, *reports.PERIODS]),
    since=windows,
    until_days=st.sampled_from([None, 3, 20]),
)
def test_the_report_is_the_records_summed_per_group(ledger, records, by, period, since, until_days):
    until = None if until_days is None else since.replace(year=max(since.year, 2026)) + timedelta(days=until_days)
    until = until if until is None or until > since else None
    ledger.execute("DELETE FROM usage_records")
    write_records(ledger, records)
    query = ReportQuery(since, until, tuple(by), period)
    report = run_report(ledger, query)

    expected = expected_rows(records, query)
    assert {(row.period, *row.group): row.totals for row in report.rows} == expected
    assert report.total == sum(expected.values(), Totals())
    assert [(row.period, *row.group) for row in report.rows] == sorted(
        expected, key=lambda key: [(value is None, "" if value is None else value) for value in key]
    )
    if period and by:
        per_period: dict[str, Totals] = defaultdict(Totals)
        for key, totals in expected.items():
            per_period[key[0]] += totals
        assert {row.period: row.totals for row in report.period_totals} == per_period


def test_weeks_start_on_monday_and_months_on_the_first_in_utc(ledger):
    ledger.execute("DELETE FROM usage_records")
    times = {
        "sun": "2026-03-01T23:59:59.999999Z",  # a Sunday: the week of Monday 23 February
        "mon": "2026-03-02T00:00:00.000000Z",
        "tue": "2026-03-31T23:00:00.000000Z",
    }
    write_records(ledger, [make_record(i, request_id=name, time=t) for i, (name, t) in enumerate(times.items())])
    since = datetime(2026, 2, 1, tzinfo=UTC)
    weeks = run_report(ledger, ReportQuery(since, period="week"))
    months = run_report(ledger, ReportQuery(since, period="month"))
    assert [(row.period, row.totals.requests) for row in weeks.rows] == [
        ("2026-02-23", 1),
        ("2026-03-02", 1),
        ("2026-03-30", 1),
    ]
    assert [(row.period, row.totals.requests) for row in months.rows] == [("2026-03", 3)]
    assert date.fromisoformat("2026-02-23").weekday() == 0


def test_costs_add_up_exactly(ledger):
    ledger.execute("DELETE FROM usage_records")
    write_records(ledger, [make_record(i, cost_usd=0.1) for i in range(1000)])
    report = run_report(ledger, ReportQuery(EPOCH))
    assert report.total.cost_usd == Decimal("100")  # a float sum of 0.1s is 99.9999999999986
    assert sum([0.1] * 1000) != 100


def test_cache_hits_are_counted_with_the_cost_they_avoided(ledger):
    ledger.execute("DELETE FROM usage_records")
    hit = {"cache": "hit", "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_creation_tokens": 0}
    write_records(
        ledger,
        [
            make_record(0, cache="miss", cost_usd=0.3),
            *(make_record(i, **hit, cost_usd=0.0, cost_avoided_usd=0.1) for i in range(1, 11)),
            make_record(11, cache=None, cost_usd=0.2),
        ],
    )
    total = run_report(ledger, ReportQuery(EPOCH)).total
    assert (total.requests, total.cache_hits, total.errors) == (12, 10, 0)
    assert (total.cost_usd, total.cost_avoided_usd) == (Decimal("0.5"), Decimal("1"))  # exact: ten 0.1s
    assert total.input_tokens == 2 * 1200  # a hit's own tokens are none


def test_an_empty_window_has_no_rows_and_a_zero_total(ledger):
    ledger.execute("DELETE FROM usage_records")
    for by in ((), ("tenant",)):
        report = run_report(ledger, ReportQuery(EPOCH, by=by))
        assert report.rows == () and report.total == Totals()
        assert "(no requests in this window)" in render_table(report)


# --- formats ---------------------------------------------------------------------------------


@pytest.fixture
def sample(ledger) -> reports.Report:
    ledger.execute("DELETE FROM usage_records")
    write_records(
        ledger,
        [
            make_record(0, time="2026-01-31T23:00:00.000000Z", tenant="acme", cost_usd=1.25),
            make_record(1, time="2026-02-01T01:00:00.000000Z", tenant="acme", cost_usd=0.5, status=529),
            make_record(2, time="2026-02-02T01:00:00.000000Z", tenant=None, cost_usd=0.000001),
            make_record(3, time="2026-02-03T01:00:00.000000Z", tenant="globex", input_tokens=1_000_000),
            make_record(
                4,
                time="2026-02-03T02:00:00.000000Z",
                tenant="globex",
                cache="hit",
                input_tokens=0,
                output_tokens=0,
                cache_read_tokens=0,
                cache_creation_tokens=0,
                cost_usd=0.0,
                cost_avoided_usd=0.012345,
            ),
        ],
    )
    query = ReportQuery(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC), ("tenant",), "month")
    return run_report(ledger, query)


def test_the_table_names_utc_and_shows_subtotals_and_the_total(sample):
    lines = render_table(sample).splitlines()
    assert lines[0] == (
        "Usage from 2026-01-01T00:00:00Z to 2026-03-01T00:00:00Z, by tenant, per month. All times and periods are UTC."
    )
    assert lines[2].split() == ["period", "tenant", *reports.METRICS]
    body = [line.split() for line in lines[4:] if not line.startswith("---")]
    assert [row[:2] for row in body[:-1]] == [
        ["2026-01", "acme"],  # one group in January: no subtotal
        ["2026-02", "acme"],
        ["2026-02", "globex"],
        ["2026-02", "-"],  # no tenant: "-", last
        ["2026-02", "subtotal"],
    ]
    assert body[1][3] == "1"  # the 529 is an error
    assert body[2][4] == "1,000,000"
    assert body[4][2] == "4"
    assert body[2][-2:] == ["1", "0.012345"]  # globex's cache hit, and what it avoided
    total = dict(zip(["tenant", *reports.METRICS], body[-1], strict=True))  # its period cell is blank
    assert (total["tenant"], total["cost_usd"], total["cost_avoided_usd"]) == ("TOTAL", "1.754801", "0.012345")


def test_the_csv_has_a_line_kind_so_a_spreadsheet_sums_only_groups(sample):
    rows = list(csv.DictReader(io.StringIO(render_csv(sample))))
    assert list(rows[0]) == ["line", "period_utc", "tenant", *reports.METRICS]
    assert [row["line"] for row in rows] == ["group", "group", "group", "group", "subtotal", "total"]
    groups = [row for row in rows if row["line"] == "group"]
    assert sum(Decimal(row["cost_usd"]) for row in groups) == Decimal(rows[-1]["cost_usd"]) == Decimal("1.754801")
    assert sum(int(row["requests"]) for row in groups) == int(rows[-1]["requests"]) == 5
    assert sum(Decimal(row["cost_avoided_usd"]) for row in groups) == Decimal(rows[-1]["cost_avoided_usd"])
    assert rows[-1]["cache_hits"] == "1" and rows[-1]["cost_avoided_usd"] == "0.012345"
    assert groups[-1]["tenant"] == ""
    assert rows[-1]["period_utc"] == rows[-1]["tenant"] == ""


def test_the_json_states_its_window_and_time_zone(sample):
    data = orjson.loads(render_json(sample))
    assert (data["time_zone"], data["since"], data["until"], data["by"], data["period"]) == (
        "UTC",
        "2026-01-01T00:00:00Z",
        "2026-03-01T00:00:00Z",
        ["tenant"],
        "month",
    )
    assert data["rows"][0] == {
        "period": "2026-01",
        "tenant": "acme",
        "requests": 1,
        "errors": 0,
        "input_tokens": 1200,
        "output_tokens": 80,
        "cache_read_tokens": 10,
        "cache_creation_tokens": 5,
        "cost_usd": "1.250000",
        "cache_hits": 0,
        "cost_avoided_usd": "0.000000",
    }
    assert data["rows"][-1]["tenant"] is None
    assert [row["period"] for row in data["period_totals"]] == ["2026-01", "2026-02"]
    assert data["total"]["requests"] == 5 and data["total"]["cost_usd"] == "1.754801"
    assert data["total"]["cache_hits"] == 1 and data["total"]["cost_avoided_usd"] == "0.012345"


def test_an_ungrouped_table_is_one_total_line(ledger):
    ledger.execute("DELETE FROM usage_records")
    write_records(ledger, [make_record(i) for i in range(3)])
    lines = render_table(run_report(ledger, ReportQuery(EPOCH))).splitlines()
    assert lines[2].split() == list(reports.METRICS)
    assert lines[4].split() == ["3", "0", "3,600", "240", "30", "15", "0.014400", "0", "0.000000"]
    assert len(lines) == 5


# --- the commands, on a ledger file ------------------------------------------------------------


def usage(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ccr-gateway usage")
    usage_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def ledger_file(tmp_path) -> tuple[Path, list[UsageRecord]]:
    path = tmp_path / "ledger.db"
    records = [make_record(i, tenant=["acme", "globex"][i % 2], model=f"m{i % 3}") for i in range(25)]
    write_records(connect(path), records)
    return path, records


def test_usage_report_prints_the_chosen_format(ledger_file, capsys):
    path, _ = ledger_file
    args = usage("report", "--sqlite", str(path), "--since", "2026-01-01", "--by", "tenant", "--format", "json")
    assert args.func(args) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert [(row["tenant"], row["requests"]) for row in data["rows"]] == [("acme", 13), ("globex", 12)]


def test_usage_report_says_what_is_wrong_with_an_option(ledger_file, capsys):
    path, _ = ledger_file
    assert usage_cli.run(usage("report", "--sqlite", str(path), "--by", "team")) == usage_cli.EXIT_USAGE
    assert "--by team: not a column" in capsys.readouterr().err
    assert usage_cli.run(usage("report", "--sqlite", str(path.parent / "none.db"))) == usage_cli.EXIT_UNAVAILABLE
    assert "no ledger at" in capsys.readouterr().err


def test_export_round_trips_every_record(ledger_file, tmp_path):
    path, records = ledger_file
    out = tmp_path / "export.jsonl"
    assert usage_cli.run(usage("export", "--sqlite", str(path), "--since", "2000-01-01", "-o", str(out))) == 0
    assert [record_from_dict(orjson.loads(line)) for line in out.read_bytes().splitlines()] == records


def test_export_takes_only_the_window_oldest_first(ledger_file, tmp_path):
    path, records = ledger_file
    since, until = records[5].time, records[9].time
    out = tmp_path / "export.jsonl"
    assert (
        usage_cli.run(
            usage("export", "--sqlite", str(path), "--since", since[:-1], "--until", until[:-1], "-o", str(out))
        )
        == 0
    )
    assert [record_from_dict(orjson.loads(line)) for line in out.read_bytes().splitlines()] == records[5:9]


@settings(max_examples=50, deadline=None)
@given(st.lists(usage_records(), max_size=30, unique_by=lambda r: r.request_id))
def test_any_records_survive_the_ledger_and_the_export(records):
    import asyncio
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.db"
        write_records(connect(path), records)

        async def export() -> bytes:
            store = await SqliteStore.open(path)
            out = io.BytesIO()
            await usage_cli.export_records(store, EPOCH, None, out)
            await store.close()
            return out.getvalue()

        lines = asyncio.run(export()).splitlines()
    expected = sorted(records, key=lambda r: (r.time, r.request_id))
    assert [record_from_dict(orjson.loads(line)) for line in lines] == expected


async def test_a_missing_ledger_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no ledger at"):
        await SqliteStore.open(tmp_path / "none.db")


# --- PostgreSQL: the same reports and exports from the writer's schema -------------------------


def varied_records(count: int, seed: int = 7) -> list[UsageRecord]:
    """Spread over three months, with every group column sometimes absent, a third of them cache hits."""
    chooser = random.Random(seed)
    records = []
    for index in range(count):
        seconds = BASE_SECONDS - chooser.uniform(0, 90 * 86_400)
        status = chooser.choice([200, 200, 200, 429, 529])
        cache = chooser.choice(["hit", "miss", None])
        records.append(
            make_record(
                index,
                time=time_of(seconds),
                tenant=chooser.choice(["acme", "globex", None]),
                key_id=chooser.choice(["k1", "k2", None]),
                provider=chooser.choice(["anthropic", "openai", None]),
                model=chooser.choice(["m1", "m2", None]),
                scenario=chooser.choice(["default", "think", None]),
                client_api=chooser.choice(["anthropic", "openai"]),
                status=status,
                error_type=None if status == 200 and chooser.random() < 0.9 else "overloaded",
                stream=chooser.random() < 0.5,
                input_tokens=chooser.randrange(0, 200_000),
                output_tokens=chooser.randrange(0, 8_000),
                cost_usd=chooser.randrange(0, 10**9) / 1e9,
                ttfb_ms=chooser.choice([None, chooser.uniform(0, 2000)]),
                cache=cache,
                cost_avoided_usd=chooser.randrange(0, 10**9) / 1e9 if cache == "hit" else 0.0,
            )
        )
    return records


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    with throwaway_postgres("ccr_reports_test") as dsn:
        yield dsn


@pytest.fixture
async def postgres_store(postgres_dsn) -> AsyncIterator[PostgresStore]:
    from ledger import pg_schema

    store = await PostgresStore.open(postgres_dsn)
    await store.connection.execute("TRUNCATE usage_records, usage_daily")
    await pg_schema.prepare_connection(store.connection)
    yield store
    await store.close()


QUERIES = [
    ReportQuery(EPOCH),
    ReportQuery(EPOCH, by=("tenant", "model")),
    ReportQuery(EPOCH, by=("provider",), period="month"),
    ReportQuery(EPOCH, by=("status", "client_api"), period="week"),
    ReportQuery(EPOCH, by=("day", "key_id", "scenario", "requested_model")),
    ReportQuery(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC), ("tenant",), "day"),
]


async def test_postgres_reports_what_sqlite_reports_for_the_same_records(postgres_store, tmp_path):
    from ledger import pg_schema

    records = varied_records(600)
    await pg_schema.store_batch(postgres_store.connection, records)
    write_records(connect(tmp_path / "ledger.db"), records)
    sqlite_store = await SqliteStore.open(tmp_path / "ledger.db")
    for query in QUERIES:
        from_postgres = await usage_cli.build_report(postgres_store, query, NOW)
        from_sqlite = await usage_cli.build_report(sqlite_store, query, NOW)
        assert from_postgres.rows, query
        assert from_postgres.total.cache_hits and from_postgres.total.cost_avoided_usd, query
        assert from_postgres == from_sqlite, query
        assert render_csv(from_postgres) == render_csv(from_sqlite)
    await sqlite_store.close()


async def test_postgres_exports_every_record_as_it_was_written_through_a_cursor(postgres_store, monkeypatch):
    from ledger import pg_schema, stores

    records = varied_records(250, seed=3)
    await pg_schema.store_batch(postgres_store.connection, records)
    monkeypatch.setattr(stores, "FETCH_ROWS", 16)  # many round trips, not one
    out = io.BytesIO()
    assert await usage_cli.export_records(postgres_store, EPOCH, None, out) == 250
    exported = [record_from_dict(orjson.loads(line)) for line in out.getvalue().splitlines()]
    assert exported == sorted(records, key=lambda r: (r.time, r.request_id))


async def test_a_postgres_dsn_names_its_missing_variable_and_never_shows_a_password():
    with pytest.raises(StoreError, match=r"environment variable CCR_NO_SUCH_PASSWORD is not set") as missing:
        await PostgresStore.open("postgresql://reader:${CCR_NO_SUCH_PASSWORD}@127.0.0.1/x", environ={})
    assert "${CCR_NO_SUCH_PASSWORD}" in str(missing.value)
    with pytest.raises(StoreError) as refused:
        await PostgresStore.open("postgresql://reader:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in str(refused.value) and "***" in str(refused.value)
    with pytest.raises(StoreError) as expanded:
        await PostgresStore.open("postgresql://reader:${PW}@127.0.0.1:1/x", environ={"PW": "hunter2"})
    assert "hunter2" not in str(expanded.value)
