"""views_usage (GET /usage, /usage/series without I/O) and the ledger.reports functions behind
them (rollup SQL, window splitting, row merging), the SQL run on a real SQLite ledger."""

from __future__ import annotations

import csv
import io
import itertools
import sqlite3
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccr.v1.usage_record import UsageRecord, parse_time, time_of
from control_plane.admin import views_usage
from control_plane.admin.errors import AdminError
from ledger import reports
from ledger.local import connect, write_records
from ledger.reports import POSTGRES, SQLITE, ReportQuery
from tests.unit.ledger_records import BASE_SECONDS, make_record

NOW = datetime(2026, 12, 5, 12, 30, tzinfo=UTC)


def usage_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: 0 for name in views_usage.METRICS}
    row.update(cost_usd=Decimal("0"), cost_avoided_usd=Decimal("0"))
    row.update(values)
    return row


# --- parameters -------------------------------------------------------------------------------


def test_usage_params_default_to_the_last_seven_days_ungrouped_json() -> None:
    params = views_usage.usage_params({}, NOW)
    assert (params.since, params.until, params.by, params.format) == (NOW - timedelta(days=7), NOW, (), "json")
    assert params.limit == views_usage.DEFAULT_LIMIT


def test_usage_params_take_durations_dates_and_times_with_offsets() -> None:
    params = views_usage.usage_params(
        {"since": "2026-12-01", "until": "2026-12-03T10:00+02:00", "by": "tenant, model,tenant"}, NOW
    )
    assert params.since == datetime(2026, 12, 1, tzinfo=UTC)
    assert params.until == datetime(2026, 12, 3, 8, tzinfo=UTC)
    assert params.by == ("tenant", "model")
    assert views_usage.usage_params({"since": "24h"}, NOW).since == NOW - timedelta(hours=24)


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "1d", "until": "2d"}, "until"),
        ({"by": "tenant,scenario"}, "by"),
        ({"format": "xml"}, "format"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"by": "tenant", "cursor": "!!!"}, "cursor"),
        ({"cursor": views_usage.encode_cursor([])}, "cursor"),
        ({"by": "tenant", "cursor": views_usage.encode_cursor([[1, 2]])}, "cursor"),
    ],
)
def test_a_bad_usage_parameter_is_a_400_naming_it(query: dict[str, str], path: str) -> None:
    with pytest.raises(AdminError) as raised:
        views_usage.usage_params(query, NOW)
    assert raised.value.status == 400
    assert raised.value.code == "invalid_request"
    assert raised.value.details and raised.value.details[0]["path"] == path


def test_series_windows_widen_to_whole_steps() -> None:
    hourly = views_usage.series_params({"step": "hour", "since": "2026-12-05T01:20Z"}, NOW)
    assert (hourly.since, hourly.until) == (datetime(2026, 12, 5, 1, tzinfo=UTC), datetime(2026, 12, 5, 13, tzinfo=UTC))
    daily = views_usage.series_params({"by": "model"}, NOW)
    assert daily.step == "day" and daily.by == "model"
    assert (daily.since, daily.until) == (datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 6, tzinfo=UTC))
    assert views_usage.series_params({"step": "hour"}, NOW).since == datetime(2026, 12, 4, 12, tzinfo=UTC)


def test_an_hourly_series_longer_than_seven_days_is_a_400() -> None:
    assert views_usage.series_params({"step": "hour", "since": "6d"}, NOW).step == "hour"
    with pytest.raises(AdminError) as raised:
        views_usage.series_params({"step": "hour", "since": "8d"}, NOW)
    assert raised.value.status == 400 and "step=day" in raised.value.message
    with pytest.raises(AdminError):
        views_usage.series_params({"since": "500d"}, NOW)


@pytest.mark.parametrize("query", [{"step": "week"}, {"by": "scenario"}, {"by": "tenant,model"}])
def test_a_bad_series_parameter_is_a_400(query: dict[str, str]) -> None:
    with pytest.raises(AdminError) as raised:
        views_usage.series_params(query, NOW)
    assert raised.value.status == 400


# --- pages, totals, CSV -----------------------------------------------------------------------

_values = st.sampled_from(["acme", "globex", "a", "b"]) | st.none()


@st.composite
def sorted_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    groups = draw(st.lists(st.tuples(_values, _values), unique=True, max_size=30))
    rows = [usage_row(tenant=t, model=m, requests=draw(st.integers(1, 9))) for t, m in groups]
    return sorted(rows, key=lambda row: views_usage.sort_key(row, ("tenant", "model")))


