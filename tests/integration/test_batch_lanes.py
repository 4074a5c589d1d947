"""The batch lanes on the real local RabbitMQ: priority, per-tenant fairness through the feeder,
TTL expiry to the dead-letter queue with the reason, redelivery after a consumer dies, and a
connection closed by the broker mid-run losing nothing. Every test declares its own lanes under a
prefix of its own and deletes them after."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import aio_pika
import pytest

from batches.feeder import ActiveBatch, Feeder, FeederConfig
from batches.lanes import BATCH, INTERACTIVE, Action, DeadReason, ItemMessage, after_dead_letter
from batches.model import Item
from batches.rabbit_lanes import LaneNames, RabbitLanes, RabbitLanesConfig
from tests.tcp_proxy import TcpProxy

QUICK_INTERACTIVE = replace(INTERACTIVE, ttl_seconds=1)  # the TTL test cannot wait 30 s


@pytest.fixture
async def prefix(amqp_url: str) -> AsyncIterator[str]:
    prefix = f"ccr.test.{uuid.uuid4().hex[:10]}."
    yield prefix
    names = LaneNames(prefix)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for lane in (INTERACTIVE, BATCH):
            await channel.queue_delete(names.queue(lane))
        await channel.queue_delete(names.dead_letter_queue)
        await channel.exchange_delete(names.dead_letter_exchange)


def config(url: str, prefix: str, **overrides) -> RabbitLanesConfig:
    defaults = {"lanes": (QUICK_INTERACTIVE, BATCH), "failure_pause": 0.05, "reconnect_max": 0.5}
    return RabbitLanesConfig(url, prefix=prefix, **{**defaults, **overrides})


def items(lane: str, count: int, batch: str = "b1", tenant: str = "t1") -> list[ItemMessage]:
    return [ItemMessage(tenant, batch, index, lane=lane) for index in range(count)]


async def until(condition, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_interactive_items_published_after_batch_items_are_handled_first(amqp_url, prefix):
    lanes = RabbitLanes(config(amqp_url, prefix))
    try:
        await lanes.publish(items("batch", 30, batch="big"))
        await lanes.publish(items("interactive", 5, batch="urgent"))
        assert await lanes.lane_depth(BATCH) == 30 and await lanes.lane_depth(QUICK_INTERACTIVE) == 5
        handled: list[str] = []
        stop = asyncio.Event()

        async def one_at_a_time(message: ItemMessage, redelivered: bool) -> None:
            handled.append(message.lane)
            await asyncio.sleep(0.005)

        consumer = asyncio.create_task(lanes.consume([BATCH, QUICK_INTERACTIVE], one_at_a_time, stop, concurrency=1))
        await until(lambda: len(handled) == 35)
        stop.set()
        await consumer
        assert handled[:6].count("interactive") == 5  # at most one batch item started before them
        assert await lanes.lane_depth(BATCH) == 0
    finally:
        await lanes.close()


async def test_messages_are_persistent_and_carry_their_lanes_priority(amqp_url, prefix):
    lanes = RabbitLanes(config(amqp_url, prefix))
    try:
        await lanes.publish([ItemMessage("t1", "b1", 3, lane="interactive")])
    finally:
        await lanes.close()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(LaneNames(prefix).queue(INTERACTIVE), ensure=False)
        message = await queue.get(no_ack=True)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT and message.priority == 10
    assert message.message_id == "b1:3" and ItemMessage.decode(message.body).index == 3


class FakeStore:
    def __init__(self) -> None:
        self.queued: dict[str, tuple[str, set[int]]] = {}

    async def active_batches(self) -> Sequence[ActiveBatch]:
        return [ActiveBatch(tenant, batch_id, "batch", len(left)) for batch_id, (tenant, left) in self.queued.items()]

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> Sequence[Item]:
        indexes = sorted(index for index in self.queued[batch_id][1] if index > after_index)[:limit]
        return [Item(index, f"req-{index}", {}) for index in indexes]

    async def mark_published(self, batch_id: str, indexes) -> None:
        return None


async def test_a_ten_item_tenant_finishes_in_the_first_windows_beside_a_thousand_item_one(amqp_url, prefix):
    lanes = RabbitLanes(config(amqp_url, prefix))
    store = FakeStore()
    store.queued["b-huge"] = ("huge", set(range(1000)))
    store.queued["b-small"] = ("small", set(range(10)))
    feeder = Feeder(store, lanes, FeederConfig(windows={"batch": 20}, interval=0.02), lane_set=[BATCH])
    order: list[ItemMessage] = []
    stop = asyncio.Event()

    async def worker(message: ItemMessage, redelivered: bool) -> None:
        order.append(message)
        store.queued[message.batch_id][1].discard(message.index)

    try:
        tasks = [asyncio.create_task(feeder.run(stop)), asyncio.create_task(lanes.consume(BATCH, worker, stop))]
        await until(lambda: len(order) >= 1010, timeout=30)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await lanes.close()
    small_at = [position for position, message in enumerate(order) if message.tenant == "small"]
    assert len(small_at) == 10 and max(small_at) < 40  # within the first two windows of 20
    assert sorted(m.key for m in order) == sorted({m.key for m in order}) and len(order) == 1010


async def test_an_item_past_its_lanes_ttl_reaches_the_dead_letter_queue_as_expired(amqp_url, prefix):
    lanes = RabbitLanes(config(amqp_url, prefix))
    try:
        await lanes.publish(items("interactive", 3))
        await asyncio.sleep(1.3)  # no consumer: they age out of the 1 s lane
        assert await lanes.lane_depth(QUICK_INTERACTIVE) == 0
        assert await lanes.dead_letter_depth() == 3

        dead: list[tuple[ItemMessage | None, DeadReason]] = []
        stop = asyncio.Event()

        async def sweeper(message: ItemMessage | None, reason: DeadReason) -> None:
            dead.append((message, reason))

        task = asyncio.create_task(lanes.consume_dead_letters(sweeper, stop))
        await until(lambda: len(dead) == 3)
        stop.set()
        await task
        assert sorted((m.index, r) for m, r in dead) == [(0, "expired"), (1, "expired"), (2, "expired")]
        decision = after_dead_letter(dead[0][1], lane=INTERACTIVE, ttl_requeues=0)
        assert decision.action is Action.FINISH and decision.outcome.state == "expired"
        assert await lanes.dead_letter_depth() == 0
    finally:
        await lanes.close()


async def test_handlers_and_unreadable_messages_dead_letter_with_their_reason(amqp_url, prefix):
    lanes = RabbitLanes(config(amqp_url, prefix))
    try:
        await lanes.publish(items("batch", 2))
        raw = await aio_pika.connect(amqp_url)
        async with raw:
            channel = await raw.channel()
            await channel.default_exchange.publish(aio_pika.Message(b"not json"), LaneNames(prefix).queue(BATCH))
        stop = asyncio.Event()
        seen: list[int] = []

        async def poison_guard(message: ItemMessage, redelivered: bool) -> DeadReason | None:
            seen.append(message.index)
            return DeadReason.TOO_MANY_ATTEMPTS if message.index == 1 else None

        consumer = asyncio.create_task(lanes.consume(BATCH, poison_guard, stop))
        await until(lambda: len(seen) == 2)
        dead: list[tuple[ItemMessage | None, DeadReason]] = []

        async def sweeper(message: ItemMessage | None, reason: DeadReason) -> None:
            dead.append((message, reason))

        sweeping = asyncio.create_task(lanes.consume_dead_letters(sweeper, stop))
        await until(lambda: len(dead) == 2)
        stop.set()
        await asyncio.gather(consumer, sweeping)
        reasons = {(m.index if m else None): r for m, r in dead}
        assert reasons == {1: DeadReason.TOO_MANY_ATTEMPTS, None: DeadReason.REJECTED}
    finally:
        await lanes.close()


async def test_a_consumer_that_dies_before_acking_gets_its_messages_redelivered_and_handled_once(amqp_url, prefix):
    doomed = RabbitLanes(config(amqp_url, prefix, connection_name="doomed"))
    survivor = RabbitLanes(config(amqp_url, prefix))
    stored: dict[str, int] = {}  # the idempotent result write: key -> times stored
    try:
        await survivor.publish(items("batch", 10))
        in_hand: list[ItemMessage] = []

        async def dies_mid_item(message: ItemMessage, redelivered: bool) -> None:
            in_hand.append(message)
            await asyncio.Event().wait()  # never stores, never returns: killed here

        dying = asyncio.create_task(doomed.consume(BATCH, dies_mid_item, asyncio.Event()))
        await until(lambda: len(in_hand) == 10)  # prefetch 20: it held all of them
        dying.cancel()
        await asyncio.gather(dying, return_exceptions=True)
        await doomed.close()

        redelivered_flags: list[bool] = []
        stop = asyncio.Event()

        async def idempotent(message: ItemMessage, redelivered: bool) -> None:
            redelivered_flags.append(redelivered)
            stored[message.key] = stored.get(message.key, 0) + 1

        consumer = asyncio.create_task(survivor.consume(BATCH, idempotent, stop))
        await until(lambda: len(stored) == 10)
        await asyncio.sleep(0.2)  # a duplicate would show up now
        stop.set()
        await consumer
        assert stored == {f"b1:{index}": 1 for index in range(10)}
        assert all(redelivered_flags)
        assert await survivor.lane_depth(BATCH) == 0
    finally:
        await doomed.close()
        await survivor.close()


class BrokerSideCut:
    """Close our connections from the broker's side: ``rabbitmqctl close_connection`` for the ones
    with our connection name (never anyone else's), or, without rabbitmqctl, a TCP proxy's cut."""

    def __init__(self, amqp_url: str, name: str) -> None:
        self.name = name
        self.use_rabbitmqctl = shutil.which("rabbitmqctl") is not None and os.geteuid() == 0
        self.proxy: TcpProxy | None = None
        self.url = amqp_url
        if not self.use_rabbitmqctl:
            self.proxy = TcpProxy("127.0.0.1", 5672).start()
            self.url = amqp_url.replace("127.0.0.1:5672", self.proxy.address)

    async def cut(self) -> int:
        if self.proxy is not None:
            self.proxy.cut()
            await asyncio.sleep(0.3)
            self.proxy.restore()
            return 1
        return await asyncio.to_thread(self._close_named)

    def _close_named(self) -> int:
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if f'"connection_name","{self.name}"' in line]
        for pid in pids:
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: closed by the broker"], timeout=30)
        return len(pids)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()


async def test_a_connection_closed_by_the_broker_mid_run_loses_nothing(amqp_url, prefix):
    name = f"ccr-test-{uuid.uuid4().hex[:8]}"
    cut = BrokerSideCut(amqp_url, name)
    lanes = RabbitLanes(config(cut.url, prefix, connection_name=name))
    handled: set[str] = set()
    stop = asyncio.Event()

    async def worker(message: ItemMessage, redelivered: bool) -> None:
        await asyncio.sleep(0.002)
        handled.add(message.key)  # idempotent: a redelivered duplicate changes nothing

    everything = items("batch", 400)
    try:
        consumer = asyncio.create_task(lanes.consume(BATCH, worker, stop))

        async def publish_steadily() -> None:
            for start in range(0, len(everything), 20):
                await lanes.publish(everything[start : start + 20])  # returns only when confirmed
                await asyncio.sleep(0.02)

        publisher = asyncio.create_task(publish_steadily())
        await until(lambda: len(handled) >= 100)
        assert await cut.cut() >= 1
        await publisher  # every publish confirmed despite the cut
        await until(lambda: len(handled) == len(everything), timeout=30)
        stop.set()
        await consumer
        assert handled == {message.key for message in everything}
        assert await lanes.lane_depth(BATCH) == 0
    finally:
        await lanes.close()
        cut.close()
