"""The batch worker against the real gateway (Envoy + ext_proc, the session's `gateway`): an
Anthropic batch for gpt-4o, an OpenAI-format model of the base policy, so every item is translated
both ways. In process on the in-process lanes, then as `ccr-gateway batch-worker` processes on the
real RabbitMQ and PostgreSQL, one SIGKILLed mid-batch and another started in its place.

Exactly once: every item ends succeeded once (the store keeps one outcome per item) with the
answer to its own request (the fake provider echoes the prompt, which is the custom_id). The
provider's request count (Envoy's upstream counter for the fake-openai cluster; the fake keeps only
its last 100 requests) is exactly the item count without a kill; with one, items the killed worker
had sent and not yet recorded are sent once more, at most its concurrency.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from batches.feeder import DeadLetterSweeper, Feeder, FeederConfig
from batches.lanes import BATCH, INTERACTIVE
from batches.local_lanes import LocalLanes
from batches.model import Api, ItemState, new_batch
from batches.rabbit_lanes import LaneNames
from batches.sqlite_store import SqliteBatchStore
from batches.store import BatchStore
from batches.worker import BatchWorker, GatewaySender
from tests.e2e.batch_support import throwaway_database
from tests.e2e.gateway import FakeProvider, Gateway

AMQP_URL = os.environ.get("CCR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
ITEMS = 200
CONCURRENCY = 8


async def create_batch(store: BatchStore, n: int = ITEMS):
    requests = [
        (
            f"item-{i:04d}",
            {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": f"item-{i:04d}"}]},
        )
        for i in range(n)
    ]
    batch, items = new_batch(
        f"msgbatch_{uuid.uuid4().hex}", tenant="acme", api=Api.ANTHROPIC, endpoint="/v1/messages",
        requests=requests, now=time.time(),
    )  # fmt: skip
    await store.create_batch(batch, items)
    return batch


async def wait_until_ended(store: BatchStore, batch_id: str, timeout: float, check=lambda: None) -> None:
    async with asyncio.timeout(timeout):
        while (await store.get_batch(batch_id)).ended_at is None:
            check()
            await asyncio.sleep(0.1)


async def assert_each_item_answered_once(store: BatchStore, batch_id: str) -> list:
    items = [item async for item in store.results(batch_id)]
    assert [item.index for item in items] == list(range(ITEMS))
    for item in items:
        assert item.state is ItemState.SUCCEEDED, (item.index, item.outcome)
        message = item.outcome.body
        assert message["type"] == "message" and message["role"] == "assistant"
        # the fake echoes the prompt, which is the item's custom_id: each got its own answer
        assert message["content"][0]["text"].endswith(item.custom_id), message
    return items


def openai_upstream_requests(gateway: Gateway) -> int:
    clusters = [name for name in gateway.dynamic_clusters() if "fake-openai" in name and "chain" not in name]
    assert len(clusters) == 1, clusters
    return gateway.envoy_stat(f"cluster.{clusters[0]}.upstream_rq_total")


async def test_a_200_item_anthropic_batch_for_an_openai_model_completes_once_per_item(
    gateway: Gateway, fake: FakeProvider, tmp_path: Path
):
    store = SqliteBatchStore(tmp_path / "batches.db")
    batch = await create_batch(store)
    before = openai_upstream_requests(gateway)
    lanes = LocalLanes()
    feeder = Feeder(store, lanes, FeederConfig(interval=0.05, skip_published=False))
    sender = GatewaySender(gateway.url, connections=CONCURRENCY)
    worker = BatchWorker(store, sender, lambda message, delay: feeder.put_back(message, delay=delay))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(feeder.run(stop)),
        asyncio.create_task(lanes.consume([INTERACTIVE, BATCH], worker, stop, concurrency=CONCURRENCY)),
        asyncio.create_task(lanes.consume_dead_letters(DeadLetterSweeper(store, feeder), stop)),
    ]
    try:
        await wait_until_ended(store, batch.id, 30)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await sender.close()
    items = await assert_each_item_answered_once(store, batch.id)
    assert all(item.attempts == 1 for item in items)
    assert openai_upstream_requests(gateway) - before == ITEMS  # no item reached the provider twice
    seen = fake.requests()  # the last 100: translated to chat completions, not streamed
    assert seen and all(r["path"] == "/v1/chat/completions" and r["body"].get("stream") is not True for r in seen)
    await store.close()


# --- worker processes on RabbitMQ and PostgreSQL, one killed mid-batch ------------------------------


@pytest.fixture
def batch_database() -> Iterator[str]:
    with throwaway_database("ccr_batch_worker_test") as dsn:
        yield dsn


@pytest.fixture
async def lane_prefix() -> AsyncIterator[str]:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {exc}")
    await connection.close()
    prefix = f"ccr.test.{uuid.uuid4().hex[:10]}."
    yield prefix
    names = LaneNames(prefix)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for lane in (INTERACTIVE, BATCH):
            await channel.queue_delete(names.queue(lane))
        await channel.queue_delete(names.dead_letter_queue)
        await channel.exchange_delete(names.dead_letter_exchange)


def start_worker(dsn: str, prefix: str, gateway: Gateway, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "ccr_gateway.cli", "--log-level", "info", "batch-worker", "--postgres", dsn,
        "--amqp", AMQP_URL, "--amqp-prefix", prefix, "--gateway", gateway.url, "--concurrency", str(CONCURRENCY),
        "--batch-window", "50",  # a restarted feeder must find the rest: the published marks tell it which
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


async def test_a_worker_killed_mid_batch_loses_nothing_and_sends_no_item_twice_to_the_store(
    gateway: Gateway, fake: FakeProvider, tmp_path: Path, batch_database: str, lane_prefix: str
):
    from batches.pg_store import PostgresBatchStore

    fake.configure(latency_ms=40)  # about 40 items a second with 8 in flight: time to kill one mid-batch
    store = PostgresBatchStore(batch_database)
    batch = await create_batch(store)
    before = openai_upstream_requests(gateway)
    log_path = tmp_path / "batch-worker.log"
    first = start_worker(batch_database, lane_prefix, gateway, log_path)
    second = None
    try:
        async with asyncio.timeout(30):
            while (await store.counts(batch.id)).succeeded < ITEMS // 4:
                assert first.poll() is None, log_path.read_text()
                await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        done_at_kill = (await store.counts(batch.id)).succeeded
        assert done_at_kill < ITEMS, "the batch finished before the worker was killed"
        second = start_worker(batch_database, lane_prefix, gateway, log_path)

        def still_running() -> None:
            assert second.poll() is None, log_path.read_text()

        await wait_until_ended(store, batch.id, 40, still_running)
        await assert_each_item_answered_once(store, batch.id)
        sent = openai_upstream_requests(gateway) - before
        # items in the killed worker's hands were sent once more; no other item twice
        assert ITEMS <= sent <= ITEMS + CONCURRENCY, sent
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log_path.read_text()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        await store.close()
