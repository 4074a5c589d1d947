"""The feeder: bounded windows per lane, in FairQueue order, cursors that move only once the lanes
confirmed, put-backs first, and the monitoring gauges it owns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from batches import lane_metrics, model
from batches.feeder import ActiveBatch, DeadLetterSweeper, Feeder, FeederConfig, LaneQueues, LanesUnavailable
from batches.lanes import BATCH, INTERACTIVE, ItemMessage, Lane
from batches.local_lanes import LocalLanes
from batches.model import Item, ItemState, Outcome
from batches.store import MemoryStore


class FakeStore:
    """The store as the feeder sees it: batches with their queued item indexes."""

    def __init__(self) -> None:
        self.batches: dict[str, tuple[str, str, list[int]]] = {}  # id -> (tenant, lane, queued)

    def add(self, tenant: str, batch_id: str, count: int, lane: str = "batch") -> None:
        self.batches[batch_id] = (tenant, lane, list(range(count)))

    def finish(self, message: ItemMessage) -> None:
        self.batches[message.batch_id][2].remove(message.index)

    async def active_batches(self) -> Sequence[ActiveBatch]:
        return [
            ActiveBatch(tenant, batch_id, lane, len(queued))
            for batch_id, (tenant, lane, queued) in self.batches.items()
        ]

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> Sequence[Item]:
        indexes = [index for index in self.batches[batch_id][2] if index > after_index][:limit]
        return [Item(index, f"req-{index}", {}) for index in indexes]

    async def mark_published(self, batch_id: str, indexes) -> None:
        return None  # this fake keeps no marks (the MemoryStore tests below do)


class RecordingLanes:
    """Lanes that keep what was published; their depth is set by the test."""

    def __init__(self) -> None:
        self.published: list[ItemMessage] = []
        self.depth = {"interactive": 0, "batch": 0}
        self.fail = False

    async def publish(self, messages: Sequence[ItemMessage]) -> None:
        if self.fail:
            raise LanesUnavailable("broker away")
        self.published.extend(messages)

    async def lane_depth(self, lane: Lane) -> int:
        return self.depth[lane.name]


def feeder(store: FakeStore, lanes, *, batch_window: int = 20, clock=None) -> Feeder:
    config = FeederConfig(windows={"interactive": 5, "batch": batch_window})
    return Feeder(store, lanes, config, clock=clock) if clock else Feeder(store, lanes, config)


async def test_a_small_tenant_is_not_starved_by_a_huge_one():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("huge", "b-huge", 1000)
    store.add("small", "b-small", 10)
    await feeder(store, lanes).feed_once()
    assert len(lanes.published) == 20
    assert sorted(m.index for m in lanes.published if m.tenant == "small") == list(range(10))


async def test_each_round_tops_the_lane_up_to_its_window_and_no_further():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b1", 100)
    fed = feeder(store, lanes)
    assert await fed.feed_once() == 20
    lanes.depth["batch"] = 20
    assert await fed.feed_once() == 0
    lanes.depth["batch"] = 15
    assert await fed.feed_once() == 5
    assert [m.index for m in lanes.published] == list(range(25))  # nothing twice, nothing skipped


async def test_a_failed_publish_gives_the_items_back_for_the_next_round():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b1", 30)
    fed = feeder(store, lanes)
    lanes.fail = True
    with pytest.raises(LanesUnavailable):
        await fed.feed_once()
    assert fed.pending("batch", "t") == 30
    lanes.fail = False
    await fed.feed_once()
    assert [m.index for m in lanes.published] == list(range(20))


async def test_a_canceled_or_ended_batch_is_fed_no_more():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b1", 100)
    fed = feeder(store, lanes)
    await fed.feed_once()
    del store.batches["b1"]
    assert await fed.feed_once() == 0
    assert fed.pending("batch") == 0


async def test_items_that_end_before_their_turn_are_skipped():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b1", 10)
    fed = feeder(store, lanes, batch_window=4)
    await fed.feed_once()
    store.batches["b1"][2][:] = [0, 1, 2, 3, 9]  # items 4..8 canceled meanwhile
    lanes.depth["batch"] = 0
    await fed.feed_once()
    assert [m.index for m in lanes.published] == [0, 1, 2, 3, 9]
    assert fed.pending("batch") == 0


async def test_each_lane_is_fed_with_its_own_items():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b-bulk", 50)
    store.add("t", "b-now", 3, lane="interactive")
    await feeder(store, lanes).feed_once()
    assert [m.batch_id for m in lanes.published if m.lane == "interactive"] == ["b-now"] * 3
    assert {m.batch_id for m in lanes.published if m.lane == "batch"} == {"b-bulk"}


async def test_put_back_messages_go_first_once_their_delay_is_over():
    now = [100.0]
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b1", 100)
    fed = feeder(store, lanes, batch_window=3, clock=lambda: now[0])
    again = ItemMessage("t", "b0", 7, ttl_requeues=1)
    fed.put_back(again, delay=5)
    await fed.feed_once()
    assert again not in lanes.published
    now[0] += 5
    await fed.feed_once()
    assert lanes.published[3] == again and len(lanes.published) == 6


async def test_the_oldest_message_age_comes_from_the_feeders_publish_times():
    now = [0.0]
    store, lanes = FakeStore(), RecordingLanes()
    store.add("t", "b1", 100)
    fed = feeder(store, lanes, batch_window=10, clock=lambda: now[0])
    await fed.feed_once()  # 10 published at t=0
    now[0] = 4.0
    lanes.depth["batch"] = 6  # four consumed; the rest published at t=0
    await fed.feed_once()  # 4 more at t=4
    now[0] = 10.0
    lanes.depth["batch"] = 3  # only some of the second round are left
    await fed.feed_once()
    assert lane_metrics.OLDEST_MESSAGE_AGE.labels("batch")._value.get() == 6.0
    lanes.depth["batch"] = 0
    await fed.feed_once()
    assert lane_metrics.OLDEST_MESSAGE_AGE.labels("batch")._value.get() == 0.0


async def test_waiting_items_per_tenant_are_shown_and_forgotten_when_the_tenant_leaves():
    store, lanes = FakeStore(), RecordingLanes()
    store.add("acme", "b1", 30)
    fed = feeder(store, lanes)
    await fed.feed_once()
    assert lane_metrics.TENANT_WAITING.labels("batch", "acme")._value.get() == 10
    del store.batches["b1"]
    await fed.feed_once()
    assert ("batch", "acme") not in lane_metrics.TENANT_WAITING._metrics


async def test_fed_through_local_lanes_the_small_tenant_finishes_within_the_first_windows():
    store, lanes = FakeStore(), LocalLanes()
    store.add("huge", "b-huge", 1000)
    store.add("small", "b-small", 10)
    fed = Feeder(store, lanes, FeederConfig(windows={"batch": 20}, interval=0.01), lane_set=[BATCH])
    order: list[str] = []
    stop = asyncio.Event()

    async def worker(message: ItemMessage, redelivered: bool) -> None:
        order.append(message.tenant)
        store.finish(message)

    tasks = [asyncio.create_task(fed.run(stop)), asyncio.create_task(lanes.consume(BATCH, worker, stop))]
    async with asyncio.timeout(10):
        while len(order) < 1010:
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*tasks)
    assert order.count("small") == 10 and max(i for i, t in enumerate(order) if t == "small") < 40
    assert sorted(order) == ["huge"] * 1000 + ["small"] * 10  # every item once


def test_the_lanes_interface_is_what_both_adapters_offer():
    from batches.rabbit_lanes import RabbitLanes

    wanted = {name for name in vars(LaneQueues) if not name.startswith("_")}
    for adapter in (LocalLanes, RabbitLanes):
        assert wanted <= set(dir(adapter)), adapter
    assert INTERACTIVE.name in FeederConfig().windows


class ItemStore:
    """The three item changes the sweeper makes, through the model's own transitions."""

    def __init__(self, items: dict[tuple[str, int], Item]) -> None:
        self.items = items

    async def retry_item_later(self, batch_id: str, index: int, *, throttled: bool, now: float) -> Item:
        key = (batch_id, index)
        self.items[key] = model.retry_later(self.items[key], throttled=throttled, cancel_requested=False, now=now)
        return self.items[key]

    async def expire_item(self, batch_id: str, index: int, *, now: float, reason: str | None = None) -> Item:
        key = (batch_id, index)
        self.items[key] = model.expire_item(self.items[key], now=now, reason=reason)
        return self.items[key]

    async def record_item(self, batch_id: str, index: int, outcome: Outcome, *, now: float):
        key = (batch_id, index)
        self.items[key], recorded = model.record(self.items[key], outcome, now=now)
        return self.items[key], recorded


