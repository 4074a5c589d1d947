"""The ledger writer (`ccr-gateway ledger`): the usage queue -> PostgreSQL, each record once.

One consumer, a prefetch window of ``prefetch`` messages. Messages are decoded as they arrive; an
unreadable one is dead-lettered at once (sent to the dead-letter exchange with the reason in the
``x-ccr-dead-letter-reason`` header, then acked; if that send fails, rejected without requeue,
which dead-letters it with the broker's reason only) and never holds up the others. Readable
records accumulate until ``batch_records`` of them, the whole prefetch window, or ``batch_ms``
after the first; then, in one transaction: COPY into the connection's staging table, insert into
``usage_records`` what is not there yet, add exactly those rows to ``usage_daily``, commit. Only
after the commit are the messages acked, with one multiple-ack of the newest good delivery tag.

  crash after commit, before ack -> the broker redelivers -> the inserts find the rows -> no-ops.
  database down -> the batch is retried with backoff, held unacked (the prefetch window stops the
  broker from sending more); nothing is acked before it is stored.
  broker down -> unacked messages go back to the queue by themselves; the writer reconnects and
  starts a new batch (the delivery tags of the old channel mean nothing on a new one).

A batch PostgreSQL refuses for its data (SQLSTATE class 22 or 23: a NUL in a string, a value out
of range) would be retried forever; instead its messages are stored one by one and the ones
refused are dead-lettered with the database's reason.

SIGTERM (``stop``): stop taking messages, finish the batch in hand (commit, ack), close; what was
prefetched but not in the batch goes back to the queue when the channel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage

from ccr.v1.usage_record import RecordError, UsageRecord, decode_batch, parse_time
from ledger import metrics, pg_schema
from ledger.env import expand_env, redact_url
from ledger.topology import REASON_HEADER, QueueNames, declare

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    amqp_url: str  # ${VAR}s expanded at connect time
    postgres_dsn: str  # likewise
    names: QueueNames = field(default_factory=QueueNames)
    prefetch: int = 512  # messages unacked at once (the broker sends no more until some are acked)
    batch_records: int = 5000
    batch_ms: int = 200
    pool_min: int = 1
    pool_max: int = 4
    retention: str = "90 days"
    partitions_ahead_days: int = 7
    maintenance_interval: float = 3600.0
    use_timescaledb: bool = True
    retry_min: float = 0.2
    retry_max: float = 10.0
    shutdown_grace: float = 15.0  # after stop: how long to keep retrying the batch in hand
    write_timeout: float = 30.0  # one batch's transaction; a database that stopped answering is an error


class ConnectionLost(Exception):
    """The broker connection closed under the batch: its delivery tags are void."""


@dataclass(slots=True)
class _Batch:
    messages: list[AbstractIncomingMessage] = field(default_factory=list)  # good ones, delivery order
    records: list[UsageRecord] = field(default_factory=list)
    unacked: int = 0  # messages held (good ones; dead-lettered ones are settled at once)
    started: float = 0.0


class LedgerWriter:
    def __init__(self, config: WriterConfig, *, on_committed: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.retention = pg_schema.parse_retention(config.retention)
        self._on_committed = on_committed  # tests: called with the records inserted, after commit, before ack
        self._pool: asyncpg.Pool | None = None
        self._connection: AbstractConnection | None = None
        self._dead_letters: AbstractExchange | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._lost = asyncio.Event()
        self._last_upkeep = 0.0
        self.committed_records = 0  # inserted rows (duplicates not counted), for tests and the bench
        self.records_in_hand = 0  # in the batch being filled or stored (received, not yet acked)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Consume until ``stop`` is set; 0 when the last batch was stored and acked, 1 when the
        database stayed away through the shutdown grace (its messages return to the queue)."""
        try:
            if not await self._open_database(stop):
                return 0
            delay = self.config.retry_min
            while not stop.is_set():
                channel = await self._open_broker()
                if channel is None:
                    await _sleep_or_stop(stop, _jitter(delay))
                    delay = min(delay * 2, self.config.retry_max)
                    continue
                delay = self.config.retry_min
                outcome = await self._consume(channel, stop)
                if outcome is not None:
                    return outcome
            return 0
        finally:
            await self._close_broker()
            if self._pool is not None:
                await self._pool.close()

    async def _open_database(self, stop: asyncio.Event) -> bool:
        delay = self.config.retry_min
        dsn = self.config.postgres_dsn
        while not stop.is_set():
            try:
                connection = await asyncpg.connect(expand_env(dsn), timeout=10)
                try:
                    applied = await pg_schema.migrate(connection, use_timescaledb=self.config.use_timescaledb)
                    if applied:
                        log.info("ledger: schema migrations applied: %s", ", ".join(applied))
                    await self._upkeep(connection)
                finally:
                    await connection.close()
                self._pool = await asyncpg.create_pool(
                    expand_env(dsn),
                    min_size=self.config.pool_min,
                    max_size=self.config.pool_max,
                    init=pg_schema.prepare_connection,
                )
                log.info("ledger: writing to PostgreSQL at %s", redact_url(dsn))
                return True
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("ledger: PostgreSQL at %s not ready: %s; retrying", redact_url(dsn), exc)
                await _sleep_or_stop(stop, _jitter(delay))
                delay = min(delay * 2, self.config.retry_max)
        return False

    async def _upkeep(self, connection: asyncpg.Connection) -> None:
        upkeep = await pg_schema.maintain(
            connection, retention=self.retention, ahead_days=self.config.partitions_ahead_days
        )
        self._last_upkeep = time.monotonic()
        if upkeep.created or upkeep.dropped or upkeep.default_rows_deleted:
            log.info(
                "ledger: partitions created %s, dropped %s (retention %s); %d old rows removed from the default partition",
                upkeep.created,
                upkeep.dropped,
                self.config.retention,
                upkeep.default_rows_deleted,
            )
        if upkeep.skipped:
            log.warning(
                "ledger: partitions not created (their day is already in the default partition): %s", upkeep.skipped
            )

    async def _open_broker(self) -> AbstractChannel | None:
        url = self.config.amqp_url
        try:
            connection = await aio_pika.connect(expand_env(url), timeout=10)
        except Exception as exc:
            log.warning("ledger: cannot connect to RabbitMQ at %s: %s", redact_url(url), exc)
            return None
        try:
            self._lost = asyncio.Event()
            lost = self._lost
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())  # e.g. closed by the broker for a bad ack
            await channel.set_qos(prefetch_count=self.config.prefetch)
            topology = await declare(channel, self.config.names)
            confirms = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._dead_letters = await confirms.get_exchange(self.config.names.dead_letter_exchange)
            self._inbox = asyncio.Queue()
            inbox = self._inbox
            await topology.queue.consume(inbox.put, no_ack=False)
        except Exception as exc:
            log.warning("ledger: cannot consume %s: %s", self.config.names.queue, exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2)
            return None
        self._connection = connection
        log.info("ledger: consuming %s from RabbitMQ at %s", self.config.names.queue, redact_url(url))
        return channel

    async def _close_broker(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    # -- the batch loop ------------------------------------------------------------------------

    async def _consume(self, channel: AbstractChannel, stop: asyncio.Event) -> int | None:
        """Batches until stop (returns the exit status) or the broker goes (returns None)."""
        while True:
            batch = _Batch()
            try:
                await self._fill(batch, stop)
            except ConnectionLost:
                await self._close_broker()
                return None
            if batch.messages:
                try:
                    stored = await self._store(batch, stop)
                except ConnectionLost:
                    await self._close_broker()
                    return None
                if not stored:
                    return 1  # stopping, database still away: nothing acked, all redelivered later
                await self._ack(batch)
            self.records_in_hand = 0
            if stop.is_set():
                await self._close_broker()
                return 0
            if time.monotonic() - self._last_upkeep > self.config.maintenance_interval:
                await self._upkeep_quietly()

    async def _fill(self, batch: _Batch, stop: asyncio.Event) -> None:
        """Take messages until the batch is full, the window is exhausted or its time is up."""
        while len(batch.records) < self.config.batch_records and batch.unacked < self.config.prefetch:
            if stop.is_set():
                timeout = 0.0  # stopping: only what has already arrived
            elif not batch.unacked:
                timeout = 0.5  # idle: wake now and then to notice stop and upkeep
            else:
                timeout = batch.started + self.config.batch_ms / 1000 - time.monotonic()
            message = await self._next_message(max(timeout, 0.0), stop)
            if message is None:
                if batch.unacked or stop.is_set() or self._lost.is_set():
                    break
                continue
            try:
                records = decode_batch(message.body)
            except RecordError as exc:
                await self._dead_letter(message, f"unreadable batch: {exc}")
                continue
            if not batch.unacked:
                batch.started = time.monotonic()
            batch.messages.append(message)
            batch.records.extend(records)
            batch.unacked += 1
            self.records_in_hand = len(batch.records)
        if self._lost.is_set() and not stop.is_set():
            raise ConnectionLost

    async def _next_message(self, timeout: float, stop: asyncio.Event) -> AbstractIncomingMessage | None:
        if not self._inbox.empty():
            return self._inbox.get_nowait()
        if timeout <= 0 or self._lost.is_set():
            return None
        getter = asyncio.ensure_future(self._inbox.get())
        stopper = asyncio.ensure_future(stop.wait())
        loser = asyncio.ensure_future(self._lost.wait())
        done, _ = await asyncio.wait({getter, stopper, loser}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopper, loser):
            waiter.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            result = await getter
            if result is not None:  # it won the race with the cancel: keep it
                return result
        return None

    async def _store(self, batch: _Batch, stop: asyncio.Event) -> bool:
        """Commit the batch, retrying while the database is away; False when stop came and the
        grace ran out first."""
        delay = self.config.retry_min
        stop_deadline: float | None = None
        while True:
            try:
                await self._write(batch)
                return True
            except _Refused as refused:
                log.warning(
                    "ledger: PostgreSQL refused a batch of %d records (%s); storing its messages one by one",
                    len(batch.records),
                    refused,
                )
                return await self._store_one_by_one(batch)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("ledger: cannot store %d records: %s; retrying in %.1fs", len(batch.records), exc, delay)
            if self._lost.is_set():
                raise ConnectionLost
            if stop.is_set():
                stop_deadline = stop_deadline or time.monotonic() + self.config.shutdown_grace
                if time.monotonic() >= stop_deadline:
                    log.error(
                        "ledger: stopping with %d records not stored (PostgreSQL unreachable); their %d messages return to the queue",
                        len(batch.records),
                        len(batch.messages),
                    )
                    return False
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, self.config.retry_max)

    async def _write(self, batch: _Batch) -> None:
        assert self._pool is not None
        started = time.perf_counter()
        try:
            stored = await asyncio.wait_for(self._write_once(batch.records), self.config.write_timeout)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate and exc.sqlstate[:2] in ("22", "23"):
                raise _Refused(str(exc)) from exc
            raise
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_RECORDS.observe(len(batch.records))
        metrics.WRITTEN.inc(stored.inserted)
        self.committed_records += stored.inserted
        if batch.records:
            metrics.WRITER_LAG.set(lag_seconds(max(parse_time(record.time) for record in batch.records)))
        if self._on_committed is not None:
            self._on_committed(stored.inserted)

    async def _write_once(self, records: list[UsageRecord]) -> pg_schema.Stored:
        assert self._pool is not None
        async with self._pool.acquire() as connection:
            return await pg_schema.store_batch(connection, records)

    async def _store_one_by_one(self, batch: _Batch) -> bool:
        """The poison-batch path: each message on its own; refused ones are dead-lettered."""
        kept: list[AbstractIncomingMessage] = []
        for message in batch.messages:
            single = _Batch(records=decode_batch(message.body))
            while True:
                try:
                    await self._write(single)
                    kept.append(message)
                    break
                except _Refused as refused:
                    await self._dead_letter(message, f"refused by PostgreSQL: {refused}")
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    if self._lost.is_set():
                        raise ConnectionLost from exc
                    await asyncio.sleep(self.config.retry_min)
        batch.messages = kept
        return True

    async def _ack(self, batch: _Batch) -> None:
        if not batch.messages:
            return
        try:
            # One frame for the whole batch: acks every delivery up to this tag that is still
            # outstanding (dead-lettered ones were settled already, so they are not acked twice).
            await batch.messages[-1].ack(multiple=True)
        except Exception as exc:  # the channel went after the commit: redelivery, no-op inserts
            log.warning(
                "ledger: ack of %d messages failed (%s); they will be redelivered and skipped", len(batch.messages), exc
            )

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.error("ledger: dead-lettering message %s: %s", message.delivery_tag, reason)
        metrics.DEAD_LETTERED.inc()
        headers = {**(message.headers or {}), REASON_HEADER: reason[:1000]}
        try:
            assert self._dead_letters is not None
            await self._dead_letters.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type=message.content_type,
                ),
                routing_key=self.config.names.queue,
                timeout=10,
            )
            await message.ack()
        except Exception as exc:
            log.warning("ledger: could not send the reason along (%s); rejecting the message to the DLQ", exc)
            with contextlib.suppress(Exception):
                await message.reject(requeue=False)

    async def _upkeep_quietly(self) -> None:
        assert self._pool is not None
        try:
            async with self._pool.acquire() as connection:
                await self._upkeep(connection)
        except Exception as exc:  # retried at the next interval; the default partition has it
            log.warning("ledger: partition upkeep failed: %s", exc)
            self._last_upkeep = time.monotonic() - self.config.maintenance_interval + 60


class _Refused(Exception):
    """PostgreSQL refused the data itself: retrying the same batch cannot succeed."""


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def lag_seconds(newest: datetime, now: datetime | None = None) -> float:
    """Now minus the newest committed record's time (never negative: clocks differ a little)."""
    return max(0.0, ((now or datetime.now(UTC)) - newest) / timedelta(seconds=1))
