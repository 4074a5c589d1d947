"""`ccr-gateway usage report|export` (and, in ledger.import_sqlite, `db import-sqlite`).

  usage report --since 7d --by tenant,model [--until T] [--period day|week|month] [--format table|csv|json]
  usage export --since 2026-01-01 [--until 2026-02-01] [--format jsonl] [-o FILE]
  db import-sqlite [--sqlite PATH] --postgres DSN

Reports and exports read the local SQLite ledger (``--sqlite PATH``, default the gateway's own) or
PostgreSQL (``--postgres DSN``, ``${VAR}`` expanded from the environment). Exit codes: 0 ok, 1 the
store could not be read, 2 a bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import aclosing
from datetime import UTC, datetime
from typing import BinaryIO

from ccr.v1.usage_record import encode_line
from ledger import local, reports
from ledger.stores import StoreError, UsageStore, open_store

EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE = 0, 1, 2


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--sqlite",
        metavar="PATH",
        help=f"the local ledger file (default {local.default_ledger_path()})",
    )
    where.add_argument(
        "--postgres",
        metavar="DSN",
        help="read PostgreSQL instead, e.g. postgresql://reader:${PGPASSWORD}@db/ccr (${VAR} from the environment)",
    )


def add_window_arguments(parser: argparse.ArgumentParser, since_default: str | None) -> None:
    parser.add_argument(
        "--since",
        metavar="TIME",
        default=since_default,
        required=since_default is None,
        help="start (inclusive): 7d, 24h, 30m, 2w ago, or an ISO date/time, UTC unless it has an offset"
        + (f" (default {since_default})" if since_default else ""),
    )
    parser.add_argument("--until", metavar="TIME", help="end (exclusive), same forms (default now)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds report/export under ``parser`` (the `usage` command) and sets func=run."""
    sub = parser.add_subparsers(dest="usage_command", required=True, metavar="ACTION")
    report = sub.add_parser(
        "report",
        help="requests, errors, tokens, cost, cache hits and the cost they avoided per group, with a total (UTC)",
        description="Totals per group over a time window, with a grand total. Times and periods are UTC. "
        "A response-cache hit costs nothing; cost_avoided_usd is what its answer would have cost.",
    )
    add_window_arguments(report, "7d")
    report.add_argument("--by", help=f"group by these, comma-separated: {', '.join(reports.GROUP_KEYS)}")
    report.add_argument(
        "--period",
        choices=reports.PERIODS,
        help="also split per UTC day, week (from Monday) or calendar month, e.g. to match an invoice",
    )
    report.add_argument("--format", choices=reports.FORMATS, default="table", help="output format (default table)")
    add_store_arguments(report)
    export = sub.add_parser(
        "export",
        help="every usage record in a window, one JSON object per line",
        description="Every record with all its fields (their names are the export's), oldest first.",
    )
    add_window_arguments(export, None)
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="output format (jsonl)")
    export.add_argument("-o", "--output", help="write to this file instead of standard output")
    add_store_arguments(export)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        since = reports.parse_time_option(args.since, now, "--since")
        until = reports.parse_time_option(args.until, now, "--until") if args.until else None
        if args.usage_command == "report":
            query = reports.ReportQuery(since, until, reports.parse_group_by(args.by), args.period)
            return asyncio.run(_report(args, query, now))
        if until is not None and until <= since:
            raise reports.ReportError(f"--until ({reports.iso(until)}) must be after --since ({reports.iso(since)})")
        return asyncio.run(_export(args, since, until))
    except reports.ReportError as exc:
        print(f"ccr-gateway usage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"ccr-gateway usage: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


async def _report(args: argparse.Namespace, query: reports.ReportQuery, now: datetime) -> int:
    store = await open_store(args.sqlite, args.postgres)
    try:
        report = await build_report(store, query, now)
    finally:
        await store.close()
    sys.stdout.write(reports.RENDERERS[args.format](report))
    return EXIT_OK


async def build_report(store: UsageStore, query: reports.ReportQuery, now: datetime) -> reports.Report:
    sql, params = reports.report_sql(store.dialect, query)
    rows = await store.fetch_all(sql, params)
    return reports.shape_report(store.dialect, query, rows, now)


async def export_records(store: UsageStore, since: datetime, until: datetime | None, out: BinaryIO) -> int:
    """Writes the window's records to ``out`` as JSON lines, streaming; returns how many."""
    sql, params = reports.export_sql(store.dialect, since, until)
    count = 0
    # aclosing: the stream (its cursor, PostgreSQL's transaction) ends here even when writing
    # fails, not later, after the store is closed.
    async with aclosing(store.stream(sql, params)) as rows:
        async for row in rows:
            out.write(encode_line(reports.record_from_row(row)))
            count += 1
    return count


async def _export(args: argparse.Namespace, since: datetime, until: datetime | None) -> int:
    store = await open_store(args.sqlite, args.postgres)
    try:
        if args.output:
            with open(args.output, "wb") as out:
                count = await export_records(store, since, until, out)
            print(f"{count} records written to {args.output}", file=sys.stderr)
        else:
            try:
                await export_records(store, since, until, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            except BrokenPipeError:  # `usage export ... | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        await store.close()
    return EXIT_OK