async def test_the_sweeper_re_feeds_items_that_aged_out_of_the_batch_lane_and_ends_the_others():
    clock = [0.0]
    lanes = LocalLanes([INTERACTIVE, BATCH], clock=lambda: clock[0])
    sent = Item(0, "a", {}, state=ItemState.SENT, attempts=1)  # its worker died, then it aged out
    items = {("b1", 0): sent, ("b1", 1): Item(1, "b", {}), ("b2", 0): Item(0, "c", {})}
    store = ItemStore(items)
    fed = Feeder(FakeStore(), lanes, FeederConfig(), clock=lambda: clock[0])
    sweeper = DeadLetterSweeper(store, fed, wall_clock=lambda: 5.0)
    await lanes.publish([ItemMessage("t", "b1", 0), ItemMessage("t", "b1", 1, ttl_requeues=3)])
    await lanes.publish([ItemMessage("t", "b2", 0, lane="interactive")])
    clock[0] += BATCH.ttl_seconds
    stop = asyncio.Event()
    task = asyncio.create_task(lanes.consume_dead_letters(sweeper, stop))
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert items[("b1", 0)].state is ItemState.QUEUED  # back to queued, and to the feeder:
    assert fed._lanes["batch"].put_back == [(clock[0], ItemMessage("t", "b1", 0, ttl_requeues=1))]
    assert items[("b1", 1)].state is ItemState.EXPIRED  # aged out three times already
    assert items[("b2", 0)].state is ItemState.EXPIRED  # nobody waits for an interactive item that long
    assert await lanes.dead_letter_depth() == 0


