"""The ledger's commands and start-up paths against the real services: migrations (twice, two at
once, and onto a database an older version made), the dead-letter queue's list and replay, a spool
left by a previous run, SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika
import asyncpg
import orjson
import pytest

from ccr.v1.usage_record import FIELDS, UsageRecord, decode_batch, encode_batch, record_from_dict
from ledger import pg_schema, reports, usage_cli
from ledger.dead_letters import list_dead_letters, replay
from ledger.publisher import PublisherConfig, RabbitPublisher
from ledger.spool import Spool, SpoolEntry
from ledger.stores import PostgresStore, StoreError
from ledger.topology import declare
from tests.integration.ledger_helpers import count_rows, eventually, make_records

# How the lead registers the commands (one PLUGIN_COMMANDS line each), done here without editing it.
RUN_CLI = """
import sys
from ccr_gateway import cli
cli.PLUGIN_COMMANDS["ledger"] = ("the usage ledger writer", "ledger.cli", "")
cli.PLUGIN_COMMANDS["db"] = ("the ledger database", "ledger.db_cli", "")
cli.PLUGIN_COMMANDS["audit"] = ("the audit log", "audit.cli", "")
cli.main(sys.argv[1:])
"""


async def run_cli(*argv: str, timeout: float = 20) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_CLI, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(), err.decode()


async def test_two_migrations_at_once_apply_each_step_once(postgres_dsn):
    schema = f"migrate_{uuid.uuid4().hex[:8]}"
    connections = [await asyncpg.connect(postgres_dsn, server_settings={"search_path": schema}) for _ in range(2)]
    try:
        await connections[0].execute(f"CREATE SCHEMA {schema}")
        results = await asyncio.gather(*(pg_schema.migrate(connection) for connection in connections))
        assert sorted(len(applied) for applied in results) == [0, len(pg_schema.MIGRATIONS)]
        assert await pg_schema.migrate(connections[0]) == []
        assert await pg_schema.schema_variant(connections[0]) == pg_schema.NATIVE
    finally:
        await connections[0].execute(f"DROP SCHEMA {schema} CASCADE")
        for connection in connections:
            await connection.close()


@pytest.fixture
def audit_log(tmp_path, monkeypatch) -> str:
    """The commands' audit log: a local file of the test's own, with a key of its own."""
    path = str(tmp_path / "audit.db")
    monkeypatch.setenv("CCR_AUDIT_SQLITE", path)
    monkeypatch.setenv("CCR_AUDIT_KEY", "cd" * 32)
    monkeypatch.setenv("CCR_AUDIT_ACTOR", "ops-test")
    for name in ("CCR_AUDIT", "CCR_AUDIT_POSTGRES"):
        monkeypatch.delenv(name, raising=False)
    return path


async def audit_entries(path: str) -> list[tuple[str, str, dict]]:
    """(action, actor, details) of every entry, oldest first; `audit verify` must pass."""
    status, out, err = await run_cli("audit", "verify", "--sqlite", path)
    assert status == 0, out + err
    status, out, err = await run_cli("audit", "export", "--sqlite", path)
    assert status == 0, err
    entries = [orjson.loads(line) for line in out.splitlines()]
    return [(entry["action"], entry["actor"], entry["details"]) for entry in entries]


async def test_db_migrate_prints_what_it_applied_then_that_it_is_up_to_date(postgres_dsn, audit_log):
    fresh = f"ccr_ledger_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f"CREATE DATABASE {fresh}")
    dsn = postgres_dsn.rsplit("/", 1)[0] + f"/{fresh}"
    try:
        status, out, _ = await run_cli("db", "migrate", "--postgres", dsn)
        assert status == 0
        assert "applied 0001_usage_records (native)" in out and "applied 0002_usage_daily (native)" in out
        assert "applied 0003_cost_avoided (native)" in out
        status, out, _ = await run_cli("db", "migrate", "--postgres", dsn)
        assert status == 0 and "up to date (native partitioning)" in out
        # One entry: the run that changed the schema (the second changed nothing).
        ((action, who, details),) = await audit_entries(audit_log)
        assert (action, who) == ("db.migrate", "ops-test")
        assert details["applied"][:3] == [
            "0001_usage_records (native)",
            "0002_usage_daily (native)",
            "0003_cost_avoided (native)",
        ]
        status, _, err = await run_cli("db", "migrate", "--postgres", "postgresql://u:${NOT_SET_ANYWHERE}@h/db")
        assert status == 2 and "NOT_SET_ANYWHERE is not set" in err
    finally:
        await admin.execute(f"DROP DATABASE {fresh} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def fresh_database(postgres_dsn) -> AsyncIterator[str]:
    """A database of its own (dropped after), with no ledger in it yet."""
    name = f"ccr_ledger_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


def _day_of_records(prefix: str, hour: int, count: int, hits: bool = False) -> list[UsageRecord]:
    """Records of acme on 2026-12-01 from ``hour``; with ``hits``, every other one a cache hit."""
    records = make_records(count, prefix, start=datetime(2026, 12, 1, hour, tzinfo=UTC).timestamp())
    hit = dict(cache="hit", input_tokens=0, output_tokens=0, cache_read_tokens=0, cost_usd=0.0, cost_avoided_usd=0.1)
    return [
        dataclasses.replace(record, tenant="acme", **(hit if hits and index % 2 else {}))
        for index, record in enumerate(records)
    ]


async def _store_as_the_version_before(connection: asyncpg.Connection, records: list[UsageRecord]) -> None:
    """Rows and their rollup as the writer before cost_avoided_usd stored them."""
    columns = [name for name in FIELDS if name not in ("cost_avoided_usd", "batch_id")]
    rows = [pg_schema.record_row(record)[: len(columns)] for record in records]
    await connection.copy_records_to_table("usage_records", records=rows, columns=columns)
    await connection.execute(
        "INSERT INTO usage_daily VALUES ('2026-12-01', 'acme', 'key-1', 'fake', 'fake-model', $1, $2, $3, $4, 0, $5)",
        len(records),
        sum(record.input_tokens for record in records),
        sum(record.output_tokens for record in records),
        sum(record.cache_read_tokens for record in records),
        Decimal(str(sum(record.cost_usd for record in records))),
    )


async def test_a_ledger_from_before_cost_avoided_is_migrated_keeping_its_rows_and_rollup(fresh_database, monkeypatch):
    old_records, new_records = _day_of_records("old", 12, 6), _day_of_records("new", 13, 10, hits=True)
    connection = await asyncpg.connect(fresh_database)
    try:
        with monkeypatch.context() as before:
            before.setattr(pg_schema, "MIGRATIONS", pg_schema.MIGRATIONS[:2])
            assert len(await pg_schema.migrate(connection, use_timescaledb=False)) == 2
        await _store_as_the_version_before(connection, old_records)
        with pytest.raises(StoreError, match=r"older than this ccr-gateway \(no cost_avoided_usd, batch_id\).*db migrate"):
            await PostgresStore.open(fresh_database)  # a report says what to do, not "no such column"

        status, out, err = await run_cli("db", "migrate", "--postgres", fresh_database)
        assert status == 0, err
        assert "applied 0003_cost_avoided (native)" in out and "0002" not in out
        assert "0004_batch_id (native)" in out
        assert await connection.fetchval("SELECT count(*) FROM usage_records WHERE cost_avoided_usd = 0") == 6
        daily = await connection.fetchrow("SELECT requests, cache_hits, cost_usd, cost_avoided_usd FROM usage_daily")
        assert tuple(daily) == (6, 0, Decimal("0.009"), Decimal(0))

        await pg_schema.prepare_connection(connection)
        assert (await pg_schema.store_batch(connection, new_records)).inserted == 10
        assert (await pg_schema.store_batch(connection, new_records)).inserted == 0  # a redelivery adds nothing
        daily = await connection.fetchrow("SELECT requests, cache_hits, cost_usd, cost_avoided_usd FROM usage_daily")
        assert tuple(daily) == (16, 5, Decimal("0.009") + 5 * Decimal("0.0015"), Decimal("0.5"))
    finally:
        await connection.close()

    store = await PostgresStore.open(fresh_database)
    try:
        query = reports.ReportQuery(datetime(2026, 11, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
        total = (await usage_cli.build_report(store, query, datetime.now(UTC))).total
        assert (total.requests, total.cache_hits, total.cost_avoided_usd) == (16, 5, Decimal("0.5"))
        out = io.BytesIO()
        assert await usage_cli.export_records(store, query.since, query.until, out) == 16
        exported = [record_from_dict(orjson.loads(line)) for line in out.getvalue().splitlines()]
        assert exported == old_records + new_records  # the old rows with cost_avoided_usd 0.0
    finally:
        await store.close()


async def test_dlq_list_shows_reasons_and_replay_moves_them_back(amqp_url, queue_names, audit_log):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel, queue_names)
        body = encode_batch(make_records(3, "dead"))
        for reason in ("unreadable batch: records[0]: status: 'x' is not a int", "refused by PostgreSQL: bad"):
            await topology.dead_letter_exchange.publish(
                aio_pika.Message(body, headers={"x-ccr-dead-letter-reason": reason}), ""
            )
    letters, total = await list_dead_letters(amqp_url, queue_names)
    assert total == 2
    assert [(letter.records, letter.reason) for letter in letters] == [
        (3, "unreadable batch: records[0]: status: 'x' is not a int"),
        (3, "refused by PostgreSQL: bad"),
    ]
    status, out, _ = await run_cli("ledger", "dlq", "list", "--amqp", amqp_url, "--queue", queue_names.queue)
    assert status == 0 and "2 dead messages" in out and "refused by PostgreSQL: bad" in out
    assert (await list_dead_letters(amqp_url, queue_names))[1] == 2  # listing leaves them there

    assert await replay(amqp_url, queue_names, limit=1) == 1
    status, out, _ = await run_cli("ledger", "--amqp", amqp_url, "dlq", "replay", "--queue", queue_names.queue)
    assert status == 0 and "moved 1 messages" in out
    ((action, who, details),) = await audit_entries(audit_log)  # the CLI's replay (the call above is not one)
    assert (action, who, details["moved"], details["to"]) == ("ledger.dlq_replay", "ops-test", 1, queue_names.queue)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel, queue_names)
        assert topology.queue.declaration_result.message_count == 2
        assert topology.dead_letter_queue.declaration_result.message_count == 0


async def test_a_spool_left_by_a_previous_run_is_published_first(amqp_url, queue_names, tmp_path):
    left = make_records(20, "leftover")
    spool = Spool(tmp_path / "spool")
    spool.append_many([SpoolEntry(encode_batch(left[i : i + 5]), 5) for i in range(0, 20, 5)])
    spool.close()
    publisher = RabbitPublisher(PublisherConfig(url=amqp_url, spool_dir=str(tmp_path / "spool"), names=queue_names))
    publisher.start()
    fresh = make_records(5, "fresh")
    publisher.put(fresh)
    assert await publisher.wait_drained(10)
    await publisher.close()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_names.queue)
        received = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            received += decode_batch(message.body)
    assert received == left + fresh


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
async def test_the_writer_command_stops_on_sigterm_with_everything_stored(
    amqp_url, postgres_dsn, queue_names, database
):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare(channel, queue_names)
        for index in range(10):
            await topology.exchange.publish(
                aio_pika.Message(encode_batch(make_records(10, f"term{index}"))), queue_names.queue
            )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_CLI,
        "ledger",
        "--amqp",
        amqp_url,
        "--postgres",
        postgres_dsn,
        "--queue",
        queue_names.queue,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    async def stored() -> bool:
        counts = [await count_rows(database, f"term{index}") for index in range(10)]
        return sum(counts) == 100

    await eventually(stored, 15, "100 rows")
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()[-2000:]
