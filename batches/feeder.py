"""The feeder: keeps each lane filled with a bounded window of queued items, in ``FairQueue`` order.

Items stay ``queued`` in the store; only a window of them is on a lane at a time. Every round the
feeder reads each lane's depth (messages ready on the broker) and publishes ``window - depth`` more,
picked by the lane's ``FairQueue`` (deficit round robin over tenants, round robin over a tenant's
batches). So a tenant with 100,000 items and one with 10 share every window, and no message waits
in its lane anywhere near the lane's TTL while workers keep up.

It depends on two narrow interfaces defined here, satisfied structurally:

- ``FeedSource``: the store (running batches; a batch's next queued items after a cursor).
- ``LaneQueues``: the lanes, ``rabbit_lanes.RabbitLanes`` or ``local_lanes.LocalLanes``. Workers
  and the dead-letter sweeper use the rest of it (``consume``, ``consume_dead_letters``).

The cursor per batch only moves forward, and only once the broker confirmed the publish (a failed
publish gives the picks back to the ``FairQueue``). An item put back to ``queued`` later (a worker's
delayed retry, a message that aged out of the batch lane) is behind the cursor: whoever put it back
publishes it again, in-process through ``put_back``.

Once the lanes confirmed a publish, the feeder marks the items published in the store
(``FeedSource.mark_published``). A restarted feeder starts every cursor over but reads only items
without the mark (``skip_published``), so it does not publish again what the broker still holds;
only a crash between the confirm and the mark, or two feeders reading the same items at once
(one per worker process), publishes an item twice, and the worker's idempotent result write
absorbs that. In-process lanes lose their messages with the process, so there the marks are not
trusted (``skip_published=False``): a restarted process publishes every queued item again.

``DeadLetterSweeper`` sits beside the feeder: it reads the dead-letter queue and applies
``lanes.after_dead_letter`` (re-feed through ``put_back``, or end the item expired / errored).

One feeder per deployment (it is the scheduler); not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from batches import lane_metrics as metrics
from batches.lanes import (
    BATCH,
    INTERACTIVE,
    LANES,
    Action,
    DeadReason,
    FairQueue,
    ItemMessage,
    Lane,
    after_dead_letter,
)
from batches.model import Item, ItemState, Outcome

log = logging.getLogger(__name__)

# (message, redelivered) -> None to acknowledge it, or a reason to dead-letter it with.
# Raising puts the message back on its lane (it is delivered again, ``redelivered`` set).
MessageHandler = Callable[[ItemMessage, bool], Awaitable[DeadReason | None]]
# (message, or None when it could not be read; why it died). Returning acknowledges it.
DeadLetterHandler = Callable[[ItemMessage | None, DeadReason], Awaitable[None]]


class LanesUnavailable(Exception):
    """The lanes could not take or confirm a publish in time (the broker is away)."""


class LaneQueues(Protocol):
    """What both lane adapters offer (RabbitMQ, and the in-process stand-in for embedded mode)."""

    async def declare(self) -> None:
        """Create the lanes, the dead-letter exchange and queue (idempotent)."""

    async def publish(self, messages: Sequence[ItemMessage]) -> None:
        """Returns once every message is stored (confirmed); raises ``LanesUnavailable`` if not."""

    async def consume(
        self,
        lanes: Lane | Sequence[Lane],
        handler: MessageHandler,
        stop: asyncio.Event,
        *,
        concurrency: int | None = None,
    ) -> None:
        """Hand messages to ``handler`` until ``stop``; each lane with its prefetch; acknowledged
        only after the handler returns; higher-priority lanes first when handlers are scarce."""

    async def consume_dead_letters(self, handler: DeadLetterHandler, stop: asyncio.Event) -> None: ...

    async def lane_depth(self, lane: Lane) -> int: ...

    async def dead_letter_depth(self) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ActiveBatch:
    tenant: str
    batch_id: str
    lane: str  # lanes.LANES key
    queued: int  # items in state queued


class FeedSource(Protocol):
    """What the feeder reads from the batch store."""

    async def active_batches(self) -> Sequence[ActiveBatch]:
        """Batches still running: not ended and not being canceled (any order)."""

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> Sequence[Item]:
        """Up to ``limit`` of the batch's ``queued`` items with an index above ``after_index``, by
        index, only those not marked published if asked (``store.BatchStore.queued_items``; only
        ``Item.index`` is read)."""

    async def mark_published(self, batch_id: str, indexes: Collection[int]) -> None:
        """These items' messages were confirmed by the lanes (``store.BatchStore.mark_published``)."""


