"""The PostgreSQL schema of the ledger: versioned migrations, daily partitions, retention, and the
one statement that stores a batch.

``usage_records`` has one column per ``UsageRecord`` field (the names ``usage export`` and the
reports use) and the key ``(request_id, time)``: a record stored twice is one row. It is
partitioned by day on ``time`` (native range partitioning), with partitions created ahead of time
by the writer and a default partition that takes anything outside them, so no insert is ever
refused for want of a partition. Where the ``timescaledb`` extension is available, the table is a
hypertable instead (daily chunks, compression after 7 days, retention as a policy): the choice is
made once, by the first migration, and recorded with it.

``usage_daily`` is the rollup per (UTC day, tenant, key, provider, model), with its cache hits and the
cost they avoided beside the spend. It is maintained by the
same statement that inserts the records, from the rows that insert actually added, so a batch
delivered twice adds nothing the second time. Absent tenants, keys, providers and models are ''
there (a primary key cannot hold NULL). Retention drops old records, not the rollup: spend per day
stays reportable after the detail is gone.

Two writers starting at once are safe: migrations and partition upkeep each run in one
transaction under an advisory lock. A shipped migration is never edited (databases have run it): a
new column comes in a migration of its own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from ccr.v1.usage_record import FIELDS, UsageRecord, parse_time

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "ledger_schema_migrations"
MIGRATION_LOCK = 7_366_020_401  # pg_advisory_xact_lock keys: any constants unique to the ledger
MAINTENANCE_LOCK = 7_366_020_402
NATIVE, TIMESCALEDB = "native", "timescaledb"
PARTITION_PREFIX = "usage_records_p"
DEFAULT_PARTITION = "usage_records_default"
STAGING_TABLE = "usage_staging"

_COLUMNS = """
    request_id text NOT NULL,
    time timestamptz NOT NULL,
    client_api text NOT NULL,
    endpoint text NOT NULL,
    requested_model text NOT NULL,
    status integer NOT NULL,
    stream boolean NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_creation_tokens bigint NOT NULL,
    cost_usd numeric(20, 10) NOT NULL,
    usage_source text NOT NULL,
    duration_ms double precision NOT NULL,
    tenant text,
    key_id text,
    scenario text,
    provider text,
    model text,
    attempts integer NOT NULL,
    error_type text,
    ttfb_ms double precision,
    session_id text,
    cache text,
    PRIMARY KEY (request_id, time)
"""
_INDEXES = """
CREATE INDEX usage_records_time ON usage_records (time);
CREATE INDEX usage_records_tenant_time ON usage_records (tenant, time);
CREATE INDEX usage_records_provider_model_time ON usage_records (provider, model, time);
CREATE INDEX usage_records_key_time ON usage_records (key_id, time);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    native: str
    timescaledb: str | None = None  # None: the same SQL either way

    def sql(self, variant: str) -> str:
        return self.timescaledb if variant == TIMESCALEDB and self.timescaledb is not None else self.native


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage_records",
        native=f"""
            CREATE TABLE usage_records ({_COLUMNS}) PARTITION BY RANGE (time);
            CREATE TABLE {DEFAULT_PARTITION} PARTITION OF usage_records DEFAULT;
            {_INDEXES}
        """,
        timescaledb=f"""
            CREATE TABLE usage_records ({_COLUMNS});
            {_INDEXES}
            SELECT create_hypertable('usage_records', 'time', chunk_time_interval => INTERVAL '1 day');
            ALTER TABLE usage_records SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'tenant',
                timescaledb.compress_orderby = 'time DESC'
            );
            SELECT add_compression_policy('usage_records', INTERVAL '7 days');
        """,
    ),
    Migration(
        2,
        "usage_daily",
        native="""
            CREATE TABLE usage_daily (
                day date NOT NULL,
                tenant text NOT NULL DEFAULT '',
                key_id text NOT NULL DEFAULT '',
                provider text NOT NULL DEFAULT '',
                model text NOT NULL DEFAULT '',
                requests bigint NOT NULL,
                input_tokens bigint NOT NULL,
                output_tokens bigint NOT NULL,
                cache_read_tokens bigint NOT NULL,
                cache_creation_tokens bigint NOT NULL,
                cost_usd numeric(20, 10) NOT NULL,
                PRIMARY KEY (day, tenant, key_id, provider, model)
            );
            CREATE INDEX usage_daily_tenant_day ON usage_daily (tenant, day);
        """,
    ),
    Migration(
        3,
        "cost_avoided",
        # numeric like cost_usd, not a float: sums stay exact, and match SQLite's (reports.Dialect).
        # A constant default is a catalog change, no rewrite of the rows there; old rows are 0. On
        # a compressed hypertable it needs TimescaleDB 2.6 or later (NOT NULL with a default).
        native="""
            ALTER TABLE usage_records ADD COLUMN cost_avoided_usd numeric(20, 10) NOT NULL DEFAULT 0;
            ALTER TABLE usage_daily ADD COLUMN cache_hits bigint NOT NULL DEFAULT 0;
            ALTER TABLE usage_daily ADD COLUMN cost_avoided_usd numeric(20, 10) NOT NULL DEFAULT 0;
        """,
    ),
    Migration(
        4,
        "batch_id",
        # Nullable, no default: a catalog change only; the rows already there were no batch's.
        native="ALTER TABLE usage_records ADD COLUMN batch_id text;",
    ),
)