async def test_a_store_failure_mid_round_loses_no_picks():
    class FlakyStore(FakeStore):
        failing = True

        async def queued_items(
            self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
        ) -> Sequence[Item]:
            if self.failing:
                raise ConnectionError("database away")
            return await super().queued_items(batch_id, after_index=after_index, limit=limit)

    store, lanes = FlakyStore(), RecordingLanes()
    store.add("t", "b1", 5)
    fed = feeder(store, lanes)
    with pytest.raises(ConnectionError):
        await fed.feed_once()
    store.failing = False
    await fed.feed_once()
    assert [m.index for m in lanes.published] == [0, 1, 2, 3, 4]


# --- the published mark: a restarted feeder over a real store -----------------------------------


async def _memory_batch(store, n: int, lane: str = "batch"):
    batch, items = model.new_batch(
        "b-marks", tenant="t", api=model.Api.ANTHROPIC, endpoint="/v1/messages",
        requests=[(f"r{i}", {"model": "m"}) for i in range(n)], now=0.0, lane=lane,
    )  # fmt: skip
    await store.create_batch(batch, items)
    return batch


async def test_a_restarted_feeder_does_not_publish_what_the_first_one_published():
    store, lanes = MemoryStore(), RecordingLanes()
    await _memory_batch(store, 30)
    config = FeederConfig(windows={"interactive": 5, "batch": 10})
    assert await Feeder(store, lanes, config).feed_once() == 10
    restarted = Feeder(store, lanes, config)  # a new process: every cursor starts over
    assert await restarted.feed_once() == 10
    assert [m.index for m in lanes.published] == list(range(20))  # nothing twice


async def test_an_item_put_back_by_a_retry_is_published_by_whoever_put_it_back_not_the_feeder():
    store, lanes = MemoryStore(), RecordingLanes()
    batch = await _memory_batch(store, 4)
    config = FeederConfig(windows={"interactive": 5, "batch": 2})
    fed = Feeder(store, lanes, config)
    await fed.feed_once()  # 0 and 1
    await store.send_item(batch.id, 0, now=1.0)
    await store.retry_item_later(batch.id, 0, throttled=True, now=2.0)  # a 429: back to queued, unmarked
    fed.put_back(ItemMessage("t", batch.id, 0), delay=0)  # the worker that decided the retry
    await fed.feed_once()
    assert [m.index for m in lanes.published] == [0, 1, 0, 2]  # the put-back first, then the window
    restarted = Feeder(store, lanes, config)
    await restarted.feed_once()
    assert [m.index for m in lanes.published[4:]] == [3]  # 0 was published again by its put-back


async def test_with_in_process_lanes_the_marks_are_not_trusted_after_a_restart():
    store, lanes = MemoryStore(), RecordingLanes()
    await _memory_batch(store, 5)
    config = FeederConfig(windows={"interactive": 5, "batch": 10}, skip_published=False)
    await Feeder(store, lanes, config).feed_once()
    await Feeder(store, lanes, config).feed_once()  # the lanes died with the process: all again
    assert [m.index for m in lanes.published] == list(range(5)) * 2
