"""The batch worker: takes item messages off the lanes and runs each item through the gateway.

An adapter around the core, like the stores and the lanes: it consumes through ``LaneQueues``
(RabbitMQ or the in-process stand-in), reads and writes through the store, and sends over HTTP
through ``ItemSender``. What to do with an answer is ``lanes.RetryPolicy``'s decision and every
state change is the store's (``model``'s) transition; the worker only carries them out.

For each message (``BatchWorker.__call__``, a ``feeder.MessageHandler``):

1. A redelivered message whose item already used up its attempts (its workers keep dying on it)
   is dead-lettered as ``too_many_attempts``, not sent again (``RetryPolicy.exhausted``); the
   dead-letter sweeper ends it errored.
2. ``store.send_item``: SKIP (final already, canceled, expired, or a redelivery of a recorded
   item) is acked without a send.
3. POST the item's body, with ``stream: false``, to the gateway's own listener (so routing,
   translation, fallback, limits, budgets, cache and the ledger apply), at ``/v1/messages`` for an
   Anthropic batch and the batch's endpoint for an OpenAI one.
4. ``RetryPolicy``: FINISH -> ``store.record_item`` (idempotent by batch and index: a second
   worker's answer for the same item is DUPLICATE or REFUSED, and the first one stands). RETRY ->
   ``store.retry_item_later`` (which clears the item's published mark) and, if the item went back
   to queued, ``republish(message, delay)``: the worker that decided the retry publishes it again
   (in ``ccr-gateway batch-worker``, its process's feeder, through ``Feeder.put_back``).
5. Return None (ack) only after the store write succeeded. A store error raises, and the lanes
   put the message back (nack, requeue): nothing is lost, and the result write absorbs the repeat.

Credentials: the worker presents its own key (``WorkerConfig.api_key``, as ``x-api-key`` for
Anthropic batches and ``Authorization: Bearer`` for OpenAI ones) and names the batch's owner, the
key that created it and its tenant (``x-batch-key``, ``x-batch-tenant``: ``Batch.owner_key``,
``Batch.tenant``, ``-`` for none). A gateway whose policy lists the worker's key id
(``batches.workers``) sends the item as the owner's request, under the owner's limits and budget,
its usage recorded with the batch (extproc.auth.batch_caller); any other gateway ignores the names
and the item is the worker key's own request. The worker holds no client's secret.

Batch traffic is marked with ``x-batch-item: <batch_id>:<index>`` (``BATCH_ITEM_HEADER``). Not an
``x-ccr-`` name: those are the gateway's internal headers (ccr.v1.contract: "always overwritten,
never trusted from a client, stripped before a request leaves for a provider"), and Envoy already
removes several of them at the edge; a client-sent one may vanish before anyone reads it, and the
gateway must not learn to trust a name every client can send. The provider routes remove it before
a request leaves (control_plane.resources.gateway): a provider never sees it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from prometheus_client import Counter, Histogram

from batches.lanes import Action, DeadReason, ItemMessage, RetryPolicy
from batches.model import Api, Batch, Dispatch, Item, Outcome, Recorded
from batches.store import NotInStore
from ccr.v1.contract import ANONYMOUS_TENANT_VALUE as ANONYMOUS
from ccr.v1.contract import BATCH_ITEM_HEADER, BATCH_KEY_HEADER, BATCH_TENANT_HEADER

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"

ITEMS = Counter(
    "ccr_batch_worker_items_total",
    "Item messages handled by batch workers, by what became of them",
    ["result"],  # succeeded | errored | retried | skipped | dead_lettered | gone
)
SEND_SECONDS = Histogram(
    "ccr_batch_worker_send_seconds",
    "Time to send one batch item through the gateway and read its answer",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


class SendError(Exception):
    """No answer from the gateway (refused, reset, timed out): transient, retried with backoff."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


class ItemSender(Protocol):
    """POSTs one request to the gateway; raises ``SendError`` when there is no answer."""

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...


class WorkerStore(Protocol):
    """What the worker needs from ``store.BatchStore``."""

    async def get_batch(self, batch_id: str, *, tenant: str | None = None) -> Batch | None: ...

    async def get_item(self, batch_id: str, index: int) -> Item | None: ...

    async def send_item(self, batch_id: str, index: int, *, now: float) -> tuple[Item, Dispatch]: ...

    async def record_item(
        self, batch_id: str, index: int, outcome: Outcome, *, now: float
    ) -> tuple[Item, Recorded]: ...

    async def retry_item_later(self, batch_id: str, index: int, *, throttled: bool, now: float) -> Item: ...


