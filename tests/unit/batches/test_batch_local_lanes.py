"""The in-process lanes (embedded mode) behave like the RabbitMQ ones: priority, prefetch, TTL to
the dead-letter queue, acks after the handler, redelivery when a handler fails or a consumer dies."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from batches.lanes import BATCH, INTERACTIVE, DeadReason, ItemMessage
from batches.local_lanes import LocalLanes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def items(lane: str, count: int, batch: str = "b1", tenant: str = "t1") -> list[ItemMessage]:
    return [ItemMessage(tenant, batch, index, lane=lane) for index in range(count)]


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_interactive_items_published_after_batch_items_are_handled_first():
    lanes = LocalLanes()
    await lanes.publish(items("batch", 10, batch="big"))
    await lanes.publish(items("interactive", 3, batch="urgent"))
    handled: list[str] = []
    stop = asyncio.Event()

    async def handler(message: ItemMessage, redelivered: bool) -> None:
        handled.append(message.lane)
        await asyncio.sleep(0)

    consumer = asyncio.create_task(lanes.consume([BATCH, INTERACTIVE], handler, stop, concurrency=1))
    await until(lambda: len(handled) == 13)
    stop.set()
    await consumer
    assert handled == ["interactive"] * 3 + ["batch"] * 10


async def test_a_consumer_holds_at_most_the_lanes_prefetch():
    lanes = LocalLanes()
    await lanes.publish(items("batch", 50))
    in_hand, most = 0, 0
    release = asyncio.Event()
    stop = asyncio.Event()

    async def handler(message: ItemMessage, redelivered: bool) -> None:
        nonlocal in_hand, most
        in_hand += 1
        most = max(most, in_hand)
        await release.wait()
        in_hand -= 1

    consumer = asyncio.create_task(lanes.consume(BATCH, handler, stop))
    await until(lambda: in_hand == BATCH.prefetch)
    await asyncio.sleep(0.02)
    assert most == BATCH.prefetch == 20
    assert await lanes.lane_depth(BATCH) == 30
    release.set()
    await until(lambda: lanes._ready["batch"] == [] and in_hand == 0)
    stop.set()
    await consumer


async def test_a_message_older_than_its_lanes_ttl_is_dead_lettered_as_expired():
    clock = Clock()
    lanes = LocalLanes(clock=clock)
    await lanes.publish(items("interactive", 2))
    clock.now += INTERACTIVE.ttl_seconds - 1
    assert await lanes.dead_letter_depth() == 0
    clock.now += 1
    assert await lanes.dead_letter_depth() == 2
    assert await lanes.lane_depth(INTERACTIVE) == 0

    dead: list[tuple[ItemMessage | None, DeadReason]] = []
    stop = asyncio.Event()

    async def sweep(message: ItemMessage | None, reason: DeadReason) -> None:
        dead.append((message, reason))

    sweeper = asyncio.create_task(lanes.consume_dead_letters(sweep, stop))
    await until(lambda: len(dead) == 2)
    stop.set()
    await sweeper
    assert [(message.index, reason) for message, reason in dead] == [(0, "expired"), (1, "expired")]
    assert await lanes.dead_letter_depth() == 0


async def test_a_put_back_message_keeps_its_first_enqueue_time_for_the_ttl():
    clock = Clock()
    lanes = LocalLanes([replace(BATCH, ttl_seconds=10)], clock=clock)
    await lanes.publish(items("batch", 1))
    stop = asyncio.Event()
    attempts = 0

    async def failing(message: ItemMessage, redelivered: bool) -> None:
        nonlocal attempts
        attempts += 1
        clock.now += 6  # each attempt takes a while, and fails
        if attempts == 2:
            stop.set()
        raise RuntimeError("provider down")

    await lanes.consume(BATCH, failing, stop)
    assert await lanes.dead_letter_depth() == 1  # 12 s after it was first published


async def test_a_failed_handler_gets_the_message_again_marked_redelivered():
    lanes = LocalLanes()
    await lanes.publish(items("batch", 3))
    seen: list[tuple[int, bool]] = []
    stop = asyncio.Event()

    async def flaky(message: ItemMessage, redelivered: bool) -> None:
        seen.append((message.index, redelivered))
        if message.index == 1 and not redelivered:
            raise RuntimeError("store away")

    consumer = asyncio.create_task(lanes.consume(BATCH, flaky, stop, concurrency=1))
    await until(lambda: len(seen) == 4)
    stop.set()
    await consumer
    assert seen == [(0, False), (1, False), (1, True), (2, False)]  # put back in its place
    assert await lanes.lane_depth(BATCH) == 0


async def test_a_consumer_that_dies_before_acking_leaves_the_message_to_the_next_exactly_once():
    lanes = LocalLanes()
    await lanes.publish(items("batch", 5))
    results: dict[str, int] = {}  # the idempotent result store: item key -> times handled
    got_one = asyncio.Event()

    async def dies_mid_item(message: ItemMessage, redelivered: bool) -> None:
        got_one.set()
        await asyncio.Event().wait()  # never finishes: the process is killed here, nothing stored

    doomed = asyncio.create_task(lanes.consume(BATCH, dies_mid_item, asyncio.Event()))
    await got_one.wait()
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)

    stop = asyncio.Event()
    redelivered_seen: list[bool] = []

    async def survivor(message: ItemMessage, redelivered: bool) -> None:
        redelivered_seen.append(redelivered)
        results[message.key] = results.get(message.key, 0) + 1

    consumer = asyncio.create_task(lanes.consume(BATCH, survivor, stop))
    await until(lambda: len(results) == 5)
    stop.set()
    await consumer
    assert results == {f"b1:{index}": 1 for index in range(5)}
    assert all(redelivered_seen) and len(redelivered_seen) == 5  # the dead consumer held all five


async def test_a_handler_can_dead_letter_a_message_with_its_reason():
    lanes = LocalLanes()
    await lanes.publish(items("batch", 2))
    stop = asyncio.Event()

    async def poison_guard(message: ItemMessage, redelivered: bool) -> DeadReason | None:
        return DeadReason.TOO_MANY_ATTEMPTS if message.index == 0 else None

    consumer = asyncio.create_task(lanes.consume(BATCH, poison_guard, stop))
    await until(lambda: lanes._dead)
    stop.set()
    await consumer
    assert list(lanes._dead) == [(ItemMessage("t1", "b1", 0), DeadReason.TOO_MANY_ATTEMPTS)]
    assert await lanes.lane_depth(BATCH) == 0


async def test_stopping_lets_the_messages_in_hand_finish_and_be_acked():
    lanes = LocalLanes()
    await lanes.publish(items("batch", 2))
    stop = asyncio.Event()
    finished: list[int] = []

    async def slow(message: ItemMessage, redelivered: bool) -> None:
        stop.set()
        await asyncio.sleep(0.05)
        finished.append(message.index)

    await lanes.consume(BATCH, slow, stop)
    assert sorted(finished) == [0, 1]
    assert await lanes.lane_depth(BATCH) == 0