@given(rows=sorted_rows(), limit=st.integers(1, 7))
@settings(max_examples=100)
def test_walking_the_cursors_returns_every_row_once_in_order(rows: list[dict[str, Any]], limit: int) -> None:
    query = {"by": "tenant,model", "limit": str(limit)}
    seen: list[dict[str, Any]] = []
    while True:
        params = views_usage.usage_params(query, NOW)
        body = views_usage.usage_body(params, rows, None)
        assert len(body["rows"]) <= limit
        seen += [row["group"] for row in body["rows"]]
        assert body["total"]["requests"] == sum(row["requests"] for row in rows)
        if body["next_cursor"] is None:
            break
        query["cursor"] = body["next_cursor"]
    assert seen == [{"tenant": row["tenant"], "model": row["model"]} for row in rows]


def test_the_body_shows_groups_costs_as_six_decimal_strings_and_unknown_errors_as_null() -> None:
    rows = [
        usage_row(tenant="acme", requests=2, cost_usd=Decimal("0.1234567"), errors=None),
        usage_row(tenant=None, requests=1, cost_usd=Decimal("1"), errors=None),
    ]
    body = views_usage.usage_body(views_usage.usage_params({"by": "tenant"}, NOW), rows, "acme")
    assert body["rows"][0]["group"] == {"tenant": "acme"}
    assert body["rows"][0]["cost_usd"] == "0.123457"
    assert body["rows"][1]["group"] == {"tenant": None}
    assert body["total"]["cost_usd"] == "1.123457" and body["total"]["errors"] is None
    assert body["next_cursor"] is None and body["tenant"] == "acme" and body["time_zone"] == "UTC"


def test_counted_errors_are_summed() -> None:
    total = views_usage.total([usage_row(errors=2, requests=3), usage_row(errors=1, requests=1)])
    assert (total["errors"], total["requests"]) == (3, 4)


def test_the_csv_has_every_row_and_a_total_line() -> None:
    rows = [usage_row(tenant="acme", model=None, requests=2, errors=None), usage_row(tenant="b", model="m", requests=1)]
    params = views_usage.usage_params({"by": "tenant,model", "format": "csv", "limit": "1"}, NOW)
    lines = list(csv.reader(io.StringIO(views_usage.usage_csv(params, rows))))
    assert lines[0][:4] == ["line", "tenant", "model", "requests"]
    assert [line[:4] for line in lines[1:]] == [
        ["group", "acme", "", "2"],
        ["group", "b", "m", "1"],
        ["total", "", "", "3"],
    ]
    errors = lines[0].index("errors")
    assert lines[1][errors] == "" and lines[2][errors] == "0" and lines[3][errors] == ""


def test_series_points_are_in_time_order_with_numbers_and_iso_times() -> None:
    params = views_usage.series_params({"step": "hour", "by": "tenant"}, NOW)
    rows = [
        {"t": "2026-12-05T03", "series": None, "requests": 1, "input_tokens": 1, "output_tokens": 2,
         "cost_usd": Decimal("0.0000014"), "cost_avoided_usd": Decimal(0)},
        {"t": "2026-12-05T01", "series": "acme", "requests": 2, "input_tokens": 3, "output_tokens": 4,
         "cost_usd": Decimal("1.5"), "cost_avoided_usd": None},
    ]  # fmt: skip
    body = views_usage.series_body(params, rows)
    assert [point["t"] for point in body["points"]] == ["2026-12-05T01:00:00Z", "2026-12-05T03:00:00Z"]
    assert body["points"][0] == {
        "t": "2026-12-05T01:00:00Z",
        "series": "acme",
        "requests": 2,
        "cost_usd": 1.5,
        "input_tokens": 3,
        "output_tokens": 4,
        "cost_avoided_usd": 0.0,
    }
    assert body["points"][1]["series"] is None and body["points"][1]["cost_usd"] == 0.000001
    everything = views_usage.series_body(views_usage.series_params({}, NOW), [{**rows[0], "t": "2026-12-05"}])
    assert everything["points"][0]["series"] == "all" and everything["points"][0]["t"] == "2026-12-05T00:00:00Z"


# --- ledger.reports: the window split, the rollup SQL, merging ------------------------------------

_moments = st.integers(min_value=0, max_value=20 * 86_400).map(
    lambda seconds: datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=seconds)
)


