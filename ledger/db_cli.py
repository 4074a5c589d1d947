"""`ccr-gateway db migrate`: bring the ledger's PostgreSQL schema up to date (idempotent; safe to
run while writers are running or starting: the migrations take an advisory lock)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from audit.hooks import AdminAudit, AuditKeyError, AuditUnavailable
from ledger.env import EnvError, expand_env, redact_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "The ledger's PostgreSQL database."
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="{migrate,import-sqlite}")
    migrate = sub.add_parser("migrate", help="apply the ledger schema migrations not yet applied, and print them")
    migrate.add_argument(
        "--postgres",
        default=os.environ.get("CCR_LEDGER_POSTGRES"),
        metavar="DSN",
        help="PostgreSQL DSN (default $CCR_LEDGER_POSTGRES); ${VAR}s expanded",
    )
    migrate.add_argument(
        "--no-timescaledb", action="store_true", help="native partitions even if timescaledb is available"
    )
    migrate.add_argument(
        "--retention", default="90 days", help="also drop partitions older than this (default 90 days)"
    )
    migrate.add_argument("--actor", help="who, for the audit log (default $CCR_AUDIT_ACTOR, else the OS user)")
    parser.set_defaults(func=run)
    from ledger.import_sqlite import add_import_sqlite

    add_import_sqlite(sub)  # sets its own func: a sub-command's defaults win over db's


def run(args: argparse.Namespace) -> int:
    if not args.postgres:
        print("ccr-gateway db migrate: give --postgres DSN (or set CCR_LEDGER_POSTGRES)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_migrate(args))
    except (AuditKeyError, AuditUnavailable) as exc:
        print(f"ccr-gateway db migrate: the audit log is not usable, nothing changed: {exc}", file=sys.stderr)
        return 1
    except (EnvError, ValueError) as exc:
        print(f"ccr-gateway db migrate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ccr-gateway db migrate: cannot reach PostgreSQL at {redact_url(args.postgres)}: {exc}", file=sys.stderr)
        return 1


async def _migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from ledger import pg_schema

    retention = pg_schema.parse_retention(args.retention)
    async with AdminAudit(args.actor) as audit:  # fail closed: no unaudited schema change
        try:
            connection = await asyncpg.connect(expand_env(args.postgres), timeout=10)
        except asyncpg.PostgresError as exc:
            print(f"ccr-gateway db migrate: {redact_url(args.postgres)}: {exc}", file=sys.stderr)
            return 1
        try:
            applied = await pg_schema.migrate(connection, use_timescaledb=not args.no_timescaledb)
            upkeep = await pg_schema.maintain(connection, retention=retention)
            variant = await pg_schema.schema_variant(connection)
        finally:
            await connection.close()
        if applied or upkeep.dropped:  # a changed schema, or usage records deleted
            details = {"applied": list(applied), "partitions_dropped": list(upkeep.dropped), "retention": args.retention}
            try:
                await audit.record("db.migrate", redact_url(args.postgres), "ccr-gateway db migrate", details)
            except (AuditKeyError, AuditUnavailable) as exc:  # usable a moment ago
                print(f"ccr-gateway db migrate: done, but NOT audited: {exc}", file=sys.stderr)
                return 1
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"{redact_url(args.postgres)}: up to date ({variant} partitioning)")
    if upkeep.created:
        print(f"partitions created: {', '.join(upkeep.created)}")
    if upkeep.dropped:
        print(f"partitions dropped (older than {args.retention}): {', '.join(upkeep.dropped)}")
    return 0
