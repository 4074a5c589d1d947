"""GET /admin/v1/usage and /usage/series without I/O: query parameters in, the reader's rows in,
the answer (a JSON document or CSV text) out.

The rows come from a ``UsageReader`` (ccr_gateway.admin_ledger adapts the ledger's stores and
ledger.reports' SQL to it: the ledger is a service of its own, which the control plane does not
import). A usage row is ``{group key: value, metric: sum}`` with costs as Decimal and ``errors``
None where the ledger's daily rollup answered (it does not count errors); a series row is
``{"t": "YYYY-MM-DD[THH]", "series": value | None, requests, input_tokens, output_tokens,
cost_usd, cost_avoided_usd}``.

Every time is UTC. Costs in /usage are decimal strings with 6 decimals (exact, as `usage report
--format json` prints them: a reconciliation must not add float noise); in /usage/series they are
numbers, rounded to 6 decimals (chart values).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from ccr.v1.time_options import parse_time as parse_shared_time
from control_plane.admin.errors import AdminError

BY_KEYS = ("tenant", "key_id", "model", "provider", "day")
SERIES_BY = ("tenant", "model", "key_id", "provider", "none")
STEPS = ("hour", "day")
FORMATS = ("json", "csv")
METRICS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cost_usd",
    "cost_avoided_usd",
    "cache_hits",
    "errors",
)
SERIES_METRICS = ("requests", "cost_usd", "input_tokens", "output_tokens", "cost_avoided_usd")
COSTS = ("cost_usd", "cost_avoided_usd")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
DEFAULT_SINCE = "7d"  # /usage, as `usage report`
# Series windows: hourly points are read from the records themselves (the rollup is daily), so
# their window is bounded; a daily window is bounded by how many points a chart can show.
MAX_WINDOW = {"hour": timedelta(days=7), "day": timedelta(days=400)}
DEFAULT_SERIES_SINCE = {"hour": "24h", "day": "30d"}
SERIES_ALL = "all"  # the one series' name with by=none


class UsageReader(Protocol):
    """What the usage routes need from the ledger; raises AdminError(503) when it is unreadable."""

    async def usage(
        self, since: datetime, until: datetime, by: Sequence[str], tenant: str | None
    ) -> list[dict[str, Any]]: ...

    async def series(
        self, since: datetime, until: datetime, step: str, by: str | None, tenant: str | None
    ) -> list[dict[str, Any]]: ...

    async def newest_record(self) -> datetime | None: ...

    async def close(self) -> None: ...


# --- parameters -------------------------------------------------------------------------------


def invalid(path: str, message: str) -> AdminError:
    return AdminError(400, "invalid_request", f"{path}: {message}", [{"path": path, "message": message}])




def parse_time(text: str, now: datetime, name: str) -> datetime:
    """The forms `usage report` takes (ccr.v1.time_options, shared with the ledger's CLI)."""
    try:
        return parse_shared_time(text, now)
    except ValueError:
        raise invalid(name, f"{text!r} is not a time: use 24h, 7d, 30m, 2w, or ISO like 2026-01-31T12:00Z") from None


def _window(query: Mapping[str, Any], now: datetime, since_default: str) -> tuple[datetime, datetime]:
    since = parse_time(str(query.get("since") or since_default), now, "since")
    until = parse_time(str(query["until"]), now, "until") if query.get("until") else now
    if until <= since:
        raise invalid("until", f"{iso(until)} is not after since ({iso(since)})")
    return since, until


def _limit(query: Mapping[str, Any]) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise invalid("limit", f"{raw!r} is not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def _names(text: str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in names if part not in allowed]
    if unknown:
        raise invalid(name, f"{', '.join(unknown)}: use any of {', '.join(allowed)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class UsageParams:
    since: datetime
    until: datetime
    by: tuple[str, ...]
    format: str
    after: list[Any] | None  # the sort key a cursor holds: rows after it
    limit: int


def usage_params(query: Mapping[str, Any], now: datetime) -> UsageParams:
    """GET /usage's query (strings, or what the server typed) -> UsageParams; AdminError 400 for
    a bad one (a bad cursor included)."""
    since, until = _window(query, now, DEFAULT_SINCE)
    by = _names(str(query.get("by") or ""), BY_KEYS, "by")
    fmt = str(query.get("format") or "json")
    if fmt not in FORMATS:
        raise invalid("format", f"{fmt!r}: use json or csv")
    cursor = str(query.get("cursor") or "")
    if cursor and not by:
        raise invalid("cursor", "an ungrouped usage answer is one row: there is no next page")
    after = decode_cursor(cursor) if cursor else None
    if after is not None and not _is_sort_key(after, len(by)):
        raise invalid("cursor", "not a cursor of this listing (was `by` changed?)")
    return UsageParams(since, until, by, fmt, after, _limit(query))


# Cursors are opaque to callers: base64url of the JSON of the last row's sort key (the contract's
# form; kept here rather than shared so that this listing's cursors depend on nothing else).
def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise invalid("cursor", "not a cursor of this API") from None


@dataclass(frozen=True, slots=True)
class SeriesParams:
    since: datetime  # aligned to the step: whole hours or whole UTC days
    until: datetime
    step: str
    by: str | None


def series_params(query: Mapping[str, Any], now: datetime) -> SeriesParams:
    """GET /usage/series's query -> SeriesParams. The window is widened to whole steps (since
    down, until up) so that the first and last points are not partial; an hourly window longer
    than MAX_WINDOW["hour"] is a 400 (it would be read from the raw records)."""
    step = str(query.get("step") or "day")
    if step not in STEPS:
        raise invalid("step", f"{step!r}: use hour or day")
    by_text = str(query.get("by") or "none")
    if by_text not in SERIES_BY:
        raise invalid("by", f"{by_text!r}: use one of {', '.join(SERIES_BY)}")
    since, until = _window(query, now, DEFAULT_SERIES_SINCE[step])
    since, until = floor_step(since, step), ceil_step(until, step)
    if until - since > MAX_WINDOW[step]:
        days = MAX_WINDOW[step].days
        raise invalid("since", f"step={step} covers at most {days} days; ask a shorter window or step=day")
    return SeriesParams(since, until, step, None if by_text == "none" else by_text)


def floor_step(moment: datetime, step: str) -> datetime:
    moment = moment.astimezone(UTC)
    if step == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return datetime.combine(moment.date(), datetime.min.time(), UTC)


def ceil_step(moment: datetime, step: str) -> datetime:
    floor = floor_step(moment, step)
    return floor if floor == moment else floor + (timedelta(hours=1) if step == "hour" else timedelta(days=1))


# --- /usage -----------------------------------------------------------------------------------


def sort_key(row: Mapping[str, Any], by: Sequence[str]) -> list[list[Any]]:
    """The order rows come in (ledger.reports.usage_rows: None last), JSON-able for a cursor."""
    return [[row.get(key) is None, row.get(key) or ""] for key in by]


def _is_sort_key(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(
            isinstance(item, list) and len(item) == 2 and isinstance(item[0], bool) and isinstance(item[1], str)
            for item in value
        )
    )


def page(
    rows: Sequence[Mapping[str, Any]], by: Sequence[str], after: list[Any] | None, limit: int
) -> tuple[list[Mapping[str, Any]], list[list[Any]] | None]:
    """The ``limit`` rows after the cursor's key, and the key to continue after (None: the last
    page). Rows are in sort_key order; a cursor is a key, not an offset, so a group appearing
    between two pages neither repeats nor hides a row."""
    start = 0
    if after is not None:
        marker = [tuple(item) for item in after]
        start = next(
            (i for i, row in enumerate(rows) if [tuple(item) for item in sort_key(row, by)] > marker), len(rows)
        )
    chosen = list(rows[start : start + limit])
    more = start + limit < len(rows)
    return chosen, (sort_key(chosen[-1], by) if more and chosen else None)


def _cost(value: Decimal | None) -> str:
    return f"{value or Decimal(0):.6f}"


def _metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in METRICS:
        value = row.get(name)
        out[name] = _cost(value) if name in COSTS else value
    return out


def total(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sums over every row (not only a page's); errors None when any row's is."""
    sums: dict[str, Any] = {name: Decimal(0) if name in COSTS else 0 for name in METRICS}
    for row in rows:
        for name in METRICS:
            value = row.get(name)
            sums[name] = None if sums[name] is None or value is None else sums[name] + value
    return sums


def usage_body(params: UsageParams, rows: Sequence[Mapping[str, Any]], tenant: str | None) -> dict[str, Any]:
    """The JSON answer for one page of ``rows`` (all of them, in sort_key order): ``rows``
    (``group`` and the metrics), the ``total`` of every row, ``next_cursor``, and the window and
    scope it covers."""
    chosen, after = page(rows, params.by, params.after, params.limit)
    return {
        "rows": [{"group": {key: row.get(key) for key in params.by}, **_metrics(row)} for row in chosen],
        "total": _metrics(total(rows)),
        "next_cursor": encode_cursor(after) if after is not None else None,
        "since": iso(params.since),
        "until": iso(params.until),
        "by": list(params.by),
        "tenant": tenant,
        "time_zone": "UTC",
    }


def usage_csv(params: UsageParams, rows: Sequence[Mapping[str, Any]]) -> str:
    """Every row (no pages: a download), then a ``total`` line; first column ``line``, as in
    `usage report --format csv`. An uncounted ``errors`` is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["line", *params.by, *METRICS])

    def cells(row: Mapping[str, Any]) -> list[Any]:
        return ["" if value is None else value for value in _metrics(row).values()]

    for row in rows:
        writer.writerow(["group", *("" if row.get(key) is None else row.get(key) for key in params.by), *cells(row)])
    writer.writerow(["total", *([""] * len(params.by)), *cells(total(rows))])
    return buffer.getvalue()


# --- /usage/series ----------------------------------------------------------------------------


def point_time(bucket: str) -> str:
    """A bucket as the rows carry it ("YYYY-MM-DD" or "YYYY-MM-DDTHH") -> its start, ISO UTC."""
    return f"{bucket}T00:00:00Z" if len(bucket) == 10 else f"{bucket}:00:00Z"


def series_body(params: SeriesParams, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Points in time order, then series order; a bucket with no request has no point (zero).
    ``series`` is "all" with by=none, else the group's value (null: records without one)."""
    points = []
    for row in sorted(rows, key=lambda r: (r["t"], r.get("series") is None, r.get("series") or "")):
        point: dict[str, Any] = {
            "t": point_time(str(row["t"])),
            "series": SERIES_ALL if params.by is None else row.get("series"),
        }
        for name in SERIES_METRICS:
            value = row.get(name) or 0
            point[name] = round(float(value), 6) if name in COSTS else int(value)
        points.append(point)
    return {
        "step": params.step,
        "by": params.by or "none",
        "since": iso(params.since),
        "until": iso(params.until),
        "time_zone": "UTC",
        "points": points,
    }


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