@given(since=_moments, length=st.integers(min_value=1, max_value=10 * 86_400))
def test_a_window_splits_into_whole_days_and_less_than_a_day_at_each_edge(since: datetime, length: int) -> None:
    until = since + timedelta(seconds=length)
    split = reports.split_at_days(since, until)
    pieces = []
    if split.head:
        pieces.append(split.head)
    if split.days:
        first, end = (datetime.combine(day, datetime.min.time(), UTC) for day in split.days)
        assert first < end
        pieces.append((first, end))
    if split.tail:
        pieces.append(split.tail)
    assert pieces[0][0] == since and pieces[-1][1] == until
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))  # contiguous, no overlap
    if split.days:
        assert all(end - start < timedelta(days=1) for start, end in filter(None, (split.head, split.tail)))
    else:
        assert split.tail is None and until - since < timedelta(days=2)


def test_the_rollup_sql_reads_usage_daily_with_nulls_for_empty_keys_and_no_error_count() -> None:
    sql, params = reports.rollup_report_sql(("tenant", "day"), date(2026, 12, 1), date(2026, 12, 4), "acme")
    assert "FROM usage_daily" in sql and "usage_records" not in sql
    assert "NULLIF(tenant, '') AS tenant" in sql and "to_char(day, 'YYYY-MM-DD') AS day" in sql
    assert "NULL::bigint AS errors" in sql and sql.endswith("GROUP BY 1, 2")
    assert params == [date(2026, 12, 1), date(2026, 12, 4), "acme"]
    with pytest.raises(reports.ReportError):
        reports.rollup_report_sql(("scenario",), date(2026, 12, 1), date(2026, 12, 2))
    series, _ = reports.rollup_series_sql(None, date(2026, 12, 1), date(2026, 12, 2))
    assert "FROM usage_daily" in series and "NULL::text AS series" in series


def test_the_report_sql_limits_a_tenant_with_a_parameter() -> None:
    query = ReportQuery(NOW - timedelta(days=1), NOW, ("model",))
    sql, params = reports.report_sql(POSTGRES, query, "acme")
    assert "tenant = $3" in sql and params[-1] == "acme"
    assert reports.report_sql(POSTGRES, query) == reports.report_sql(POSTGRES, query, None)


def test_merging_parts_sums_groups_and_keeps_errors_unknown_once_a_part_lacks_them() -> None:
    raw = [{"tenant": "acme", **usage_row(requests=1, errors=1, cost_usd=0.5)}]
    rollup = [
        {"tenant": "acme", **usage_row(requests=2, errors=None, cost_usd=Decimal("1.25"))},
        {"tenant": None, **usage_row(requests=1, errors=None)},
        {"tenant": "empty", **usage_row(requests=0)},
    ]
    rows = reports.usage_rows(POSTGRES, ("tenant",), [raw, rollup])
    assert [row["tenant"] for row in rows] == ["acme", None]
    assert rows[0]["requests"] == 3 and rows[0]["errors"] is None and rows[0]["cost_usd"] == Decimal("1.75")
    only_raw = reports.usage_rows(POSTGRES, ("tenant",), [raw])
    assert only_raw[0]["errors"] == 1


def _ledger(tmp_path: Path, records: list[UsageRecord]) -> sqlite3.Connection:
    path = tmp_path / "ledger.db"
    connection = connect(path)
    write_records(connection, records)
    return connection


def test_the_series_sql_buckets_sqlite_records_per_hour_and_day(tmp_path: Path) -> None:
    records = [
        make_record(
            i, time=time_of(BASE_SECONDS + i * 1800), tenant=["acme", None][i % 2], cost_usd=[0.001, 0.25][i % 2]
        )
        for i in range(10)
    ]
    connection = _ledger(tmp_path, records)
    connection.row_factory = sqlite3.Row
    since = datetime.fromtimestamp(BASE_SECONDS, UTC) - timedelta(hours=1)
    until = since + timedelta(days=1)
    for step, width in (("hour", 13), ("day", 10)):
        sql, params = reports.series_sql(SQLITE, since, until, step, "tenant", None)
        rows = [dict(row) for row in connection.execute(sql, params)]
        expected: dict[tuple[str, str | None], list[UsageRecord]] = defaultdict(list)
        for record in records:
            expected[(record.time[:width], record.tenant)].append(record)
        assert {(row["t"], row["series"]): row["requests"] for row in rows} == {
            key: len(group) for key, group in expected.items()
        }
        assert sum(SQLITE.cost_of(row["cost_usd"]) for row in rows) == Decimal("1.255")
    sql, params = reports.series_sql(SQLITE, since, until, "hour", None, "acme")
    assert sum(row["requests"] for row in connection.execute(sql, params)) == 5
    newest = connection.execute(reports.NEWEST_RECORD_SQL).fetchone()["newest"]
    assert parse_time(newest) == parse_time(records[-1].time)
