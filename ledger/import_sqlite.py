"""`ccr-gateway db import-sqlite`: move a local SQLite ledger into PostgreSQL.

For the day a laptop setup grows a shared database: the records the gateway kept locally join the
ones the writer stores. The schema is migrated first (ledger.pg_schema.migrate, as `db migrate`
does); then the file is read in batches, oldest first, and each batch stored the way the writer
stores one (ledger.pg_schema.store_batch: ON CONFLICT (request_id, time) DO NOTHING, usage_daily
updated from the rows actually added). So a rerun, or an import of a file partly imported before,
adds only what is missing, and counts the rest as already there.

The SQLite file's records are only read; like any open of it (ledger.local.connect), a file an
older gateway wrote gets the newer columns first, its rows unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ccr.v1.usage_record import FIELDS
from ledger import local
from ledger.env import expand_env, redact_url
from ledger.reports import record_from_row

if TYPE_CHECKING:
    import asyncpg

EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE = 0, 1, 2
BATCH_RECORDS = 1000


@dataclass(frozen=True, slots=True)
class ImportCounts:
    read: int = 0
    inserted: int = 0

    @property
    def already_there(self) -> int:
        return self.read - self.inserted


class SqliteImportError(Exception):
    """The import cannot start or go on; the message names what (never a password)."""


async def import_sqlite(
    sqlite_path: Path | str,
    connection: asyncpg.Connection,  # schema migrated, staging table prepared (see run_import)
    *,
    batch_records: int = BATCH_RECORDS,
    on_batch: Callable[[ImportCounts], None] | None = None,
) -> ImportCounts:
    """Copies every record of the SQLite ledger into PostgreSQL, ``batch_records`` per
    transaction; returns the counts. Reads the file through one cursor, a batch at a time."""
    from ledger import pg_schema

    path = Path(sqlite_path).expanduser()
    try:
        source = await asyncio.to_thread(local.connect, path, create=False)
    except FileNotFoundError:
        raise SqliteImportError(f"no ledger at {path}") from None
    except sqlite3.Error as exc:
        raise SqliteImportError(f"cannot open the ledger {path}: {exc}") from None
    source.row_factory = sqlite3.Row
    counts = ImportCounts()
    try:
        cursor = await asyncio.to_thread(
            source.execute, f"SELECT {', '.join(FIELDS)} FROM usage_records ORDER BY time, request_id"
        )
        while rows := await asyncio.to_thread(cursor.fetchmany, batch_records):
            records = [record_from_row(row) for row in rows]
            stored = await pg_schema.store_batch(connection, records)
            counts = ImportCounts(counts.read + len(records), counts.inserted + stored.inserted)
            if on_batch is not None:
                on_batch(counts)
    finally:
        source.close()
    return counts


async def run_import(
    sqlite_path: Path | str, dsn: str, *, environ: Mapping[str, str] | None = None, batch_records: int = BATCH_RECORDS
) -> ImportCounts:
    """Connects (``${VAR}`` in the DSN expanded), migrates the schema, imports."""
    import asyncpg

    from ledger import pg_schema

    if not Path(sqlite_path).expanduser().is_file():  # said before PostgreSQL is touched
        raise SqliteImportError(f"no ledger at {Path(sqlite_path).expanduser()}")
    shown = redact_url(dsn)
    try:
        connection = await asyncpg.connect(expand_env(dsn, environ))
    except ValueError as exc:  # an unset ${VAR}, or a DSN asyncpg cannot read
        raise SqliteImportError(f"--postgres {shown}: {exc}") from None
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise SqliteImportError(f"cannot connect to PostgreSQL at {shown}: {exc}") from None
    done = ImportCounts()

    def progress(counts: ImportCounts) -> None:
        nonlocal done
        done = counts
        print(f"\r{counts.read} read, {counts.inserted} inserted", end="", file=sys.stderr, flush=True)

    try:
        for applied in await pg_schema.migrate(connection):
            print(f"migrated: {applied}", file=sys.stderr)
        await pg_schema.prepare_connection(connection)
        counts = await import_sqlite(sqlite_path, connection, batch_records=batch_records, on_batch=progress)
    except asyncpg.PostgresError as exc:
        # Batches are committed one by one: what was inserted stays; a rerun adds the rest.
        raise SqliteImportError(
            f"PostgreSQL at {shown}: {exc} (stopped after {done.read} read, {done.inserted} inserted; rerun to go on)"
        ) from None
    finally:
        if done.read:
            print(file=sys.stderr)
        await connection.close()
    return counts


def add_import_sqlite(db_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Adds ``import-sqlite`` to the `db` command's subcommands; sets its func."""
    parser = db_subparsers.add_parser(
        "import-sqlite",
        help="copy a local SQLite ledger into PostgreSQL (rerunnable: nothing is counted twice)",
        description="Copy every record of a local SQLite ledger into PostgreSQL, migrating its schema first. "
        "Records already there are skipped (same request id and time), so it can be rerun; "
        "it prints how many were read, inserted and already there. The SQLite file is left as it was.",
    )
    parser.add_argument(
        "--sqlite", metavar="PATH", help=f"the local ledger file (default {local.default_ledger_path()})"
    )
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        default=os.environ.get("CCR_LEDGER_POSTGRES"),
        help="e.g. postgresql://ledger:${PGPASSWORD}@db/ccr, ${VAR}s from the environment "
        "(default $CCR_LEDGER_POSTGRES, as for `db migrate`)",
    )
    parser.add_argument(
        "--batch-records", type=int, default=BATCH_RECORDS, help=f"records per transaction (default {BATCH_RECORDS})"
    )
    parser.set_defaults(func=run_import_sqlite)
    return parser


def run_import_sqlite(args: argparse.Namespace) -> int:
    if not args.postgres:
        print("ccr-gateway db import-sqlite: give --postgres DSN (or set CCR_LEDGER_POSTGRES)", file=sys.stderr)
        return EXIT_USAGE
    if args.batch_records < 1:
        print("ccr-gateway db import-sqlite: --batch-records must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    path = Path(args.sqlite).expanduser() if args.sqlite else local.default_ledger_path()
    try:
        counts = asyncio.run(run_import(path, args.postgres, batch_records=args.batch_records))
    except SqliteImportError as exc:
        print(f"ccr-gateway db import-sqlite: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"{counts.read} read, {counts.inserted} inserted, {counts.already_there} already there (from {path})")
    return EXIT_OK
