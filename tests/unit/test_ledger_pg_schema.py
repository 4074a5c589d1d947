"""The pure parts of the PostgreSQL schema: retention, partition planning, COPY rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from ccr.v1.usage_record import FIELDS, UsageRecord
from ledger.pg_schema import (
    INSERT_FROM_STAGING,
    MIGRATIONS,
    NATIVE,
    TIMESCALEDB,
    parse_retention,
    partition_day,
    partition_name,
    partitions_to_create,
    partitions_to_drop,
    record_row,
)
from tests.unit.ledger_records import make_record


@pytest.mark.parametrize(
    ("text", "days"), [("90 days", 90), ("1 day", 1), ("30d", 30), ("13 weeks", 91), ("2w", 14), (" 7 DAYS ", 7)]
)
def test_retention_reads_days_and_weeks(text, days):
    assert parse_retention(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "0 days", "90", "3 months", "-1 days", "ninety days"])
def test_retention_refuses_anything_else_and_says_what_it_expects(text):
    with pytest.raises(ValueError, match=r"e\.g\. '90 days'"):
        parse_retention(text)


def test_partition_names_round_trip_and_others_are_ignored():
    day = date(2026, 1, 31)
    assert partition_name(day) == "usage_records_p20260131"
    assert partition_day(partition_name(day)) == day
    for other in ("usage_records_default", "usage_records_p2026013", "usage_records_p20261340", "usage_daily"):
        assert partition_day(other) is None


def test_partitions_are_planned_from_yesterday_to_the_days_ahead():
    today = date(2026, 3, 1)
    planned = partitions_to_create(today, 2, existing={date(2026, 3, 1)})
    assert planned == [date(2026, 2, 28), date(2026, 3, 2), date(2026, 3, 3)]


def test_only_partitions_wholly_past_retention_are_dropped():
    today = date(2026, 4, 10)
    existing = {today - timedelta(days=offset) for offset in range(0, 95)}
    dropped = partitions_to_drop(existing, today, timedelta(days=90))
    assert dropped == sorted(today - timedelta(days=offset) for offset in range(91, 95))


def test_a_record_becomes_a_copy_row_in_column_order():
    record = UsageRecord(
        request_id="r1",
        time="2026-01-31T12:00:00.123456Z",
        client_api="openai",
        endpoint="/v1/chat/completions",
        requested_model="gpt",
        status=200,
        stream=True,
        input_tokens=1,
        output_tokens=2,
        cache_read_tokens=3,
        cache_creation_tokens=4,
        cost_usd=0.1,
        usage_source="provider",
        duration_ms=5,
        ttfb_ms=None,
    )
    row = dict(zip(FIELDS, record_row(record), strict=True))
    assert row["time"] == datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
    assert row["cost_usd"] == Decimal("0.1")  # not 0.1000000000000000055...
    assert row["duration_ms"] == 5.0 and isinstance(row["duration_ms"], float)
    assert row["ttfb_ms"] is None and row["stream"] is True
    assert row["cost_avoided_usd"] == Decimal(0)


def test_a_hits_cost_avoided_is_copied_as_exactly_as_its_cost():
    row = dict(zip(FIELDS, record_row(make_record(cache="hit", cost_usd=0.0, cost_avoided_usd=0.3)), strict=True))
    assert (row["cost_usd"], row["cost_avoided_usd"]) == (Decimal("0.0"), Decimal("0.3"))  # not 0.29999999999999998...


def test_the_daily_rollup_counts_cache_hits_and_sums_what_they_avoided():
    assert "count(*) FILTER (WHERE cache = 'hit')" in INSERT_FROM_STAGING
    assert "cost_avoided_usd = daily.cost_avoided_usd + excluded.cost_avoided_usd" in INSERT_FROM_STAGING
    assert "cache_hits = daily.cache_hits + excluded.cache_hits" in INSERT_FROM_STAGING


def test_every_record_field_is_a_column_of_the_table_and_the_insert():
    table = MIGRATIONS[0].sql(NATIVE)
    later = "".join(migration.sql(variant) for migration in MIGRATIONS[1:] for variant in (NATIVE, TIMESCALEDB))
    for name in FIELDS:
        # Created with the table, or added by a later migration on both variants.
        assert f"\n    {name} " in table or f"ALTER TABLE usage_records ADD COLUMN {name} " in later
        assert name in INSERT_FROM_STAGING
    assert "PARTITION BY RANGE (time)" in table
    assert "create_hypertable" in MIGRATIONS[0].sql(TIMESCALEDB)
    assert [migration.version for migration in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
