"""Usage reports and exports over ``usage_records``: the queries, built as text, and the rows they
return shaped into totals, tables, CSV and JSON. Pure: the store (ledger.stores) runs the SQL.

The same report reads the local SQLite ledger and PostgreSQL; a ``Dialect`` holds the few
expressions that differ (placeholders, UTC day/week/month buckets, the cost sums). Every time is
UTC, and the output says so: a finance user reconciling a month against a provider's invoice needs
to know where the month starts.

Grouping and summing happen in the database, so a report's memory is its number of groups, not of
records. An export streams records in time order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from ccr.v1.time_options import parse_time
from ccr.v1.usage_record import FIELDS, UsageRecord, record_from_dict

GROUP_KEYS = ("tenant", "key_id", "provider", "model", "requested_model", "scenario", "client_api", "status", "day")
PERIODS = ("day", "week", "month")
FORMATS = ("table", "csv", "json")
COST_DECIMALS = 6  # micro-dollars: shown per row and in totals

# A request counts as an error when the client got an error status, or when it got a 200 and the
# answer failed later (a stream cut mid-way records its error_type).
ERROR_CONDITION = "status >= 400 OR error_type IS NOT NULL"


class ReportError(ValueError):
    """A report option that cannot be used; the message says which and why."""


# --- options ---------------------------------------------------------------------------------



def parse_time_option(text: str, now: datetime, option: str = "--since") -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` (that long before ``now``), ``now``, an ISO date
    (``2026-01-31``: its midnight UTC) or an ISO date and time (UTC unless it names an offset)."""
    try:
        return parse_time(text, now)
    except ValueError:
        raise ReportError(
            f"{option} {text!r}: expected a duration like 7d, 24h, 30m, 2w, or an ISO date or time "
            "like 2026-01-31 or 2026-01-31T12:00 (UTC unless it has an offset)"
        ) from None


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``tenant,model`` -> ("tenant", "model"); unknown names are an error listing the known ones."""
    if not text:
        return ()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUP_KEYS]
    if unknown:
        raise ReportError(f"--by {', '.join(unknown)}: not a column to group by; use any of {', '.join(GROUP_KEYS)}")
    return tuple(dict.fromkeys(names))  # repeated names once, in their order


@dataclass(frozen=True, slots=True)
class ReportQuery:
    since: datetime  # inclusive, aware
    until: datetime | None = None  # exclusive; None: up to now
    by: tuple[str, ...] = ()
    period: str | None = None  # day | week | month

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or (self.until is not None and self.until.tzinfo is None):
            raise ValueError("since and until must be aware datetimes")
        if self.until is not None and self.until <= self.since:
            raise ReportError(f"--until ({iso(self.until)}) must be after --since ({iso(self.since)})")
        if self.period is not None and self.period not in PERIODS:
            raise ReportError(f"--period {self.period}: use one of {', '.join(PERIODS)}")
        unknown = set(self.by) - set(GROUP_KEYS)
        if unknown:
            raise ReportError(f"cannot group by {', '.join(sorted(unknown))}")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- SQL -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    placeholder: Callable[[int], str]  # the n-th parameter (1-based)
    time_value: Callable[[datetime], Any]  # a datetime as the time column compares
    buckets: Mapping[str, str]  # day | week | month -> the UTC bucket of `time`, as text
    cost_sum: Callable[[str], str]  # a cost column -> its sum; exact (see each dialect)
    cost_of: Callable[[Any], Decimal]  # cost_sum's value -> dollars


def _record_time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# SQLite: time is the record's fixed-width ISO text, so text comparison is time order and the
# buckets are substrings; the week starts on Monday ('weekday 0' is the next Sunday, or the day
# itself, and 6 days before it is that week's Monday). Costs are REAL: summed as whole
# 1e-10 dollars (PostgreSQL's numeric(20, 10) scale), an exact integer sum instead of an
# accumulating float error.
SQLITE = Dialect(
    name="sqlite",
    placeholder=lambda index: "?",
    time_value=_record_time_text,
    buckets={
        "day": "substr(time, 1, 10)",
        "week": "date(substr(time, 1, 10), 'weekday 0', '-6 days')",
        "month": "substr(time, 1, 7)",
    },
    cost_sum=lambda column: f"sum(CAST(round({column} * 10000000000) AS INTEGER))",
    cost_of=lambda value: Decimal(value or 0).scaleb(-10),
)

# PostgreSQL: time is timestamptz, costs numeric (summed exactly as they are).
POSTGRES = Dialect(
    name="postgres",
    placeholder=lambda index: f"${index}",
    time_value=lambda moment: moment.astimezone(UTC),
    buckets={
        "day": "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "week": "to_char(date_trunc('week', time AT TIME ZONE 'UTC'), 'YYYY-MM-DD')",
        "month": "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM')",
    },
    cost_sum=lambda column: f"sum({column})",
    cost_of=lambda value: Decimal(value or 0),
)

# The columns of every report, in order. The cache's come last, so the columns a report had
# before them keep their places in a CSV. A cache hit's own tokens and cost are 0: cost_avoided_usd
# is what the providers would have been paid for its answer.
METRICS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cost_usd",
    "cache_hits",
    "cost_avoided_usd",
)
COSTS = ("cost_usd", "cost_avoided_usd")  # dollars (Decimal, shown with COST_DECIMALS); the rest are counts


def _time_window(dialect: Dialect, since: datetime, until: datetime | None) -> tuple[str, list[Any]]:
    where, params = f"time >= {dialect.placeholder(1)}", [dialect.time_value(since)]
    if until is not None:
        where += f" AND time < {dialect.placeholder(2)}"
        params.append(dialect.time_value(until))
    return where, params


def report_sql(dialect: Dialect, query: ReportQuery, tenant: str | None = None) -> tuple[str, list[Any]]:
    """One row per (period, group) with its sums; columns named as in METRICS, ``period`` and the
    group keys. Only names from GROUP_KEYS and the dialect's own text reach the SQL; values are
    parameters. ``tenant``: only that tenant's records (the Admin API's tenant-admins)."""
    columns = [f"{dialect.buckets[query.period]} AS period"] if query.period else []
    columns += [f"{dialect.buckets['day']} AS day" if key == "day" else key for key in query.by]
    grouped = len(columns)
    columns += [
        "count(*) AS requests",
        f"sum(CASE WHEN {ERROR_CONDITION} THEN 1 ELSE 0 END) AS errors",
        "sum(input_tokens) AS input_tokens",
        "sum(output_tokens) AS output_tokens",
        "sum(cache_read_tokens) AS cache_read_tokens",
        "sum(cache_creation_tokens) AS cache_creation_tokens",
        f"{dialect.cost_sum('cost_usd')} AS cost_usd",
        "sum(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END) AS cache_hits",
        f"{dialect.cost_sum('cost_avoided_usd')} AS cost_avoided_usd",
    ]
    where, params = _time_window(dialect, query.since, query.until)
    where = _and_tenant(dialect, where, params, tenant)
    sql = f"SELECT {', '.join(columns)} FROM usage_records WHERE {where}"
    if grouped:
        sql += " GROUP BY " + ", ".join(str(position) for position in range(1, grouped + 1))
    return sql, params


def _and_tenant(dialect: Dialect, where: str, params: list[Any], tenant: str | None) -> str:
    """``where`` limited to one tenant (its value appended to ``params``); as is for None."""
    if tenant is None:
        return where
    params.append(tenant)
    return f"{where} AND tenant = {dialect.placeholder(len(params))}"


def export_sql(dialect: Dialect, since: datetime, until: datetime | None) -> tuple[str, list[Any]]:
    """Every field of every record in the window, oldest first."""
    where, params = _time_window(dialect, since, until)
    return f"SELECT {', '.join(FIELDS)} FROM usage_records WHERE {where} ORDER BY time, request_id", params


def record_from_row(row: Mapping[str, Any]) -> UsageRecord:
    """A stored row (SQLite's or PostgreSQL's) back into the record it was written from: the
    time as the record's ISO text, stream as a boolean, numerics as floats."""
    values = dict(row)
    if isinstance(values["time"], datetime):
        values["time"] = _record_time_text(values["time"])
    values["stream"] = bool(values["stream"])
    for name in (*COSTS, "duration_ms", "ttfb_ms"):
        if isinstance(values[name], Decimal):
            values[name] = float(values[name])
    return record_from_dict(values)