# (message, delay in seconds): publish the message again, no earlier than the delay.
Republish = Callable[[ItemMessage, float], None]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    api_key: str | None = None  # sent as each API's key header (see the module docstring)
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class BatchWorker:
    """The lanes' message handler. Safe to run many at once on one event loop (they share nothing
    but the store, the sender and ``republish``)."""

    def __init__(
        self,
        store: WorkerStore,
        sender: ItemSender,
        republish: Republish,
        config: WorkerConfig | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.sender = sender
        self.republish = republish
        self.config = config or WorkerConfig()
        self._now = wall_clock  # item times are unix seconds
        self._jitter = jitter

    async def __call__(self, message: ItemMessage, redelivered: bool) -> DeadReason | None:
        try:
            return await self._handle(message, redelivered)
        except NotInStore:
            ITEMS.labels("gone").inc()
            log.info("batches: item %s is not in the store (batch deleted); dropped", message.key)
            return None

    async def _handle(self, message: ItemMessage, redelivered: bool) -> DeadReason | None:
        batch_id, index = message.batch_id, message.index
        batch = await self.store.get_batch(batch_id)
        if batch is None:
            raise NotInStore(batch_id)
        policy = self.config.policy
        if redelivered:
            # Its workers died on it (or it is one more copy): only ask when the broker says so.
            before = await self.store.get_item(batch_id, index)
            unfinished = before is not None and not before.state.final
            if unfinished and policy.exhausted(attempts=before.attempts, throttles=before.throttles):
                ITEMS.labels("dead_lettered").inc()
                return DeadReason.TOO_MANY_ATTEMPTS
        item, dispatch = await self.store.send_item(batch_id, index, now=self._now())
        if dispatch is Dispatch.SKIP:
            ITEMS.labels("skipped").inc()
            return None
        path, body, headers = self.request(batch, item, message)
        started = time.monotonic()
        try:
            answer = await self.sender.post(path, body, headers)
        except SendError as exc:
            decision = policy.after_connection_error(
                str(exc), attempts=item.attempts, throttles=item.throttles, jitter=self._jitter()
            )
        else:
            SEND_SECONDS.observe(time.monotonic() - started)
            decision = policy.after_response(
                answer.status,
                _parsed(answer.body),
                attempts=item.attempts,
                throttles=item.throttles,
                headers=answer.headers,
                request_id=answer.headers.get("request-id") or answer.headers.get("x-request-id"),
                jitter=self._jitter(),
                now=self._now(),
            )
        if decision.action is Action.FINISH:
            assert decision.outcome is not None
            _, recorded = await self.store.record_item(batch_id, index, decision.outcome, now=self._now())
            if recorded is Recorded.REFUSED:
                log.info("batches: item %s already ended otherwise; this answer is dropped", message.key)
            ITEMS.labels(decision.outcome.state.value).inc()
            return None
        after = await self.store.retry_item_later(batch_id, index, throttled=decision.throttled, now=self._now())
        ITEMS.labels("retried").inc()
        if not after.state.final:
            # Back to queued and unmarked: this worker publishes it again, after the backoff.
            self.republish(message, decision.delay)
        log.debug("batches: item %s retried in %.2f s: %s", message.key, decision.delay, decision.reason)
        return None

    def request(self, batch: Batch, item: Item, message: ItemMessage) -> tuple[str, bytes, dict[str, str]]:
        """The path, body and headers an item is sent with."""
        body = dict(item.body)
        if path_streams(batch):
            body["stream"] = False  # a batch item's answer is stored whole (validation refused true)
        headers = {
            "content-type": "application/json",
            BATCH_ITEM_HEADER: message.key,
            BATCH_KEY_HEADER: batch.owner_key or ANONYMOUS,
            BATCH_TENANT_HEADER: batch.tenant or ANONYMOUS,
        }
        key = self.config.api_key
        if batch.api is Api.ANTHROPIC:
            path = "/v1/messages"
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        else:
            path = batch.endpoint
            if key:
                headers["authorization"] = f"Bearer {key}"
        return path, orjson.dumps(body), headers


# Endpoints without a stream parameter: a "stream" key there would be an unknown argument.
_NO_STREAM_ENDPOINTS = frozenset({"/v1/embeddings"})


def path_streams(batch: Batch) -> bool:
    """Whether the batch's endpoint knows ``stream`` (every one but embeddings)."""
    return batch.api is Api.ANTHROPIC or batch.endpoint not in _NO_STREAM_ENDPOINTS


def _parsed(raw: bytes) -> Any:
    """The answer's JSON, or its text when it is not JSON (an HTML error page from a proxy)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


class GatewaySender:
    """``ItemSender`` over aiohttp: one keep-alive connection pool to the gateway's listener."""

    def __init__(
        self,
        base_url: str,
        *,
        connections: int = 32,
        timeout: float = 600.0,  # a long, non-streamed generation can take minutes
        connect_timeout: float = 5.0,
        keepalive: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            async with self._client().post(self.base_url + path, data=body, headers=dict(headers)) as response:
                content = await response.read()
                return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, content)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