# -- migrations --------------------------------------------------------------------------------


async def migrate(connection: asyncpg.Connection, *, use_timescaledb: bool = True) -> list[str]:
    """Apply the migrations this database has not had, in one transaction under an advisory lock
    (a second writer starting at the same time waits, then finds nothing to do). Returns what was
    applied, e.g. ["0001_usage_records (native)"]; [] when up to date."""
    applied_now: list[str] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    variant text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        done = {
            row["version"]: row["variant"]
            for row in await connection.fetch(f"SELECT version, variant FROM {MIGRATIONS_TABLE}")
        }
        variant = done.get(1) or (await _choose_variant(connection) if use_timescaledb else NATIVE)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            await connection.execute(migration.sql(variant))
            await connection.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, variant) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                variant,
            )
            applied_now.append(f"{migration.version:04d}_{migration.name} ({variant})")
    return applied_now


async def _choose_variant(connection: asyncpg.Connection) -> str:
    available = await connection.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not available:
        log.info("ledger: timescaledb is not available; usage_records uses native daily partitions")
        return NATIVE
    try:
        async with connection.transaction():  # a savepoint: listed is not necessarily loadable
            await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        log.warning("ledger: timescaledb is listed but cannot be created (%s); using native partitions", exc)
        return NATIVE
    log.info("ledger: timescaledb is available; usage_records is a hypertable (compression, retention policy)")
    return TIMESCALEDB


async def schema_variant(connection: asyncpg.Connection) -> str | None:
    """native | timescaledb, as the first migration chose; None before it ran."""
    exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE)
    if not exists:
        return None
    return await connection.fetchval(f"SELECT variant FROM {MIGRATIONS_TABLE} WHERE version = 1")


# -- partitions and retention (pure parts first) -----------------------------------------------

_RETENTION = re.compile(r"^\s*(\d+)\s*(d|day|days|w|week|weeks)\s*$", re.IGNORECASE)


def parse_retention(text: str) -> timedelta:
    """ "90 days", "13 weeks", "30d" -> a timedelta; ValueError saying what is accepted."""
    match = _RETENTION.match(text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"retention {text!r}: expected a number of days or weeks, e.g. '90 days'")
    count = int(match.group(1))
    return timedelta(weeks=count) if match.group(2).lower().startswith("w") else timedelta(days=count)