# --- shaping ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    cache_hits: int = 0
    cost_avoided_usd: Decimal = Decimal(0)

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, name) + getattr(other, name) for name in METRICS))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in METRICS}


@dataclass(frozen=True, slots=True)
class ReportRow:
    period: str | None  # the period's first day (month: YYYY-MM), UTC; None without --period
    group: tuple[Any, ...]  # the values of query.by, in order (None where the record had none)
    totals: Totals


@dataclass(frozen=True, slots=True)
class Report:
    query: ReportQuery
    until: datetime  # query.until, or the moment the report was made
    rows: tuple[ReportRow, ...]
    period_totals: tuple[ReportRow, ...] = field(default=())  # per period, when grouped too
    total: Totals = Totals()


def _sort_key(row: ReportRow) -> tuple[Any, ...]:
    # None last, and never compared with a value (SQLite and PostgreSQL order NULLs differently).
    return (row.period or "", *((value is None, value if value is not None else "") for value in row.group))


def shape_report(dialect: Dialect, query: ReportQuery, rows: Iterable[Mapping[str, Any]], now: datetime) -> Report:
    """The database's rows -> a Report: sorted by period then group, with per-period subtotals
    (when there are periods and groups) and the grand total."""
    shaped = []
    for row in rows:
        totals = Totals(
            **{name: dialect.cost_of(row[name]) if name in COSTS else int(row[name] or 0) for name in METRICS}
        )
        if totals.requests == 0:  # an ungrouped sum over no records is one row of NULLs
            continue
        group = tuple(row[key] for key in query.by)
        shaped.append(ReportRow(row["period"] if query.period else None, group, totals))
    shaped.sort(key=_sort_key)
    total = sum((row.totals for row in shaped), Totals())
    period_totals: list[ReportRow] = []
    if query.period and query.by:
        by_period: dict[str, Totals] = {}
        for row in shaped:
            by_period[row.period or ""] = by_period.get(row.period or "", Totals()) + row.totals
        period_totals = [ReportRow(period, (), totals) for period, totals in by_period.items()]
    return Report(query, query.until or now, tuple(shaped), tuple(period_totals), total)


