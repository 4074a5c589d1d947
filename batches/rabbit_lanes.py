"""The batch lanes on RabbitMQ: the adapter that carries out ``lanes.py``'s decisions.

Topology (declared idempotently on every connection, the same way by every process):

  default exchange --routing key = lane queue--> ccr.batch.interactive, ccr.batch.batch
      (classic, durable, x-max-priority 10, x-message-ttl = the lane's TTL)
  lane queue --expired (TTL) / rejected--> ccr.batch.dlx (fanout, durable) --> ccr.batch.dlq
      (classic, durable, no TTL: a dead letter waits for the sweeper)

A ``prefix`` goes in front of every name (tests, side-by-side deployments). Messages are persistent
and carry their lane's priority; the lane is also in the body (``ItemMessage.lane``), which is how a
dead letter's lane is known without a per-lane dead-letter routing key.

Publishing: one channel with publisher confirms; ``publish`` returns once the broker confirmed every
message (persisted on a durable queue), retrying across reconnects for ``publish_timeout``, then
raises ``LanesUnavailable``. A confirm lost with the connection means a message may be stored twice:
the worker's result write is idempotent by ``ItemMessage.key``.

Consuming: a channel per lane with the lane's prefetch; deliveries go to a local inbox ordered by
message priority, and at most ``concurrency`` handlers run at once, so when handlers are scarce an
interactive message overtakes the batch messages already in hand. A message is acknowledged only
after its handler returned; a handler that raises gets it put back (nack, requeue) after
``failure_pause``; a handler that returns a ``DeadReason`` has it published to the dead-letter
exchange with the reason (``REASON_HEADER``), then acked. A consumer that dies (process killed,
connection lost) leaves its messages unacked, and the broker delivers them again.

Broker restart or lost connection: durable queues and persistent messages survive, unacked ones
are redelivered; every user of this class reconnects with jittered exponential backoff. Handlers
still running when the connection goes are left to finish (their ack then fails and the broker
redelivers the message, which the idempotent handler absorbs): cancelling a half-done provider call
would waste it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from batches import lane_metrics as metrics
from batches.feeder import DeadLetterHandler, LanesUnavailable, MessageHandler
from batches.lanes import (
    BATCH,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    INTERACTIVE,
    REASON_HEADER,
    DeadReason,
    ItemMessage,
    Lane,
    MessageError,
    dead_reason,
)

log = logging.getLogger(__name__)
DETAIL_HEADER = "x-ccr-dead-letter-detail"  # free text beside the reason (e.g. why it was unreadable)


@dataclass(frozen=True, slots=True)
class LaneNames:
    prefix: str = ""

    def queue(self, lane: Lane) -> str:
        return self.prefix + lane.queue

    @property
    def dead_letter_exchange(self) -> str:
        return self.prefix + DEAD_LETTER_EXCHANGE

    @property
    def dead_letter_queue(self) -> str:
        return self.prefix + DEAD_LETTER_QUEUE

    def queue_arguments(self, lane: Lane) -> dict[str, Any]:
        return {**lane.queue_arguments(), "x-dead-letter-exchange": self.dead_letter_exchange}


@dataclass(frozen=True, slots=True)
class RabbitLanesConfig:
    url: str  # amqp://user:pass@host:5672/vhost
    prefix: str = ""
    lanes: tuple[Lane, ...] = (INTERACTIVE, BATCH)
    connection_name: str = "ccr-batch-lanes"  # shown by rabbitmqctl / the management UI
    publish_timeout: float = 30.0  # a publish keeps retrying (reconnecting) this long
    confirm_timeout: float = 5.0
    connect_timeout: float = 5.0
    reconnect_min: float = 0.1
    reconnect_max: float = 5.0
    failure_pause: float = 0.5  # before a failed message is put back: no hot loop on a broken store
    stop_grace: float = 30.0  # on stop: how long running handlers may take to finish
    dead_letter_prefetch: int = 50


@dataclass(slots=True)
class _Session:
    """One live connection: its confirm channel and an event set when either goes."""

    connection: AbstractConnection
    confirms: AbstractChannel
    lost: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class _Subscription:
    queue: str
    prefetch: int
    arguments: dict[str, Any]


_Handle = Callable[[AbstractIncomingMessage], Awaitable[None]]


class RabbitLanes:
    """``feeder.LaneQueues`` on RabbitMQ. Use from one event loop; ``close()`` once at the end."""

    def __init__(self, config: RabbitLanesConfig) -> None:
        self.config = config
        self.names = LaneNames(config.prefix)
        self._lanes = {lane.name: lane for lane in config.lanes}
        self._session: _Session | None = None
        self._connect_lock = asyncio.Lock()
        self._reconnect_delay = config.reconnect_min
        self._closed = False
        self._closing: set[asyncio.Future[None]] = set()
        self._orphans: set[asyncio.Task[None]] = set()  # handlers whose connection went under them

    # -- topology ------------------------------------------------------------------------------

    async def declare(self) -> None:
        await self._live_session(time.monotonic() + self.config.publish_timeout)

    async def _declare(self, channel: AbstractChannel) -> None:
        dead_letter_exchange = await channel.declare_exchange(
            self.names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_letter_queue = await channel.declare_queue(
            self.names.dead_letter_queue, durable=True, arguments={"x-queue-type": "classic"}
        )
        await dead_letter_queue.bind(dead_letter_exchange, routing_key="")
        for lane in self._lanes.values():
            await channel.declare_queue(
                self.names.queue(lane), durable=True, arguments=self.names.queue_arguments(lane)
            )

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, messages: Sequence[ItemMessage]) -> None:
        deadline = time.monotonic() + self.config.publish_timeout
        waiting = list(messages)
        last_error: BaseException | None = None
        while waiting:
            if time.monotonic() >= deadline:
                raise LanesUnavailable(f"{len(waiting)} messages not confirmed: {last_error!r}")
            session = await self._live_session(deadline)
            results = await asyncio.gather(
                *(self._publish_one(session, message) for message in waiting), return_exceptions=True
            )
            failed = []
            for message, result in zip(waiting, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(message)
                    last_error = result
                else:
                    metrics.PUBLISHED.labels(message.lane).inc()
            waiting = failed
            if failed:
                log.warning(
                    "batches: %d of %d messages not confirmed (%r); retrying", len(failed), len(results), last_error
                )
                self._drop_session(session)

    async def _publish_one(self, session: _Session, message: ItemMessage) -> None:
        lane = self._lane(message.lane)
        await session.confirms.default_exchange.publish(
            aio_pika.Message(message.encode(), timestamp=time.time(), **lane.message_properties(message)),
            self.names.queue(lane),
            mandatory=True,  # no such queue -> an error, not a silent drop
            timeout=self.config.confirm_timeout,
        )

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
            key=lambda lane: -lane.priority,  # the urgent lane's consumer starts first
        )
        limit = concurrency or sum(lane.prefetch for lane in chosen)
        queues = [
            _Subscription(self.names.queue(lane), lane.prefetch, self.names.queue_arguments(lane)) for lane in chosen
        ]
        await self._consume_forever(queues, limit, stop, lambda incoming: self._handle_item(incoming, handler))

    async def consume_dead_letters(self, handler: DeadLetterHandler, stop: asyncio.Event) -> None:
        queues = [
            _Subscription(self.names.dead_letter_queue, self.config.dead_letter_prefetch, {"x-queue-type": "classic"})
        ]
        await self._consume_forever(
            queues, self.config.dead_letter_prefetch, stop, lambda incoming: self._handle_dead(incoming, handler)
        )

    async def _consume_forever(
        self, queues: list[_Subscription], limit: int, stop: asyncio.Event, handle: _Handle
    ) -> None:
        while not stop.is_set() and not self._closed:
            session = await self._wait_for_session(None, stop)
            if session is None:
                return
            try:
                await self._consume_session(session, queues, limit, stop, handle)
            except Exception as exc:  # a channel refused or closed under us: start over
                log.warning(
                    "batches: consuming %s failed: %r; starting over",
                    [subscription.queue for subscription in queues],
                    exc,
                )
                await _sleep_or_stop(stop, self.config.reconnect_min)

    async def _consume_session(
        self, session: _Session, queues: list[_Subscription], limit: int, stop: asyncio.Event, handle: _Handle
    ) -> None:
        inbox: list[tuple[int, int, AbstractIncomingMessage]] = []  # (-priority, arrival, message)
        arrival = itertools.count()
        wake = asyncio.Event()
        channels: list[AbstractChannel] = []
        running: set[asyncio.Task[None]] = set()

        def deliver(incoming: AbstractIncomingMessage) -> None:
            heapq.heappush(inbox, (-(incoming.priority or 0), next(arrival), incoming))
            wake.set()

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            deliver(incoming)

        # This consumer's own "lost": the connection went, or one of our channels was closed by
        # the broker. Not the session's: closing our channels must not end the publisher's.
        lost = asyncio.Event()
        watchers = [asyncio.ensure_future(event.wait()) for event in (stop, session.lost)]
        for watcher in watchers:
            watcher.add_done_callback(lambda _: (wake.set(), session.lost.is_set() and lost.set()))
        try:
            for subscription in queues:
                channel = await session.connection.channel()
                channel.close_callbacks.add(lambda *_: (lost.set(), wake.set()))
                channels.append(channel)
                await channel.set_qos(prefetch_count=subscription.prefetch)
                queue = await channel.declare_queue(subscription.queue, durable=True, arguments=subscription.arguments)
                await queue.consume(on_message, no_ack=False)
            while not stop.is_set() and not lost.is_set() and not self._closed:
                while inbox and len(running) < limit:
                    _, _, incoming = heapq.heappop(inbox)
                    task = asyncio.ensure_future(handle(incoming))
                    running.add(task)
                    task.add_done_callback(lambda done: (running.discard(done), wake.set()))
                wake.clear()
                if stop.is_set() or lost.is_set():
                    break
                await wake.wait()
            if stop.is_set() and running:
                # Stopping: what is in hand finishes and is acked; the inbox goes back on close.
                await asyncio.wait(running, timeout=self.config.stop_grace)
        finally:
            for watcher in watchers:
                watcher.cancel()
            if not lost.is_set():
                for task in running:
                    task.cancel()  # dying (cancelled, closed, or the grace ran out): redelivered
            else:
                self._orphans.update(running)  # held, so they are not collected while they finish
                for task in running:
                    task.add_done_callback(self._orphans.discard)
            # Lost: the handlers in hand run on (see the module's docstring). Our channels close
            # either way, so none of them keeps feeding an inbox nobody reads.
            for channel in channels:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), 2)

    async def _handle_item(self, incoming: AbstractIncomingMessage, handler: MessageHandler) -> None:
        lane_name = _lane_of(incoming)
        try:
            message = ItemMessage.decode(incoming.body)
        except MessageError as exc:
            log.error("batches: unreadable message %s on %s: %s", incoming.message_id, incoming.routing_key, exc)
            await self._dead_letter(incoming, DeadReason.REJECTED, str(exc))
            return
        try:
            verdict = await handler(message, bool(incoming.redelivered))
        except Exception:
            log.exception("batches: handler failed for %s; putting it back", message.key)
            metrics.REQUEUED.labels(lane_name).inc()
            await asyncio.sleep(self.config.failure_pause)
            with contextlib.suppress(Exception):  # channel gone: the broker puts it back anyway
                await incoming.nack(requeue=True)
            return
        if verdict is not None:
            await self._dead_letter(incoming, verdict, "")
            return
        try:
            await incoming.ack()
            metrics.ACKED.labels(lane_name).inc()
        except Exception as exc:
            log.warning("batches: ack of %s failed (%r); it will be redelivered", message.key, exc)

    async def _handle_dead(self, incoming: AbstractIncomingMessage, handler: DeadLetterHandler) -> None:
        reason = dead_reason(dict(incoming.headers or {}))
        try:
            message: ItemMessage | None = ItemMessage.decode(incoming.body)
        except MessageError:
            message = None
        metrics.DEAD_LETTERED.labels(message.lane if message else "unknown", reason.value).inc()
        try:
            await handler(message, reason)
        except Exception:
            log.exception("batches: dead-letter handler failed for %s; putting it back", incoming.message_id)
            await asyncio.sleep(self.config.failure_pause)
            with contextlib.suppress(Exception):
                await incoming.nack(requeue=True)
            return
        with contextlib.suppress(Exception):  # a failed ack: seen again, after_dead_letter is idempotent
            await incoming.ack()

    async def _dead_letter(self, incoming: AbstractIncomingMessage, reason: DeadReason, detail: str) -> None:
        """Our own dead-lettering: a copy with the reason to the DLX (confirmed), then ack. If the
        copy cannot be sent, reject: the broker dead-letters it, with its own reason only."""
        headers = {**(incoming.headers or {}), REASON_HEADER: reason.value}
        if detail:
            headers[DETAIL_HEADER] = detail[:1000]
        try:
            session = await self._live_session(time.monotonic() + self.config.confirm_timeout)
            exchange = await session.confirms.get_exchange(self.names.dead_letter_exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(
                    incoming.body,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type=incoming.content_type,
                    message_id=incoming.message_id,
                ),
                routing_key=incoming.routing_key or "",
                timeout=self.config.confirm_timeout,
            )
            await incoming.ack()
        except Exception as exc:
            log.warning(
                "batches: could not dead-letter %s with its reason (%r); rejecting it", incoming.message_id, exc
            )
            with contextlib.suppress(Exception):
                await incoming.reject(requeue=False)

    # -- monitoring ----------------------------------------------------------------------------

    async def lane_depth(self, lane: Lane) -> int:
        lane = self._lane(lane.name)
        depth = await self._message_count(self.names.queue(lane), self.names.queue_arguments(lane))
        metrics.LANE_DEPTH.labels(lane.name).set(depth)
        return depth

    async def dead_letter_depth(self) -> int:
        depth = await self._message_count(self.names.dead_letter_queue, {"x-queue-type": "classic"})
        metrics.DEAD_LETTER_DEPTH.set(depth)
        return depth

    async def _message_count(self, queue: str, arguments: dict[str, Any]) -> int:
        # A full (not passive) declaration: identical arguments are a no-op, and a missing queue is
        # created rather than closing the channel.
        session = await self._live_session(time.monotonic() + self.config.publish_timeout)
        try:
            declared = await session.confirms.declare_queue(queue, durable=True, arguments=arguments)
        except Exception as exc:
            self._drop_session(session)
            raise LanesUnavailable(f"cannot read the depth of {queue}: {exc!r}") from exc
        return declared.declaration_result.message_count or 0

    # -- connection ----------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            session.lost.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.connection.close(), 2)

    def _lane(self, name: str) -> Lane:
        try:
            return self._lanes[name]
        except KeyError:
            raise ValueError(f"lane {name!r} is not one of this adapter's ({', '.join(self._lanes)})") from None

    def _drop_session(self, session: _Session) -> None:
        session.lost.set()
        if self._session is session:
            self._session = None
            closing = asyncio.ensure_future(_close_quietly(session.connection))
            self._closing.add(closing)  # a reference, so the task is not collected half-way
            closing.add_done_callback(self._closing.discard)

    async def _live_session(self, deadline: float | None, stop: asyncio.Event | None = None) -> _Session:
        session = await self._wait_for_session(deadline, stop)
        assert session is not None  # only None when stop is given and set
        return session

    async def _wait_for_session(self, deadline: float | None, stop: asyncio.Event | None) -> _Session | None:
        """The live connection, connecting (with backoff) if there is none; raises
        ``LanesUnavailable`` at ``deadline``, returns None if ``stop`` is set first."""
        while True:
            session = self._session
            if session is not None and not session.lost.is_set():
                return session
            if session is not None:
                self._drop_session(session)  # e.g. its confirm channel was closed: the connection may live on
            if self._closed:
                raise LanesUnavailable("the lanes are closed")
            if stop is not None and stop.is_set():
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise LanesUnavailable(f"RabbitMQ not reachable for {self.config.publish_timeout:.0f} s")
            try:
                async with asyncio.timeout(remaining):
                    async with self._connect_lock:
                        stale = self._session is None or self._session.lost.is_set()
                        if stale and not await self._connect():
                            await _sleep_or_stop(stop, self._next_delay())
            except TimeoutError:
                continue

    async def _connect(self) -> bool:
        try:
            connection = await aio_pika.connect(
                self.config.url,
                timeout=self.config.connect_timeout,
                client_properties={"connection_name": self.config.connection_name},
            )
        except Exception as exc:
            log.warning("batches: cannot connect to RabbitMQ: %r", exc)
            return False
        try:
            confirms = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await asyncio.wait_for(self._declare(confirms), self.config.connect_timeout)
        except Exception as exc:
            log.warning("batches: cannot declare the lanes: %r", exc)
            await _close_quietly(connection)
            return False
        session = _Session(connection, confirms)
        connection.close_callbacks.add(lambda *_: session.lost.set())
        confirms.close_callbacks.add(lambda *_: session.lost.set())
        self._session = session
        self._reconnect_delay = self.config.reconnect_min
        log.info("batches: connected to RabbitMQ, lanes %s declared", ", ".join(self._lanes))
        return True

    def _next_delay(self) -> float:
        delay = self._reconnect_delay * random.uniform(0.8, 1.2)
        self._reconnect_delay = min(self._reconnect_delay * 2, self.config.reconnect_max)
        return delay


def _lane_of(incoming: AbstractIncomingMessage) -> str:
    """The lane a delivery came from, for metrics, without trusting the body."""
    queue = incoming.routing_key or ""
    return queue.rsplit(".", 1)[-1] or "unknown"


async def _close_quietly(connection: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 2)


async def _sleep_or_stop(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
