"""How fast the ledger stores records: publish N records through a RabbitPublisher, time until the
writer has committed them all.

    python -m ledger.bench --records 50000 --amqp amqp://guest:guest@127.0.0.1:5672/ \
        --postgres postgresql://postgres@127.0.0.1/ledger_bench

The run uses queues of its own (deleted after) and records under a tenant of its own (their rows
and rollup deleted after), so any ledger database will do; the publisher and the writer share one
process and one event loop, as a worst case for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
import uuid

import aio_pika
import asyncpg

from ccr.v1.usage_record import UsageRecord, time_of
from ledger.env import expand_env
from ledger.publisher import PublisherConfig, RabbitPublisher
from ledger.topology import QueueNames
from ledger.writer import LedgerWriter, WriterConfig

log = logging.getLogger(__name__)


def bench_records(count: int, tenant: str) -> list[UsageRecord]:
    now = time.time()
    return [
        UsageRecord(
            request_id=f"{tenant}-{index}",
            time=time_of(now + index / 1e6),
            client_api="anthropic",
            endpoint="/v1/messages",
            requested_model="claude-sonnet",
            status=200,
            stream=True,
            input_tokens=1200 + index % 100,
            output_tokens=300,
            cache_read_tokens=800,
            cache_creation_tokens=0,
            cost_usd=0.0123,
            usage_source="provider",
            duration_ms=850.0,
            tenant=tenant,
            key_id=f"key-{index % 10}",
            scenario="default",
            provider="anthropic",
            model="claude-sonnet-4",
            attempts=1,
            ttfb_ms=120.0,
            session_id=f"session-{index % 50}",
        )
        for index in range(count)
    ]


async def writer_throughput(
    records: int = 50_000,
    *,
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres",
    records_per_put: int = 10,
    batch_records: int = 5000,
    timeout: float = 120.0,
) -> float:
    """Records per second, from the first put to the last commit."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    names = QueueNames.for_queue(f"ccr.bench.{tenant}")
    made = bench_records(records, tenant)
    stop = asyncio.Event()
    writer = LedgerWriter(
        WriterConfig(amqp_url=amqp_url, postgres_dsn=postgres_dsn, names=names, batch_records=batch_records)
    )
    with tempfile.TemporaryDirectory(prefix="ccr-ledger-bench-") as spool_dir:
        publisher = RabbitPublisher(PublisherConfig(url=amqp_url, spool_dir=spool_dir, names=names))
        publisher.start()
        writer_task = asyncio.create_task(writer.run(stop))
        try:
            started = time.perf_counter()
            put_seconds = 0.0
            for index in range(0, records, records_per_put):
                before = time.perf_counter()
                publisher.put(made[index : index + records_per_put])
                put_seconds += time.perf_counter() - before
                if index % (records_per_put * 200) == 0:
                    await asyncio.sleep(0)  # a gateway's puts come between its requests' awaits
            deadline = started + timeout
            while writer.committed_records < records and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            if writer.committed_records < records:
                raise TimeoutError(f"{writer.committed_records} of {records} records committed in {timeout}s")
        finally:
            stop.set()
            await publisher.close()
            await writer_task
    rate = records / elapsed
    puts = -(-records // records_per_put)
    log.warning(
        "ledger bench: %d records (%d per put) committed in %.2fs: %.0f records/s; put() %.2f µs",
        records,
        records_per_put,
        elapsed,
        rate,
        put_seconds / puts * 1e6,
    )
    await _clean_up(amqp_url, postgres_dsn, names, tenant)
    return rate


async def _clean_up(amqp_url: str, postgres_dsn: str, names: QueueNames, tenant: str) -> None:
    connection = await aio_pika.connect(expand_env(amqp_url))
    async with connection:
        channel = await connection.channel()
        for queue in (names.queue, names.dead_letter_queue):
            await channel.queue_delete(queue)
        for exchange in (names.exchange, names.dead_letter_exchange):
            await channel.exchange_delete(exchange)
    database = await asyncpg.connect(expand_env(postgres_dsn))
    with contextlib.suppress(asyncpg.PostgresError):
        await database.execute("DELETE FROM usage_records WHERE tenant = $1", tenant)
        await database.execute("DELETE FROM usage_daily WHERE tenant = $1", tenant)
    await database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--records-per-put", type=int, default=10)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rate = asyncio.run(
        writer_throughput(
            args.records, amqp_url=args.amqp, postgres_dsn=args.postgres, records_per_put=args.records_per_put
        )
    )
    print(f"{rate:.0f} records/s")


if __name__ == "__main__":
    main()
