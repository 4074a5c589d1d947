"""Publisher -> RabbitMQ -> writer -> PostgreSQL, against the real services: every record stored
once, through confirms, redeliveries, outages and shutdowns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aio_pika
import pytest

from ccr.v1.usage_record import decode_batch
from ledger.publisher import PublisherConfig, RabbitPublisher
from ledger.topology import QueueNames, declare
from ledger.writer import LedgerWriter, WriterConfig
from tests.integration.ledger_helpers import count_rows, eventually, make_records, metric, rollup_requests
from tests.tcp_proxy import TcpProxy


def publisher_config(url: str, names: QueueNames, spool: Path, **overrides) -> PublisherConfig:
    fast = {"confirm_timeout": 1.0, "connect_timeout": 1.0, "reconnect_min": 0.05, "reconnect_max": 0.5}
    return PublisherConfig(url=url, spool_dir=str(spool), names=names, **{**fast, **overrides})


def writer_config(amqp: str, dsn: str, names: QueueNames, **overrides) -> WriterConfig:
    fast = {"batch_ms": 50, "retry_min": 0.05, "retry_max": 0.5, "shutdown_grace": 2.0, "write_timeout": 2.0}
    return WriterConfig(amqp_url=amqp, postgres_dsn=dsn, names=names, **{**fast, **overrides})


@contextlib.asynccontextmanager
async def running_writer(config: WriterConfig, **kwargs):
    stop = asyncio.Event()
    writer = LedgerWriter(config, **kwargs)
    task = asyncio.create_task(writer.run(stop))
    try:
        yield writer
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def queue_depth(url: str, names: QueueNames) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel, names)
        return topology.queue.declaration_result.message_count or 0


async def test_published_batches_are_confirmed_and_queued_in_order(amqp_url, queue_names, tmp_path):
    before = metric("ccr_ledger_records_published_total")
    publisher = RabbitPublisher(publisher_config(amqp_url, queue_names, tmp_path / "spool", max_records_per_message=4))
    publisher.start()
    records = make_records(30, "confirmed")
    for index in range(0, 30, 3):
        publisher.put(records[index : index + 3])  # waiting together: merged up to 4 records a message
    assert await publisher.wait_drained(10)
    await publisher.close()
    assert metric("ccr_ledger_records_published_total") - before == 30

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_names.queue)
        received = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            batch = decode_batch(message.body)
            assert len(batch) in (3, 4) or batch == records[-len(batch) :]
            received += batch
    assert received == records


async def test_a_published_batch_is_a_rabbitmq_producer_span(amqp_url, queue_names, tmp_path):
    from ccr.v1 import tracing

    exported: list[list[tracing.Span]] = []
    tracing.configure(exported.append, "test", sample=1.0)
    try:
        publisher = RabbitPublisher(publisher_config(amqp_url, queue_names, tmp_path / "spool"))
        publisher.start()
        publisher.put(make_records(3, "traced"))
        assert await publisher.wait_drained(10)
        await publisher.close()
    finally:
        tracing.configure(None)
    spans = [span for batch in exported for span in batch if span.name == "ccr.ledger.publish"]
    assert spans and spans[0].kind == tracing.PRODUCER and spans[0].error is None
    assert spans[0].attributes["messaging.system"] == "rabbitmq"
    assert spans[0].attributes["messaging.destination.name"] == queue_names.queue


async def test_every_record_is_stored_once_with_its_rollup(amqp_url, postgres_dsn, queue_names, database, tmp_path):
    publisher = RabbitPublisher(publisher_config(amqp_url, queue_names, tmp_path / "spool"))
    publisher.start()
    records = make_records(2000, "once")
    async with running_writer(writer_config(amqp_url, postgres_dsn, queue_names)):
        for index in range(0, len(records), 10):
            publisher.put(records[index : index + 10])
        # the same batch published again (a confirm lost in transit) changes nothing
        publisher.put(records[:10])
        await eventually(lambda: _equals(count_rows(database, "once"), 2000), 20, "2000 rows")
        await asyncio.sleep(0.2)
    await publisher.close()
    assert await count_rows(database, "once") == 2000
    assert await rollup_requests(database) == 2000
    tokens = await database.fetchval("SELECT sum(input_tokens) FROM usage_daily")
    assert tokens == sum(record.input_tokens for record in records)


async def test_a_crash_between_commit_and_ack_redelivers_without_double_counting(
    amqp_url, postgres_dsn, queue_names, database, tmp_path
):
    publisher = RabbitPublisher(publisher_config(amqp_url, queue_names, tmp_path / "spool"))
    publisher.start()
    records = make_records(500, "crash")
    for index in range(0, 500, 5):
        publisher.put(records[index : index + 5])
    assert await publisher.wait_drained(10)
    await publisher.close()
    queued = await queue_depth(amqp_url, queue_names)

    class Crash(BaseException):
        """Not an Exception: nothing in the writer catches it, as with a SIGKILL."""

    def crash_after_commit(inserted: int) -> None:
        raise Crash

    stop = asyncio.Event()
    crashing = LedgerWriter(writer_config(amqp_url, postgres_dsn, queue_names), on_committed=crash_after_commit)
    with pytest.raises(Crash):
        await asyncio.wait_for(crashing.run(stop), 20)
    committed_before_crash = await count_rows(database, "crash")
    assert committed_before_crash > 0  # committed, never acked: all of it comes back
    assert await queue_depth(amqp_url, queue_names) == queued

    async with running_writer(writer_config(amqp_url, postgres_dsn, queue_names)):
        await eventually(lambda: _queue_empty(amqp_url, queue_names), 20, "queue drained")
    assert await count_rows(database, "crash") == 500
    assert await rollup_requests(database) == 500
    duplicates = await database.fetchval(
        "SELECT count(*) FROM (SELECT request_id FROM usage_records GROUP BY request_id HAVING count(*) > 1) d"
    )
    assert duplicates == 0


async def test_a_broker_outage_under_load_spools_and_replays_everything(
    amqp_url, postgres_dsn, queue_names, database, tmp_path
):
    host, port = "127.0.0.1", int(amqp_url.rsplit(":", 1)[1].split("/")[0])
    spooled_before = metric("ccr_ledger_records_spooled_total")
    replayed_before = metric("ccr_ledger_records_replayed_total")
    with TcpProxy(host, port) as proxy:
        proxied = amqp_url.replace(f":{port}/", f":{proxy.port}/")
        publisher = RabbitPublisher(publisher_config(proxied, queue_names, tmp_path / "spool"))
        publisher.start()
        records = make_records(6000, "outage")
        async with running_writer(writer_config(amqp_url, postgres_dsn, queue_names)):
            started = time.monotonic()
            outage = {1.0: proxy.cut, 2.0: lambda: proxy.cut(blackhole=True), 3.5: proxy.restore}
            for index in range(0, 6000, 3):  # ~4 s of load at ~1500 records/s
                publisher.put(records[index : index + 3])
                if outage and time.monotonic() - started >= min(outage):
                    outage.pop(min(outage))()  # reset, then a dead peer (confirms time out), then back
                await asyncio.sleep(0.002)
            assert not outage
            assert await publisher.wait_drained(20)
            await eventually(lambda: _equals(count_rows(database, "outage"), 6000), 20, "6000 rows")
        await publisher.close()
    assert metric("ccr_ledger_records_spooled_total") > spooled_before
    assert metric("ccr_ledger_records_replayed_total") - replayed_before == (
        metric("ccr_ledger_records_spooled_total") - spooled_before
    )
    assert metric("ccr_ledger_spool_bytes") == 0
    assert not list((tmp_path / "spool").glob("*.seg")) or all(
        path.stat().st_size == 0 for path in (tmp_path / "spool").glob("*.seg")
    )


async def test_a_database_outage_holds_the_batch_until_postgres_is_back(
    amqp_url, postgres_dsn, queue_names, database, tmp_path
):
    host_port = postgres_dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxied = postgres_dsn.replace(f"@{host_port}/", f"@{proxy.address}/")
        publisher = RabbitPublisher(publisher_config(amqp_url, queue_names, tmp_path / "spool"))
        publisher.start()
        records = make_records(1000, "dbdown")
        async with running_writer(writer_config(amqp_url, proxied, queue_names)):
            publisher.put(records[:100])
            await eventually(lambda: _equals(count_rows(database, "dbdown"), 100), 10, "first 100 rows")
            proxy.cut()
            for index in range(100, 1000, 10):
                publisher.put(records[index : index + 10])
            await asyncio.sleep(2)
            assert await count_rows(database, "dbdown") == 100  # nothing stored while away, nothing lost:
            proxy.restore()
            await eventually(lambda: _equals(count_rows(database, "dbdown"), 1000), 20, "1000 rows")
        await publisher.close()
    assert await rollup_requests(database) == 1000


async def test_stop_finishes_the_batch_in_hand(amqp_url, postgres_dsn, queue_names, database, tmp_path):
    publisher = RabbitPublisher(publisher_config(amqp_url, queue_names, tmp_path / "spool"))
    publisher.start()
    publisher.put(make_records(50, "stop"))
    assert await publisher.wait_drained(10)
    await publisher.close()
    stop = asyncio.Event()
    writer = LedgerWriter(writer_config(amqp_url, postgres_dsn, queue_names, batch_ms=2000))
    task = asyncio.create_task(writer.run(stop))
    await eventually(lambda: _true(writer.records_in_hand == 50), 10, "the writer took the batch")
    stop.set()  # within the 2 s batch window: the batch is committed and acked before exit
    assert await asyncio.wait_for(task, 10) == 0
    assert await count_rows(database, "stop") == 50
    assert await queue_depth(amqp_url, queue_names) == 0


async def test_an_unreadable_message_goes_to_the_dead_letter_queue_with_its_reason(
    amqp_url, postgres_dsn, queue_names, database
):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel, queue_names)
        await topology.exchange.publish(aio_pika.Message(b'{"v": 1, "records": [{"nope": 1}]}'), queue_names.queue)
        await topology.exchange.publish(
            aio_pika.Message(make_records(1, "good")[0].as_dict().__repr__().encode()), queue_names.queue
        )
    from ccr.v1.usage_record import encode_batch

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel, queue_names)
        await topology.exchange.publish(aio_pika.Message(encode_batch(make_records(5, "good"))), queue_names.queue)
    before = metric("ccr_ledger_dead_lettered_total")
    async with running_writer(writer_config(amqp_url, postgres_dsn, queue_names)):
        await eventually(lambda: _equals(count_rows(database, "good"), 5), 10, "the good batch stored")
    assert metric("ccr_ledger_dead_lettered_total") - before == 2
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(queue_names.dead_letter_queue)
        reasons = []
        while (message := await dlq.get(no_ack=True, fail=False)) is not None:
            reasons.append(message.headers["x-ccr-dead-letter-reason"])
    assert len(reasons) == 2
    assert "records[0]: unknown fields: nope" in reasons[0]


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected


async def _queue_empty(url: str, names: QueueNames) -> bool:
    return await queue_depth(url, names) == 0


async def _true(value: bool) -> bool:
    return value
