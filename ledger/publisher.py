"""The decision service's usage sink: records -> RabbitMQ, with a local spool while it is away.

Runs on ext_proc's event loop. ``put`` only appends to an in-memory queue (no encoding, no I/O, no
await) so the request path pays a deque append; one background task does the rest:

- broker up, spool empty: take up to ``max_in_flight`` batches, publish each as one message
  (persistent, mandatory, to the ledger's exchange) and wait for the broker's confirms. A batch
  leaves memory once confirmed. Any failure (a nack, a return, a timeout, a lost connection) moves
  the unconfirmed batches, then everything still held, into the spool, and the task reconnects.
- spool not empty: new batches go behind the spooled ones (into the spool: order is kept), and the
  oldest spooled batches are published; an entry is popped only once confirmed.
- broker down: held batches go to the spool (fsync'd) and the task reconnects with backoff.
- spool full: the batch is dropped, counted (``ccr_ledger_records_dropped_total``) and logged as an
  error: losing records is preferred over blocking requests or exhausting memory.

A confirm can be lost with its message stored (a connection cut at the wrong moment), so a batch
may reach the queue twice; the writer keeps one row per ``(request_id, time)``, so that costs
nothing. The spool's disk work runs on one worker thread: the event loop never waits for fsync.

One publisher per process and per spool directory (the spool takes a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange

from ccr.v1 import tracing
from ccr.v1.usage_record import UsageRecord, encode_batch
from ledger import metrics
from ledger.env import expand_env, redact_url
from ledger.spool import DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES, Spool, SpoolEntry
from ledger.topology import QueueNames, declare

log = logging.getLogger(__name__)
T = TypeVar("T")
DROP_LOG_INTERVAL = 10.0  # seconds between error lines while batches are being dropped


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    url: str  # amqp://user:${RABBITMQ_PASSWORD}@host:5672/vhost; ${VAR}s expanded at connect time
    spool_dir: str  # one per process (e.g. one per ext_proc worker)
    names: QueueNames = field(default_factory=QueueNames)
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    spool_segment_bytes: int = DEFAULT_SEGMENT_BYTES
    max_in_flight: int = 256  # messages awaiting the broker's confirm at once
    # Batches waiting together are sent as one message of up to this many records: a broker message
    # costs far more than a record, and a busy gateway puts a record or a few at a time.
    max_records_per_message: int = 500
    memory_max_batches: int = 20_000  # held beyond this (a slow broker): the rest waits in the spool
    confirm_timeout: float = 5.0
    connect_timeout: float = 5.0
    reconnect_min: float = 0.1
    reconnect_max: float = 5.0
    close_timeout: float = 10.0


@dataclass(slots=True)
class _Batch:
    records: Sequence[UsageRecord]
    body: bytes | None = None  # encoded once, kept for a retry
    merged: bool = False  # records is our own list, grown by merging the batches behind it

    def encoded(self) -> bytes:
        if self.body is None:
            self.body = encode_batch(self.records)
        return self.body


class RabbitPublisher:
    """A ``UsageSink``: ``start()`` on the running loop, ``put()`` from anywhere on it, ``await
    close()`` once at shutdown."""

    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self._memory: deque[_Batch] = deque()
        self._in_flight: list[_Batch] = []  # taken from memory, confirms awaited
        self._spilling: list[_Batch] = []  # taken from memory, being written to the spool
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._spool: Spool | None = None
        self._disk_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-spool")
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._reconnect_delay = config.reconnect_min
        self._replayed_since_growth = 0
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0

    # -- the sink ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task (call from within the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-publisher")

    def put(self, records: Sequence[UsageRecord]) -> None:
        try:
            if not records:
                return
            if self._closed:
                self._drop(len(records), "the publisher is closed")
                return
            if not all(type(record) is UsageRecord for record in records):
                # checked here so that one caller's bug cannot spoil a message shared with others
                self._drop(len(records), f"not usage records: {records!r:.200}")
                return
            self._memory.append(_Batch(records))
            self._wake.set()
        except Exception:  # the request path must never see the ledger's trouble
            log.exception("ledger: put failed")

    async def close(self) -> None:
        """Publish what is held, or spool it, within ``close_timeout`` seconds."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.config.close_timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                log.exception("ledger: the publisher task failed")
        # Whatever the task did not finish goes to disk (some may be published too: duplicates
        # are harmless, losses are not).
        leftover = [*self._in_flight, *self._spilling, *self._memory]
        self._in_flight, self._spilling = [], []
        self._memory.clear()
        if leftover:
            if self._spool is None:
                self._spool = await self._disk(self._open_spool)
            await self._append_to_spool(leftover)
        await self._disconnect()
        if self._spool is not None:
            await self._disk(self._spool.close)
        self._disk_thread.shutdown(wait=True)

    # -- what tests and the supervisor read ----------------------------------------------------

    @property
    def held_batches(self) -> int:
        """Batches in memory (not yet confirmed nor spooled)."""
        return len(self._memory) + len(self._in_flight) + len(self._spilling)

    @property
    def spooled_batches(self) -> int:
        return len(self._spool) if self._spool is not None else 0

    async def wait_drained(self, timeout: float) -> bool:
        """True once nothing is held in memory or the spool (everything confirmed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._spool is not None and not self.held_batches and not self.spooled_batches:
                return True
            await asyncio.sleep(0.02)
        return False

    # -- the background task -------------------------------------------------------------------

    async def _run(self) -> None:
        self._spool = await self._disk(self._open_spool)
        metrics.SPOOL_BYTES.set(self._spool.bytes)
        while True:
            self._wake.clear()
            if self._closing and not self._memory:
                return
            if self._connection is None:
                # Held in memory during one connection attempt (bounded by connect_timeout); to
                # the spool as soon as it fails.
                if not self._closing and await self._connect():
                    continue
                await self._spill_memory("the broker is not connected")
                if self._closing:
                    return
                await self._sleep_before_reconnect()
                continue
            if len(self._spool):
                await self._spill_memory("the spool is being replayed")
                if self._closing:
                    return  # the spool keeps its batches for the next run
                await self._replay_some()
                continue
            if self._memory:
                if len(self._memory) > self.config.memory_max_batches:
                    await self._spill_memory(f"more than {self.config.memory_max_batches} batches are waiting")
                    continue
                await self._publish_some()
                continue
            await self._wake.wait()

    async def _publish_some(self) -> None:
        self._in_flight = self._take(self.config.max_in_flight)
        confirmed = await self._publish_all([batch.encoded() for batch in self._in_flight])
        metrics.PUBLISHED.inc(sum(len(b.records) for b, ok in zip(self._in_flight, confirmed, strict=True) if ok))
        failed = [batch for batch, ok in zip(self._in_flight, confirmed, strict=True) if not ok]
        if failed:
            # Unconfirmed ones first, then what arrived meanwhile: the order they were put in.
            self._memory.extendleft(reversed(failed))
            self._in_flight = []
            await self._disconnect()
            await self._spill_memory("the broker did not confirm")
        self._in_flight = []

    def _take(self, messages: int) -> list[_Batch]:
        """Up to ``messages`` batches from the front of memory, consecutive ones merged (order kept)."""
        taken: list[_Batch] = []
        limit = self.config.max_records_per_message
        while self._memory and len(taken) < messages:
            batch = self._memory.popleft()
            last = taken[-1] if taken else None
            if last is not None and last.body is None and len(last.records) + len(batch.records) <= limit:
                if not last.merged:  # never extend the caller's own list
                    last.records, last.merged = list(last.records), True
                assert isinstance(last.records, list)
                last.records.extend(batch.records)
            else:
                taken.append(batch)
        return taken

    async def _replay_some(self) -> None:
        assert self._spool is not None
        entries = await self._disk(self._spool.peek, self.config.max_in_flight)
        confirmed = await self._publish_all([entry.payload for entry in entries])
        prefix = next((index for index, ok in enumerate(confirmed) if not ok), len(confirmed))
        if prefix:
            await self._disk(self._spool.pop, prefix)
            replayed = sum(entry.records for entry in entries[:prefix])
            metrics.REPLAYED.inc(replayed)
            self._replayed_since_growth += replayed
            metrics.SPOOL_BYTES.set(self._spool.bytes)
        if prefix < len(entries):
            await self._disconnect()
        elif not len(self._spool):
            log.warning("ledger: spool drained: %d records replayed to RabbitMQ", self._replayed_since_growth)
            self._replayed_since_growth = 0

    async def _publish_all(self, bodies: list[bytes]) -> list[bool]:
        """Publish the messages concurrently (their confirms pipelined); which ones were confirmed."""
        exchange = self._exchange
        if exchange is None:
            return [False] * len(bodies)
        routing_key = self.config.names.queue
        timeout = self.config.confirm_timeout

        async def one(body: bytes) -> None:
            message = aio_pika.Message(
                body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
            )
            await exchange.publish(message, routing_key, mandatory=True, timeout=timeout)

        attributes = {"messaging.system": "rabbitmq", "messaging.destination.name": routing_key}
        with tracing.background("ccr.ledger.publish", tracing.PRODUCER, attributes) as span:
            results = await asyncio.gather(*(one(body) for body in bodies), return_exceptions=True)
            errors = [result for result in results if isinstance(result, BaseException)]
            span.set("messaging.batch.message_count", len(bodies))
            if errors:
                span.fail(f"{len(errors)} of {len(bodies)} batches not confirmed: {errors[0]!r}")
        if errors:
            log.warning("ledger: %d of %d batches not confirmed by RabbitMQ: %r", len(errors), len(bodies), errors[0])
        else:
            self._reconnect_delay = self.config.reconnect_min
        return [result is None for result in results]

    async def _spill_memory(self, why: str) -> None:
        if not self._memory:
            return
        self._spilling = self._take(len(self._memory))
        await self._append_to_spool(self._spilling, why)
        self._spilling = []

    async def _append_to_spool(self, batches: list[_Batch], why: str = "shutting down") -> None:
        assert self._spool is not None
        was_empty = not len(self._spool)
        entries = []
        for batch in batches:
            try:
                entries.append(SpoolEntry(batch.encoded(), len(batch.records)))
            except Exception as exc:  # a record that cannot be encoded cannot be sent either
                self._drop(len(batch.records), f"cannot encode the batch: {exc!r}")
        stored = await self._disk(self._spool.append_many, entries)
        metrics.SPOOLED.inc(sum(entry.records for entry in entries[:stored]))
        metrics.SPOOL_BYTES.set(self._spool.bytes)
        if stored and was_empty:
            log.warning("ledger: spooling usage batches to %s: %s", self.config.spool_dir, why)
        if stored < len(entries):
            self._drop(
                sum(entry.records for entry in entries[stored:]),
                f"the spool is full ({self._spool.bytes} of {self.config.spool_max_bytes} bytes)",
            )

    def _drop(self, records: int, why: str) -> None:
        metrics.DROPPED.inc(records)
        self._dropped_unlogged += records
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            log.error("ledger: %d usage records dropped: %s", self._dropped_unlogged, why)
            self._dropped_unlogged = 0
            self._last_drop_log = now

    # -- connection ----------------------------------------------------------------------------

    async def _connect(self) -> bool:
        url = self.config.url
        try:
            connection = await aio_pika.connect(expand_env(url), timeout=self.config.connect_timeout)
        except Exception as exc:
            log.warning("ledger: cannot connect to RabbitMQ at %s: %s", redact_url(url), _reason(exc, url))
            return False
        try:
            channel = await asyncio.wait_for(
                connection.channel(publisher_confirms=True, on_return_raises=True), self.config.connect_timeout
            )
            topology = await asyncio.wait_for(declare(channel, self.config.names), self.config.connect_timeout)
        except Exception as exc:
            log.warning("ledger: cannot set up the ledger queue on %s: %s", redact_url(url), _reason(exc, url))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 1.0)
            return False
        self._connection, self._exchange = connection, topology.exchange
        log.info("ledger: connected to RabbitMQ at %s", redact_url(url))
        return True

    async def _disconnect(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 1.0)

    async def _sleep_before_reconnect(self) -> None:
        """Wait out the backoff; batches put meanwhile go to the spool as they come (a put must
        not cut the wait short, or a busy gateway would reconnect at its request rate)."""
        delay = self._reconnect_delay * random.uniform(0.8, 1.2)
        self._reconnect_delay = min(self._reconnect_delay * 2, self.config.reconnect_max)
        deadline = time.monotonic() + delay
        while not self._closing and (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
            self._wake.clear()
            await self._spill_memory("the broker is not connected")

    # -- disk, off the loop --------------------------------------------------------------------

    def _open_spool(self) -> Spool:
        return Spool(self.config.spool_dir, self.config.spool_max_bytes, self.config.spool_segment_bytes)

    async def _disk(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._disk_thread, function, *args)


def _reason(exc: BaseException, url: str) -> str:
    """The error's text without the expanded URL's password, should a library quote it."""
    text = str(exc) or type(exc).__name__
    try:
        expanded = expand_env(url)
    except Exception:
        return text
    return text.replace(expanded, redact_url(expanded))