@dataclass(frozen=True, slots=True)
class FeederConfig:
    # Messages kept ready per lane. Enough to keep every worker's prefetch full between two rounds,
    # and small enough that a new tenant's items are published within a round or two.
    windows: Mapping[str, int] = field(default_factory=lambda: {INTERACTIVE.name: 50, BATCH.name: 200})
    interval: float = 0.5  # seconds between rounds
    quantum: int = 1  # FairQueue: items a tenant gets per visit
    weights: Mapping[str, int] | None = None  # FairQueue: tenant -> weight
    # Trust the store's published marks (durable lanes: what was published is still on the broker).
    # False for in-process lanes, whose messages die with the process (see the module docstring).
    skip_published: bool = True


@dataclass(slots=True)
class _Known:
    tenant: str
    lane: str
    cursor: int = -1  # highest index published


@dataclass(slots=True)
class _LaneState:
    lane: Lane
    fair: FairQueue
    window: int
    published_at: deque[float] = field(default_factory=deque)  # publish times, oldest first
    put_back: list[tuple[float, ItemMessage]] = field(default_factory=list)  # (not before, message)
    tenants_shown: set[str] = field(default_factory=set)


class Feeder:
    def __init__(
        self,
        source: FeedSource,
        lanes: LaneQueues,
        config: FeederConfig | None = None,
        *,
        lane_set: Sequence[Lane] = (INTERACTIVE, BATCH),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.lanes = lanes
        self.config = config or FeederConfig()
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._lanes = {
            lane.name: _LaneState(
                lane,
                FairQueue(quantum=self.config.quantum, weights=self.config.weights),
                self.config.windows.get(lane.name, 100),
            )
            for lane in lane_set
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Feed every ``interval`` until ``stop``; a broker or store away is logged and retried."""
        while not stop.is_set():
            try:
                await self.feed_once()
            except LanesUnavailable as exc:
                log.warning("batches: feeder cannot publish: %s; retrying", exc)
            except Exception:
                log.exception("batches: feeder round failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval)

    def put_back(self, message: ItemMessage, *, delay: float = 0.0) -> None:
        """Publish ``message`` again (a re-fed dead letter, a delayed retry) ahead of new items,
        no earlier than ``delay`` seconds from now."""
        self._lanes[message.lane].put_back.append((self._clock() + delay, message))

    def pending(self, lane: str, tenant: str | None = None) -> int:
        """Items the feeder knows are queued and has not published yet."""
        return self._lanes[lane].fair.pending(tenant)

    async def feed_once(self) -> int:
        """One round: top every lane up to its window; returns how many messages were published."""
        self._refresh(await self.source.active_batches())
        published = 0
        for state in self._lanes.values():
            published += await self._top_up(state)
            self._show_tenants(state)
        return published

    def _refresh(self, batches: Sequence[ActiveBatch]) -> None:
        running = {batch.batch_id: batch for batch in batches}
        for batch_id in [known for known in self._known if known not in running]:
            # Ended or being canceled: nothing more of it is published.
            gone = self._known.pop(batch_id)
            if gone.lane in self._lanes:
                self._lanes[gone.lane].fair.remove_batch(gone.tenant, batch_id)
        for batch in batches:
            if batch.batch_id in self._known:
                continue  # a batch never gains items; put-back ones come through put_back
            self._known[batch.batch_id] = _Known(batch.tenant, batch.lane)  # logged once, not every round
            if batch.lane not in self._lanes:
                log.error("batches: batch %s names a lane this feeder does not feed (%r)", batch.batch_id, batch.lane)
                continue
            self._lanes[batch.lane].fair.add(batch.tenant, batch.batch_id, batch.queued)

    async def _top_up(self, state: _LaneState) -> int:
        depth = await self.lanes.lane_depth(state.lane)
        now = self._clock()
        self._show_oldest_age(state, depth, now)
        room = state.window - depth
        if room <= 0:
            return 0
        due = [entry for entry in state.put_back if entry[0] <= now][:room]
        messages = [message for _, message in due]
        cursors: dict[str, int] = {}
        fresh: list[ItemMessage] = []
        if len(messages) < room:
            picks = [(pick.tenant, pick.batch_id) for pick in state.fair.take(room - len(messages))]
            try:
                fresh = await self._resolve(state, picks, cursors)
            except BaseException:
                _give_back(state.fair, picks)  # the store failed: the picks are taken again next round
                raise
            messages += fresh
        if not messages:
            return 0
        try:
            await self.lanes.publish(messages)
        except BaseException:
            # Not confirmed: the new items go back to the FairQueue (cursors untouched), the
            # put-backs stay where they are; the next round tries again.
            _give_back(state.fair, [(message.tenant, message.batch_id) for message in fresh])
            raise
        for entry in due:
            state.put_back.remove(entry)
        for batch_id, cursor in cursors.items():
            if batch_id in self._known:
                self._known[batch_id].cursor = cursor
        await self._mark_published(messages)
        state.published_at.extend([now] * len(messages))
        # FIFO within a lane: only the newest ``depth + published`` publishes can still be waiting.
        while len(state.published_at) > depth + len(messages):
            state.published_at.popleft()
        return len(messages)

    async def _resolve(
        self, state: _LaneState, picks: list[tuple[str, str]], cursors: dict[str, int]
    ) -> list[ItemMessage]:
        """Turn (tenant, batch) picks into messages for the batches' next queued indexes, in pick
        order. A batch with fewer queued items after its cursor than picked is dry: dropped."""
        indexes: dict[str, deque[int]] = {}
        for (tenant, batch_id), count in _counted(picks).items():
            known = self._known[batch_id]
            found = [
                item.index
                for item in await self.source.queued_items(
                    batch_id, after_index=known.cursor, limit=count, unpublished_only=self.config.skip_published
                )
            ]
            indexes[batch_id] = deque(found)
            if found:
                cursors[batch_id] = found[-1]
            if len(found) < count:
                state.fair.remove_batch(tenant, batch_id)
        messages = []
        for tenant, batch_id in picks:
            if indexes[batch_id]:
                messages.append(ItemMessage(tenant, batch_id, indexes[batch_id].popleft(), lane=state.lane.name))
        return messages

    async def _mark_published(self, messages: Sequence[ItemMessage]) -> None:
        """After the confirm. A mark that fails to land costs nothing now (the cursors moved): a
        restarted feeder would publish those items once more, and the result write absorbs it."""
        by_batch: dict[str, list[int]] = {}
        for message in messages:
            by_batch.setdefault(message.batch_id, []).append(message.index)
        for batch_id, indexes in by_batch.items():
            try:
                await self.source.mark_published(batch_id, indexes)
            except Exception as exc:
                log.warning("batches: could not mark %d items of %s published: %r", len(indexes), batch_id, exc)

    def _show_oldest_age(self, state: _LaneState, depth: int, now: float) -> None:
        times = state.published_at
        # The oldest waiting message is the depth-th newest publish (or older than all we know).
        age = 0.0 if depth <= 0 or not times else now - times[max(0, len(times) - depth)]
        metrics.OLDEST_MESSAGE_AGE.labels(state.lane.name).set(age)

    def _show_tenants(self, state: _LaneState) -> None:
        tenants = {known.tenant for known in self._known.values() if known.lane == state.lane.name}
        for tenant in tenants:
            metrics.TENANT_WAITING.labels(state.lane.name, tenant).set(state.fair.pending(tenant))
        for tenant in state.tenants_shown - tenants:
            with contextlib.suppress(KeyError):
                metrics.TENANT_WAITING.remove(state.lane.name, tenant)
        state.tenants_shown = tenants


class DeadItemStore(Protocol):
    """What the dead-letter sweeper changes in the store (``store.BatchStore`` has all three)."""

    async def retry_item_later(self, batch_id: str, index: int, *, throttled: bool, now: float) -> Item: ...

    async def expire_item(self, batch_id: str, index: int, *, now: float, reason: str | None = None) -> Item: ...

    async def record_item(self, batch_id: str, index: int, outcome: Outcome, *, now: float) -> tuple[Item, Any]: ...


class DeadLetterSweeper:
    """The handler for ``LaneQueues.consume_dead_letters``: applies ``lanes.after_dead_letter``.

    RETRY (aged out of the batch lane): the item goes back to ``queued`` in the store (if a dead
    worker left it ``sent``) and, while it is still unfinished, to the feeder with ``ttl_requeues
    + 1``. FINISH: expired or errored with the reason. Every step is idempotent, so a dead letter
    seen twice (its ack lost) ends the same way. Runs beside the feeder (it needs ``put_back``).
    """

    def __init__(self, store: DeadItemStore, feeder: Feeder, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.feeder = feeder
        self._now = wall_clock  # item times are unix seconds

    async def __call__(self, message: ItemMessage | None, reason: DeadReason) -> None:
        if message is None:
            log.error("batches: an unreadable message reached the dead-letter queue (%s); dropped", reason)
            return
        lane = LANES[message.lane]
        decision = after_dead_letter(reason, lane=lane, ttl_requeues=message.ttl_requeues)
        batch_id, index, now = message.batch_id, message.index, self._now()
        if decision.action is Action.RETRY:
            item = await self.store.retry_item_later(batch_id, index, throttled=False, now=now)
            if not item.state.final:
                self.feeder.put_back(replace(message, ttl_requeues=message.ttl_requeues + 1))
            return
        assert decision.outcome is not None
        if decision.outcome.state is ItemState.EXPIRED:
            await self.store.expire_item(batch_id, index, now=now, reason=decision.outcome.reason)
        else:
            await self.store.record_item(batch_id, index, decision.outcome, now=now)
        log.info("batches: item %s ended %s: %s", message.key, decision.outcome.state, decision.reason)


def _give_back(fair: FairQueue, picks: list[tuple[str, str]]) -> None:
    for (tenant, batch_id), count in _counted(picks).items():
        fair.add(tenant, batch_id, count)


def _counted(picks: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for pick in picks:
        counts[pick] = counts.get(pick, 0) + 1
    return counts
