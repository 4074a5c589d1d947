"""`ccr-gateway ledger`: the writer service (usage queue -> PostgreSQL), and `ledger dlq list|replay`.

Loaded by ccr_gateway.cli as a plugin command: ``add_arguments(parser)`` then ``run(args)``.
Connection strings may hold ``${VAR}`` references (expanded at connect time, never logged) and
default to $CCR_LEDGER_AMQP / $CCR_LEDGER_POSTGRES, so a password need not be on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from audit.hooks import AdminAudit, AuditKeyError, AuditUnavailable
from ledger.env import EnvError, redact_url
from ledger.topology import QueueNames

log = logging.getLogger(__name__)

EPILOG = """examples:
  ccr-gateway ledger --amqp 'amqp://ledger:${MQ_PASSWORD}@mq:5672/' --postgres 'postgresql://ledger:${PG_PASSWORD}@db/ledger'
  ccr-gateway ledger dlq list --amqp amqp://guest:guest@127.0.0.1:5672/
  ccr-gateway ledger dlq replay --amqp amqp://guest:guest@127.0.0.1:5672/ --limit 10
  ccr-gateway db migrate --postgres postgresql://postgres@127.0.0.1/ledger
"""


def add_amqp_arguments(parser: argparse.ArgumentParser, *, on_subcommand: bool = False) -> None:
    # On a sub-command the options are SUPPRESS'ed when absent, so that `ledger --amqp X dlq list`
    # and `ledger dlq list --amqp X` both work (argparse would otherwise reset them to the default).
    default: Any = argparse.SUPPRESS if on_subcommand else os.environ.get("CCR_LEDGER_AMQP")
    parser.add_argument(
        "--amqp", default=default, metavar="URL", help="RabbitMQ URL (default $CCR_LEDGER_AMQP); ${VAR}s expanded"
    )
    parser.add_argument(
        "--queue",
        default=argparse.SUPPRESS if on_subcommand else "ccr.usage",
        help="the usage queue (default ccr.usage); its exchange has the same name, and NAME.dlx / NAME.dlq "
        "are the dead-letter exchange and queue",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the ledger writer: consume usage batches from RabbitMQ and store each record once in "
        "PostgreSQL (acked only after commit). Runs until SIGTERM/SIGINT, then commits and acks the "
        "batch in hand and exits 0."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_amqp_arguments(parser)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CCR_LEDGER_POSTGRES"),
        metavar="DSN",
        help="PostgreSQL DSN (default $CCR_LEDGER_POSTGRES); ${VAR}s expanded",
    )
    parser.add_argument("--batch-size", type=int, default=5000, help="records per transaction at most (default 5000)")
    parser.add_argument("--batch-ms", type=int, default=200, help="longest wait to fill a batch, in ms (default 200)")
    parser.add_argument("--prefetch", type=int, default=512, help="messages unacked at once (default 512)")
    parser.add_argument("--pool-min", type=int, default=1, help="PostgreSQL connections kept open (default 1)")
    parser.add_argument("--pool-max", type=int, default=4, help="PostgreSQL connections at most (default 4)")
    parser.add_argument(
        "--retention", default="90 days", help="keep records this long: 'N days' or 'N weeks' (default 90 days)"
    )
    parser.add_argument("--partitions-ahead", type=int, default=7, help="daily partitions created ahead (default 7)")
    parser.add_argument(
        "--no-timescaledb", action="store_true", help="native partitions even if timescaledb is available"
    )
    parser.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    parser.set_defaults(func=run, ledger_command=None)

    sub = parser.add_subparsers(dest="ledger_command", metavar="{dlq}")
    dlq = sub.add_parser("dlq", help="the dead-letter queue: list | replay")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="{list,replay}")
    listing = dlq_sub.add_parser("list", help="each dead message's reason and record count (left in place)")
    add_amqp_arguments(listing, on_subcommand=True)
    listing.add_argument("--limit", type=int, default=1000, help="show at most this many (default 1000)")
    moving = dlq_sub.add_parser("replay", help="move dead messages back to the usage queue")
    add_amqp_arguments(moving, on_subcommand=True)
    moving.add_argument("--limit", type=int, default=None, help="move at most this many (default all)")
    moving.add_argument("--actor", help="who, for the audit log (default $CCR_AUDIT_ACTOR, else the OS user)")


def run(args: argparse.Namespace) -> int:
    if not args.amqp:
        print("ccr-gateway ledger: give --amqp URL (or set CCR_LEDGER_AMQP)", file=sys.stderr)
        return 2
    names = QueueNames.for_queue(args.queue) if args.queue != "ccr.usage" else QueueNames()
    try:
        if args.ledger_command == "dlq":
            return _run_loop(_dlq(args, names))
        if not args.postgres:
            print("ccr-gateway ledger: give --postgres DSN (or set CCR_LEDGER_POSTGRES)", file=sys.stderr)
            return 2
        return _run_loop(_writer(args, names))
    except EnvError as exc:
        print(f"ccr-gateway ledger: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. --retention
        print(f"ccr-gateway ledger: {exc}", file=sys.stderr)
        return 2


async def _writer(args: argparse.Namespace, names: QueueNames) -> int:
    from ledger.env import expand_env
    from ledger.writer import LedgerWriter, WriterConfig

    expand_env(args.amqp), expand_env(args.postgres)  # a missing variable: said now, not retried forever
    config = WriterConfig(
        amqp_url=args.amqp,
        postgres_dsn=args.postgres,
        names=names,
        prefetch=args.prefetch,
        batch_records=args.batch_size,
        batch_ms=args.batch_ms,
        pool_min=args.pool_min,
        pool_max=args.pool_max,
        retention=args.retention,
        partitions_ahead_days=args.partitions_ahead,
        use_timescaledb=not args.no_timescaledb,
    )
    writer = LedgerWriter(config)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("ledger writer: %s -> %s", names.queue, redact_url(args.postgres))
    return await writer.run(stop)


async def _dlq(args: argparse.Namespace, names: QueueNames) -> int:
    from ledger.dead_letters import list_dead_letters, replay

    if args.dlq_command == "list":
        letters, total = await list_dead_letters(args.amqp, names, args.limit)
        print(
            f"{names.dead_letter_queue}: {total} dead messages"
            + (f" (first {len(letters)} shown)" if total > len(letters) else "")
        )
        for index, letter in enumerate(letters, 1):
            records = "?" if letter.records is None else str(letter.records)
            again = f", replayed {letter.replayed}x" if letter.replayed else ""
            print(f"{index:>5}  {records:>6} records  {letter.size:>8} bytes{again}  {letter.reason}")
        return 0
    try:
        async with AdminAudit(args.actor) as audit:  # fail closed: no unaudited replay
            moved = await replay(args.amqp, names, args.limit)
            print(f"moved {moved} messages from {names.dead_letter_queue} back to {names.queue}")
            if moved:
                details = {"moved": moved, "to": names.queue, "limit": args.limit}
                try:
                    await audit.record("ledger.dlq_replay", names.dead_letter_queue, redact_url(args.amqp), details)
                except (AuditKeyError, AuditUnavailable) as exc:  # usable a moment ago
                    print(f"ccr-gateway ledger dlq replay: moved, but NOT audited: {exc}", file=sys.stderr)
                    return 1
    except (AuditKeyError, AuditUnavailable) as exc:
        print(f"ccr-gateway ledger dlq replay: the audit log is not usable, nothing moved: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