# --- rendering -------------------------------------------------------------------------------


def _cost_text(cost: Decimal) -> str:
    return f"{cost:.{COST_DECIMALS}f}"


def _costs_as_text(totals: Totals) -> dict[str, str]:
    return {name: _cost_text(getattr(totals, name)) for name in COSTS}


def describe(report: Report) -> str:
    """The report's window and grouping in one line, naming the time zone."""
    query = report.query
    words = f"Usage from {iso(query.since)} to {iso(report.until)}{'' if query.until else ' (now)'}"
    if query.by:
        words += f", by {', '.join(query.by)}"
    if query.period:
        words += f", per {query.period}" + (" (weeks start on Monday)" if query.period == "week" else "")
    return words + ". All times and periods are UTC."


def report_lines(report: Report) -> list[tuple[str, ReportRow]]:
    """What a table or CSV shows, in order: ("group", row)... with ("subtotal", a period's
    total) after the rows of each period that has more than one, then ("total", ...)."""
    subtotals = {row.period: row for row in report.period_totals}
    lines: list[tuple[str, ReportRow]] = []
    in_period = 0
    for index, row in enumerate(report.rows):
        lines.append(("group", row))
        in_period += 1
        if index + 1 == len(report.rows) or report.rows[index + 1].period != row.period:
            if in_period > 1 and row.period in subtotals:
                lines.append(("subtotal", subtotals[row.period]))
            in_period = 0
    lines.append(("total", ReportRow(None, (), report.total)))
    return lines


def _label_cells(query: ReportQuery, kind: str, row: ReportRow) -> list[str]:
    """The period and group columns of a table line; a subtotal or total says so in the first
    group column (or in the period column when there are no groups)."""
    period = [row.period or ""] if query.period else []
    if kind == "group":
        return period + ["-" if value is None else str(value) for value in row.group]
    label = "subtotal" if kind == "subtotal" else "TOTAL"
    if query.by:
        return period + [label] + [""] * (len(query.by) - 1)
    return [label] if query.period else []


