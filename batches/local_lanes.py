"""The batch lanes in process: the stand-in for RabbitMQ in embedded mode (``ccr-gateway up`` with
nothing installed), with the same interface (``feeder.LaneQueues``) and the behaviour the batch
code relies on:

- a lane is FIFO; a consumer of several lanes takes the highest-priority lane first;
- at most ``prefetch`` messages of a lane are in one consumer's hands at a time;
- a message that waited longer than its lane's TTL goes to the dead-letter queue as ``expired``
  (checked whenever a consumer looks, and at least every ``expiry_check`` seconds);
- acknowledged only after the handler returned; a handler that raises, or a consumer that dies
  (its task cancelled) with messages in hand, puts them back in their place, marked redelivered
  (like RabbitMQ, a put-back message keeps its first enqueue time, so its TTL still counts);
- a handler that returns a ``DeadReason`` sends the message to the dead-letter queue with it.

Nothing survives the process: embedded mode rebuilds the lanes from the store (the feeder
publishes the queued items again), which is the same recovery as a feeder restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batches import lane_metrics as metrics
from batches.feeder import DeadLetterHandler, MessageHandler
from batches.lanes import BATCH, INTERACTIVE, DeadReason, ItemMessage, Lane


@dataclass(slots=True)
class _Entry:
    seq: int  # publish order: its place in the lane, kept when it is put back
    message: ItemMessage
    enqueued_at: float
    redelivered: bool = False

    def __lt__(self, other: _Entry) -> bool:
        return self.seq < other.seq


class LocalLanes:
    """``feeder.LaneQueues`` in memory. One event loop; not thread-safe."""

    def __init__(
        self,
        lanes: Sequence[Lane] = (INTERACTIVE, BATCH),
        *,
        clock: Callable[[], float] = time.monotonic,
        failure_pause: float = 0.0,
        stop_grace: float = 30.0,
        expiry_check: float = 1.0,
    ) -> None:
        self._lanes = {lane.name: lane for lane in lanes}
        self._ready: dict[str, list[_Entry]] = {lane.name: [] for lane in lanes}  # heaps by seq
        self._dead: deque[tuple[ItemMessage, DeadReason]] = deque()
        self._clock = clock
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._failure_pause = failure_pause
        self._stop_grace = stop_grace
        self._expiry_check = expiry_check
        self._closed = False

    async def declare(self) -> None:
        """Nothing to create: the lanes exist from construction."""

    async def publish(self, messages: Sequence[ItemMessage]) -> None:
        now = self._clock()
        for message in messages:
            lane = self._lane(message.lane)
            heapq.heappush(self._ready[lane.name], _Entry(next(self._seq), message, now))
            metrics.PUBLISHED.labels(lane.name).inc()
        self._notify()

    async def lane_depth(self, lane: Lane) -> int:
        self.expire_due()
        depth = len(self._ready[self._lane(lane.name).name])
        metrics.LANE_DEPTH.labels(lane.name).set(depth)
        return depth

    async def dead_letter_depth(self) -> int:
        self.expire_due()
        metrics.DEAD_LETTER_DEPTH.set(len(self._dead))
        return len(self._dead)

    async def close(self) -> None:
        self._closed = True
        self._notify()

    def expire_due(self) -> int:
        """Move every message older than its lane's TTL to the dead-letter queue; how many."""
        now = self._clock()
        moved = 0
        for name, ready in self._ready.items():
            ttl = self._lanes[name].ttl_seconds
            if not any(now - entry.enqueued_at >= ttl for entry in ready):
                continue
            kept = []
            for entry in sorted(ready):
                if now - entry.enqueued_at >= ttl:
                    self._dead.append((entry.message, DeadReason.EXPIRED))
                    moved += 1
                else:
                    kept.append(entry)
            self._ready[name] = kept  # sorted is a valid heap
        if moved:
            self._notify()
        return moved

    # -- consuming -----------------------------------------------------------------------------

    async def consume(
        self,
        lanes: Lane | Sequence[Lane],
        handler: MessageHandler,
        stop: asyncio.Event,
        *,
        concurrency: int | None = None,
    ) -> None:
        chosen = sorted(
            (self._lane(lane.name) for lane in ([lanes] if isinstance(lanes, Lane) else lanes)),
            key=lambda lane: -lane.priority,
        )
        limit = concurrency or sum(lane.prefetch for lane in chosen)
        in_hand: dict[asyncio.Task[None], tuple[Lane, _Entry]] = {}
        settled: set[int] = set()  # seqs acked, put back or dead-lettered by their handler

        async def handle(lane: Lane, entry: _Entry) -> None:
            try:
                verdict = await handler(entry.message, entry.redelivered)
            except Exception:
                metrics.REQUEUED.labels(lane.name).inc()
                await asyncio.sleep(self._failure_pause)
                self._put_back(lane, entry)
            else:
                if verdict is None:
                    metrics.ACKED.labels(lane.name).inc()
                else:
                    self._dead.append((entry.message, verdict))
            settled.add(entry.seq)
            self._notify()

        def forget(done: asyncio.Task[None]) -> None:
            _, entry = in_hand.pop(done, (None, None))
            if entry is not None:
                settled.discard(entry.seq)
            self._notify()

        try:
            while not stop.is_set() and not self._closed:
                self.expire_due()
                while len(in_hand) < limit and (taken := self._take(chosen, in_hand)) is not None:
                    task = asyncio.ensure_future(handle(*taken))
                    in_hand[task] = taken
                    task.add_done_callback(forget)
                await self._wait_for_change(stop)
            if in_hand:
                # Stopping: what is in hand finishes (and is acked) within the grace.
                await asyncio.wait(list(in_hand), timeout=self._stop_grace)
        finally:
            # Dying (cancelled, closed, or the grace ran out): what is still in hand goes back.
            for task, (lane, entry) in list(in_hand.items()):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                if entry.seq not in settled:
                    self._put_back(lane, entry)
            self._notify()

    async def consume_dead_letters(self, handler: DeadLetterHandler, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self._closed:
            self.expire_due()
            while self._dead and not stop.is_set():
                message, reason = self._dead.popleft()
                metrics.DEAD_LETTERED.labels(message.lane, reason.value).inc()
                try:
                    await handler(message, reason)
                except asyncio.CancelledError:
                    self._dead.appendleft((message, reason))
                    raise
                except Exception:
                    self._dead.appendleft((message, reason))  # seen again after a pause
                    await asyncio.sleep(max(self._failure_pause, 0.05))
                    break
            await self._wait_for_change(stop)

    def _take(
        self, lanes: list[Lane], in_hand: dict[asyncio.Task[None], tuple[Lane, _Entry]]
    ) -> tuple[Lane, _Entry] | None:
        for lane in lanes:  # highest priority first
            held = sum(1 for held_lane, _ in in_hand.values() if held_lane is lane)
            if held < lane.prefetch and self._ready[lane.name]:
                return lane, heapq.heappop(self._ready[lane.name])
        return None

    def _put_back(self, lane: Lane, entry: _Entry) -> None:
        entry.redelivered = True
        heapq.heappush(self._ready[lane.name], entry)

    def _lane(self, name: str) -> Lane:
        try:
            return self._lanes[name]
        except KeyError:
            raise ValueError(f"lane {name!r} is not one of these lanes ({', '.join(self._lanes)})") from None

    def _notify(self) -> None:
        # A fresh event per change: every waiter holds the old one, which is set once.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_for_change(self, stop: asyncio.Event) -> None:
        changed = self._changed
        waiters = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=self._expiry_check, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