def partition_name(day: date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day a partition of ours holds, from its name; None for any other table."""
    suffix = name.removeprefix(PARTITION_PREFIX)
    if suffix == name or len(suffix) != 8 or not suffix.isdigit():
        return None
    try:
        return datetime.strptime(suffix, "%Y%m%d").date()
    except ValueError:
        return None


def partitions_to_create(today: date, ahead_days: int, existing: set[date]) -> list[date]:
    """Yesterday (late records) through ``ahead_days`` after today, minus those that exist."""
    wanted = [today + timedelta(days=offset) for offset in range(-1, ahead_days + 1)]
    return [day for day in wanted if day not in existing]


def partitions_to_drop(existing: set[date], today: date, retention: timedelta) -> list[date]:
    """Partitions whose whole day is older than ``retention`` (the day ends before the cutoff)."""
    cutoff = today - retention
    return sorted(day for day in existing if day + timedelta(days=1) <= cutoff)


@dataclass(frozen=True, slots=True)
class Upkeep:
    created: list[str]
    dropped: list[str]
    default_rows_deleted: int
    skipped: list[str]  # partitions that could not be created (their day already in the default)


async def maintain(
    connection: asyncpg.Connection, *, retention: timedelta, ahead_days: int = 7, today: date | None = None
) -> Upkeep:
    """Create the coming days' partitions, drop those past retention (native schema), or set the
    retention policy (timescaledb). One transaction, under an advisory lock."""
    today = today or datetime.now(UTC).date()
    variant = await schema_variant(connection)
    if variant == TIMESCALEDB:
        async with connection.transaction():
            await connection.execute("SELECT remove_retention_policy('usage_records', if_exists => true)")
            await connection.execute("SELECT add_retention_policy('usage_records', $1::interval)", retention)
        return Upkeep([], [], 0, [])
    created: list[str] = []
    skipped: list[str] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MAINTENANCE_LOCK)
        rows = await connection.fetch(
            """SELECT child.relname FROM pg_inherits
               JOIN pg_class child ON child.oid = pg_inherits.inhrelid
               JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
               WHERE parent.oid = 'usage_records'::regclass"""
        )
        existing = {day for row in rows if (day := partition_day(row["relname"])) is not None}
        for day in partitions_to_create(today, ahead_days, existing):
            name = partition_name(day)
            try:
                async with connection.transaction():
                    await connection.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF usage_records "
                        f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') TO ('{(day + timedelta(days=1)).isoformat()} 00:00:00+00')"
                    )
                created.append(name)
            except asyncpg.CheckViolationError:
                # The default partition already holds rows of that day: they stay there (still
                # counted, still reported); the day just does not get a partition of its own.
                skipped.append(name)
        dropped = []
        for day in partitions_to_drop(existing, today, retention):
            await connection.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
            dropped.append(partition_name(day))
        status = await connection.execute(
            f"DELETE FROM {DEFAULT_PARTITION} WHERE time < $1",
            datetime.combine(today - retention, datetime.min.time(), UTC),
        )
    return Upkeep(created, dropped, int(status.split()[-1]), skipped)


# -- storing a batch ---------------------------------------------------------------------------

CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} "
    f"(LIKE usage_records INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_ROLLUP_SUMS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cost_usd",
    "cost_avoided_usd",
)
# usage_daily's counts and sums: column -> its aggregate over the rows just inserted.
_ROLLUP = {
    "requests": "count(*)",
    "cache_hits": "count(*) FILTER (WHERE cache = 'hit')",
    **{column: f"sum({column})" for column in _ROLLUP_SUMS},
}
_COLUMN_LIST = ", ".join(FIELDS)
INSERT_FROM_STAGING = f"""
WITH inserted AS (
    INSERT INTO usage_records ({_COLUMN_LIST})
    SELECT DISTINCT ON (request_id, time) {_COLUMN_LIST} FROM {STAGING_TABLE}
    ON CONFLICT (request_id, time) DO NOTHING
    RETURNING time, tenant, key_id, provider, model, cache, {", ".join(_ROLLUP_SUMS)}
), rollup AS (
    INSERT INTO usage_daily AS daily (day, tenant, key_id, provider, model, {", ".join(_ROLLUP)})
    SELECT (time AT TIME ZONE 'UTC')::date, coalesce(tenant, ''), coalesce(key_id, ''),
           coalesce(provider, ''), coalesce(model, ''), {", ".join(_ROLLUP.values())}
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5  -- the same lock order in every writer: no deadlock between two of them
    ON CONFLICT (day, tenant, key_id, provider, model) DO UPDATE SET
        {", ".join(f"{c} = daily.{c} + excluded.{c}" for c in _ROLLUP)}
)
SELECT count(*) AS inserted, max(time) AS newest FROM inserted
"""


_COSTS = ("cost_usd", "cost_avoided_usd")  # numeric(20, 10) columns


def record_row(record: UsageRecord) -> tuple[Any, ...]:
    """A record as the COPY row of ``usage_records``' columns (FIELDS order)."""
    row: list[Any] = []
    for name in FIELDS:
        value = getattr(record, name)
        if name == "time":
            value = parse_time(value)
        elif name in _COSTS:
            value = Decimal(repr(float(value)))  # the float's shortest exact text, not its binary noise
        elif name in ("duration_ms", "ttfb_ms") and value is not None:
            value = float(value)
        row.append(value)
    return tuple(row)


@dataclass(frozen=True, slots=True)
class Stored:
    inserted: int  # rows added; the rest were already there (a redelivery)
    newest: datetime | None


async def store_batch(connection: asyncpg.Connection, records: list[UsageRecord]) -> Stored:
    """Insert the records and their rollup in one transaction; the staging table is the
    connection's own (created by ``prepare_connection``) and empties itself at commit."""
    async with connection.transaction():
        await connection.copy_records_to_table(
            STAGING_TABLE, records=[record_row(record) for record in records], columns=FIELDS
        )
        row = await connection.fetchrow(INSERT_FROM_STAGING)
    return Stored(row["inserted"], row["newest"])


async def prepare_connection(connection: asyncpg.Connection) -> None:
    """Every pooled connection's staging table (temporary: private to the connection)."""
    await connection.execute(CREATE_STAGING)