def render_table(report: Report) -> str:
    query = report.query
    columns = (["period"] if query.period else []) + list(query.by) + list(METRICS)
    right_aligned = set(METRICS) | {"status"}
    lines = report_lines(report)
    if not query.by and not query.period:
        lines = lines[-1:]  # the one group is the total
    table = [
        [
            *_label_cells(query, kind, row),
            *(
                _cost_text(getattr(row.totals, name)) if name in COSTS else f"{getattr(row.totals, name):,}"
                for name in METRICS
            ),
        ]
        for kind, row in lines
    ]
    widths = [max(len(column), *(len(cells[i]) for cells in table)) for i, column in enumerate(columns)]

    def text(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for cell, width, column in zip(cells, widths, columns, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [describe(report), "", text(columns), rule, *map(text, table[:-1])]
    if len(table) > 1:
        out.append(rule)
    out.append(text(table[-1]))
    if not report.rows:
        out.append("(no requests in this window)")
    return "\n".join(out) + "\n"


def render_csv(report: Report) -> str:
    """First column ``line``: group, subtotal (a period's, with --period and --by) or total; sum
    only the ``group`` lines in a spreadsheet. Costs in USD with 6 decimals; periods in UTC."""
    query = report.query
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["line", *(["period_utc"] if query.period else []), *query.by, *METRICS])
    for kind, row in report_lines(report):
        group = ["" if value is None else value for value in row.group] if kind == "group" else [""] * len(query.by)
        writer.writerow(
            [
                kind,
                *([row.period or ""] if query.period else []),
                *group,
                *(
                    _cost_text(getattr(row.totals, name)) if name in COSTS else getattr(row.totals, name)
                    for name in METRICS
                ),
            ]
        )
    return buffer.getvalue()


def report_as_dict(report: Report) -> dict[str, Any]:
    """The JSON form: the window and its time zone, rows of {period?, group keys..., metrics},
    the periods' subtotals and the total. Costs are strings with 6 decimals: exact for a
    reconciliation, where a float would not be."""
    query = report.query

    def item(row: ReportRow) -> dict[str, Any]:
        out: dict[str, Any] = {"period": row.period} if query.period else {}
        out.update(zip(query.by, row.group, strict=False))  # subtotals have no group
        return {**out, **row.totals.as_dict(), **_costs_as_text(row.totals)}

    return {
        "time_zone": "UTC",
        "since": iso(query.since),
        "until": iso(report.until),
        "by": list(query.by),
        "period": query.period,
        "rows": [item(row) for row in report.rows],
        "period_totals": [item(row) for row in report.period_totals],
        "total": {**report.total.as_dict(), **_costs_as_text(report.total)},
    }


def render_json(report: Report) -> str:
    return orjson.dumps(report_as_dict(report), option=orjson.OPT_INDENT_2).decode() + "\n"


RENDERERS: dict[str, Callable[[Report], str]] = {"table": render_table, "csv": render_csv, "json": render_json}


# --- the Admin API's reads (docs/admin-api.md: GET /usage, GET /usage/series) ----------------
#
# Pure like the rest: ccr_gateway.admin_ledger runs these on a store and hands the rows to
# control_plane.admin.views_usage. On PostgreSQL, whole UTC days are read from the usage_daily
# rollup (ledger.pg_schema) instead of usage_records: a month of a million records is then a few
# thousand rollup rows. What the rollup cannot answer is read from the records, within bounds the
# caller keeps (the partial days at the edges of a window; hourly series of at most a few days).

ROLLUP_KEYS = ("tenant", "key_id", "provider", "model", "day")  # what usage_daily can group by
SERIES_METRICS = ("requests", "input_tokens", "output_tokens", "cost_usd", "cost_avoided_usd")
STEPS = ("hour", "day")
# The UTC hour of `time` as text, "YYYY-MM-DDTHH" (the day buckets are Dialect.buckets["day"]).
HOUR_BUCKETS = {
    SQLITE.name: "substr(time, 1, 13)",
    POSTGRES.name: "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')",
}


def midnight(moment: datetime) -> datetime:
    """The UTC midnight at or before ``moment``."""
    moment = moment.astimezone(UTC)
    return datetime.combine(moment.date(), datetime.min.time(), UTC)


@dataclass(frozen=True, slots=True)
class WindowSplit:
    """A window [since, until) cut at UTC midnights: the whole days in the middle (``days``,
    [first, end) as dates) and the partial days before and after them, as time windows."""

    head: tuple[datetime, datetime] | None
    days: tuple[date, date] | None
    tail: tuple[datetime, datetime] | None


def split_at_days(since: datetime, until: datetime) -> WindowSplit:
    """[since, until) -> its whole UTC days and the (at most two, each under a day) partial ones.
    A window holding no whole day is all head."""
    first = midnight(since) if midnight(since) == since else midnight(since) + timedelta(days=1)
    last = midnight(until)
    if first >= last:
        return WindowSplit((since, until) if since < until else None, None, None)
    head = (since, first) if since < first else None
    tail = (last, until) if last < until else None
    return WindowSplit(head, (first.date(), last.date()), tail)


def _rollup_window(first: date, end: date, tenant: str | None) -> tuple[str, list[Any]]:
    params: list[Any] = [first, end]
    where = "day >= $1 AND day < $2"
    if tenant is not None:
        params.append(tenant)
        where += " AND tenant = $3"
    return where, params


def _rollup_key(key: str) -> str:
    # usage_daily keeps an absent tenant/key/provider/model as '' (a primary key holds no NULL):
    # back to NULL, as usage_records has it, so both sources group and sort the same way.
    return "to_char(day, 'YYYY-MM-DD') AS day" if key == "day" else f"NULLIF({key}, '') AS {key}"


def rollup_report_sql(by: Sequence[str], first: date, end: date, tenant: str | None = None) -> tuple[str, list[Any]]:
    """report_sql's columns (POSTGRES) from usage_daily for the whole days [first, end).
    ``errors`` is NULL: the rollup does not count them."""
    unknown = set(by) - set(ROLLUP_KEYS)
    if unknown:
        raise ReportError(f"usage_daily cannot group by {', '.join(sorted(unknown))}")
    columns = [_rollup_key(key) for key in by]
    columns += [
        "sum(requests) AS requests",
        "NULL::bigint AS errors",
        *(f"sum({name}) AS {name}" for name in METRICS if name not in ("requests", "errors")),
    ]
    where, params = _rollup_window(first, end, tenant)
    sql = f"SELECT {', '.join(columns)} FROM usage_daily WHERE {where}"
    if by:
        sql += " GROUP BY " + ", ".join(str(position) for position in range(1, len(by) + 1))
    return sql, params


def series_sql(
    dialect: Dialect, since: datetime, until: datetime, step: str, by: str | None, tenant: str | None = None
) -> tuple[str, list[Any]]:
    """Per ``step`` bucket (``t``: "YYYY-MM-DDTHH" or "YYYY-MM-DD", UTC) and per value of ``by``
    (``series``; NULL without ``by``) the SERIES_METRICS of usage_records, in order."""
    if step not in STEPS:
        raise ReportError(f"step {step}: use one of {', '.join(STEPS)}")
    if by is not None and by not in ROLLUP_KEYS[:4]:
        raise ReportError(f"series by {by}: use one of {', '.join(ROLLUP_KEYS[:4])}")
    bucket = HOUR_BUCKETS[dialect.name] if step == "hour" else dialect.buckets["day"]
    where, params = _time_window(dialect, since, until)
    where = _and_tenant(dialect, where, params, tenant)
    series = by if by is not None else "NULL"
    sql = (
        f"SELECT {bucket} AS t, {series} AS series, count(*) AS requests, sum(input_tokens) AS input_tokens, "
        f"sum(output_tokens) AS output_tokens, {dialect.cost_sum('cost_usd')} AS cost_usd, "
        f"{dialect.cost_sum('cost_avoided_usd')} AS cost_avoided_usd "
        f"FROM usage_records WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return sql, params


def rollup_series_sql(by: str | None, first: date, end: date, tenant: str | None = None) -> tuple[str, list[Any]]:
    """series_sql(POSTGRES, ..., "day", ...) from usage_daily for the whole days [first, end)."""
    if by is not None and by not in ROLLUP_KEYS[:4]:
        raise ReportError(f"series by {by}: use one of {', '.join(ROLLUP_KEYS[:4])}")
    where, params = _rollup_window(first, end, tenant)
    series = f"NULLIF({by}, '')" if by is not None else "NULL::text"
    sql = (
        f"SELECT to_char(day, 'YYYY-MM-DD') AS t, {series} AS series, sum(requests) AS requests, "
        "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd, "
        f"sum(cost_avoided_usd) AS cost_avoided_usd FROM usage_daily WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return sql, params


# The newest record's time (index usage_records_time on PostgreSQL; SQLite's time index too).
NEWEST_RECORD_SQL = "SELECT max(time) AS newest FROM usage_records"


def usage_rows(
    dialect: Dialect, by: Sequence[str], parts: Iterable[Iterable[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """The rows of report_sql / rollup_report_sql queries over disjoint parts of one window ->
    one row per group: {group key: value, metric: sum}, costs as Decimal, ``errors`` None when
    a part did not count them (the rollup). Sorted like shape_report (None last); groups of no
    request left out."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            metrics = {
                name: (
                    dialect.cost_of(row[name])
                    if name in COSTS
                    else None
                    if name == "errors" and row[name] is None
                    else int(row[name] or 0)
                )
                for name in METRICS
            }
            if metrics["requests"] == 0:  # an ungrouped sum over nothing is one row of NULLs
                continue
            group = tuple(row[key] for key in by)
            into = merged.get(group)
            if into is None:
                merged[group] = {**dict(zip(by, group, strict=True)), **metrics}
                continue
            for name in METRICS:
                into[name] = None if into[name] is None or metrics[name] is None else into[name] + metrics[name]
    return sorted(merged.values(), key=lambda row: [(row[key] is None, row[key] or "") for key in by])
