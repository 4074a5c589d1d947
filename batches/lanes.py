"""Scheduling decisions, pure: the two lanes, per-tenant fairness, retries and dead letters.

The lanes are data the RabbitMQ adapter declares; nothing here talks to a broker.

Queue type: classic, durable, ``x-max-priority``. RabbitMQ 3.x quorum queues have no priorities
(3.10 runs here), and 4.x quorum queues know only two (priority > 4 is "high"), which would put
both lanes' 10 and 5 in the same class. Messages are persistent (delivery mode 2).

Fairness is not left to the broker: a queue is FIFO within a priority, so one 100,000-item batch
published at once would sit ahead of everyone else's. Items stay ``queued`` in the store, and a
feeder publishes a bounded window of them in the order ``FairQueue`` picks (deficit round robin
over tenants, round robin over a tenant's batches). The window also keeps a message's time in the
queue well under the lane's TTL.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from batches.model import Outcome

# --- lanes ------------------------------------------------------------------------------------

MAX_PRIORITY = 10
DEAD_LETTER_EXCHANGE = "ccr.batch.dlx"
DEAD_LETTER_QUEUE = "ccr.batch.dlq"
REASON_HEADER = "x-ccr-dead-letter-reason"


@dataclass(frozen=True, slots=True)
class Lane:
    name: str
    priority: int  # message priority on the lane's queue
    prefetch: int  # unacknowledged messages per worker channel
    ttl_seconds: int  # how long a message may wait in the queue before it is dead-lettered
    requeue_on_ttl: bool  # a message that aged out goes back to the feeder (while the batch lives)

    @property
    def queue(self) -> str:
        return f"ccr.batch.{self.name}"

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments for ``queue_declare`` (declared identically everywhere: a mismatch is an error)."""
        return {
            "x-queue-type": "classic",
            "x-max-priority": MAX_PRIORITY,
            "x-message-ttl": self.ttl_seconds * 1000,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        }

    def message_properties(self, message: ItemMessage) -> dict[str, Any]:
        """AMQP properties for an item's message on this lane."""
        return {
            "delivery_mode": 2,
            "priority": self.priority,
            "content_type": "application/json",
            "message_id": message.key,
            "headers": {"x-ccr-tenant": message.tenant, "x-ccr-batch": message.batch_id},
        }


# The seed's numbers (issue 20). Interactive: someone is waiting; a request older than 30 s is no
# longer worth running. Batch: spare capacity; an aged-out message is re-fed, not failed.
INTERACTIVE = Lane("interactive", priority=10, prefetch=5, ttl_seconds=30, requeue_on_ttl=False)
BATCH = Lane("batch", priority=5, prefetch=20, ttl_seconds=300, requeue_on_ttl=True)
LANES = {lane.name: lane for lane in (INTERACTIVE, BATCH)}


class MessageError(ValueError):
    """A message on a lane is unreadable: the peer misbehaved; dead-letter it as rejected."""


@dataclass(frozen=True, slots=True)
class ItemMessage:
    """What a lane's message carries: a reference to the item, not its body (the store has that,
    and the worker reads the store to record the result anyway), so the broker holds bytes per
    item, not megabytes."""

    tenant: str
    batch_id: str
    index: int
    lane: str = BATCH.name
    ttl_requeues: int = 0  # times this item aged out of its lane and was published again

    @property
    def key(self) -> str:
        """Stable per item: the idempotency key of its result write and the AMQP message id."""
        return f"{self.batch_id}:{self.index}"

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "tenant": self.tenant,
                "batch_id": self.batch_id,
                "index": self.index,
                "lane": self.lane,
                "ttl_requeues": self.ttl_requeues,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> ItemMessage:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise MessageError("not a JSON object")
        tenant, batch_id, index, lane = (value.get(k) for k in ("tenant", "batch_id", "index", "lane"))
        requeues = value.get("ttl_requeues", 0)
        # The tenant may be "": the anonymous tenant's batches (a gateway that does not require keys).
        if not isinstance(tenant, str) or not isinstance(batch_id, str) or not batch_id:
            raise MessageError("tenant must be a string and batch_id a non-empty string")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise MessageError("index must be a non-negative integer")
        if lane not in LANES:
            raise MessageError(f"unknown lane {lane!r}")
        if isinstance(requeues, bool) or not isinstance(requeues, int) or requeues < 0:
            raise MessageError("ttl_requeues must be a non-negative integer")
        return cls(tenant, batch_id, index, lane, requeues)


# --- per-tenant fairness ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pick:
    tenant: str
    batch_id: str


class FairQueue:
    """Which batch's next queued item to publish: deficit round robin over tenants (each visit
    earns a tenant ``quantum * weight`` items), round robin over a tenant's batches.

    However many items a tenant has queued, every other tenant with work gets its share in every
    round: over any run of picks, two backlogged tenants of equal weight differ by at most one
    quantum. Counts only (not item indexes): the feeder takes the batch's lowest queued index.
    Deterministic and not thread-safe; the feeder owns one per lane and, after a restart, rebuilds
    it from the store's queued counts per batch (it is a cache of them, never the truth).
    """

    def __init__(self, *, quantum: int = 1, weights: Mapping[str, int] | None = None) -> None:
        if quantum < 1:
            raise ValueError("quantum is at least 1")
        if any(weight < 1 for weight in (weights or {}).values()):
            raise ValueError("weights are at least 1 (a tenant with weight 0 would never be served)")
        self._quantum = quantum
        self._weights = dict(weights or {})
        # tenant -> its batches with work, in their rotation order, and items queued per batch
        self._batches: OrderedDict[str, OrderedDict[str, int]] = OrderedDict()
        self._active: deque[str] = deque()  # tenants with queued items, in visiting order
        self._deficit: dict[str, int] = {}

    def add(self, tenant: str, batch_id: str, count: int = 1) -> None:
        """``count`` more items of ``batch_id`` are queued (new batch, or items put back)."""
        if count < 0:
            raise ValueError("count is not negative")
        if count == 0:
            return
        batches = self._batches.setdefault(tenant, OrderedDict())
        batches[batch_id] = batches.get(batch_id, 0) + count
        if tenant not in self._deficit:
            self._active.append(tenant)
            self._deficit[tenant] = 0

    def remove_batch(self, tenant: str, batch_id: str) -> int:
        """Forget a batch (canceled, expired); returns how many queued items it still had."""
        batches = self._batches.get(tenant)
        if not batches or batch_id not in batches:
            return 0
        removed = batches.pop(batch_id)
        if not batches:
            self._drop_tenant(tenant)
        return removed

    def pending(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return sum(self._batches.get(tenant, {}).values())
        return sum(sum(batches.values()) for batches in self._batches.values())

    def take(self, n: int) -> list[Pick]:
        """The next ``n`` (or fewer, if less is queued) items to publish, in order."""
        picks: list[Pick] = []
        while len(picks) < n and self._active:
            tenant = self._active[0]
            if self._deficit[tenant] <= 0:
                # A new visit: the tenant earns its quantum. Leftover credit is kept only while it
                # stays backlogged (standard DRR), so an idle tenant cannot bank a burst.
                self._deficit[tenant] += self._quantum * self._weights.get(tenant, 1)
            while len(picks) < n and self._deficit.get(tenant, 0) > 0:
                self._deficit[tenant] -= 1
                picks.append(self._pick_from(tenant))  # may drop the tenant: nothing left queued
            if self._deficit.get(tenant, 1) <= 0:
                self._active.rotate(-1)  # visit over: to the back of the line
        return picks

    def _pick_from(self, tenant: str) -> Pick:
        batches = self._batches[tenant]
        batch_id, count = next(iter(batches.items()))
        if count == 1:
            del batches[batch_id]
        else:
            batches[batch_id] = count - 1
            batches.move_to_end(batch_id)  # round robin over the tenant's batches
        if not batches:
            self._drop_tenant(tenant)
        return Pick(tenant, batch_id)

    def _drop_tenant(self, tenant: str) -> None:
        del self._batches[tenant]
        del self._deficit[tenant]
        self._active.remove(tenant)


# --- retries ----------------------------------------------------------------------------------


class Action(enum.StrEnum):
    RETRY = "retry"  # put the item back, publish again after ``delay``
    FINISH = "finish"  # record ``outcome`` as the item's result


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    outcome: Outcome | None = None
    throttled: bool = False  # a 429: backs off without using up the retry budget
    reason: str = ""


# 408 (timeout), 409 (conflict, e.g. a concurrent cache fill), 429 (rate limited) and 5xx are worth
# another try; any other 4xx will fail the same way again.
RETRYABLE_4XX = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5  # sends that may fail transiently (429s not counted)
    base_delay: float = 1.0
    max_delay: float = 300.0
    max_retry_after: float = 3600.0  # a server asking for longer than this is capped
    multiplier: float = 2.0

    def exhausted(self, *, attempts: int, throttles: int) -> bool:
        """Checked before sending a redelivered message: an item that already used up its
        attempts without an answer (its workers died on it) is dead-lettered, not sent again.
        Classic queues have no ``x-delivery-limit``, so this is the poison-message guard."""
        return attempts - throttles >= self.max_attempts

    def backoff(self, failures: int, jitter: float) -> float:
        """Full jitter: a uniform draw from [0, min(max, base * multiplier ** (failures - 1))];
        ``jitter`` in [0, 1) is the caller's random number, so tests can fix it."""
        # The exponent is capped so a day of 429s cannot overflow a float (2.0 ** 1024 does).
        ceiling = min(self.max_delay, self.base_delay * self.multiplier ** min(max(0, failures - 1), 64))
        return ceiling * min(max(jitter, 0.0), 1.0)

    def after_response(
        self,
        status: int,
        body: Any,
        *,
        attempts: int,
        throttles: int,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        jitter: float,
        now: float,
    ) -> Decision:
        """What to do with the gateway's answer to an item. ``attempts``: the item's sends, this one
        included (``model.send`` counted it); ``throttles``: its earlier 429s."""
        if 200 <= status < 300 or (status < 500 and status not in RETRYABLE_4XX):
            return Decision(Action.FINISH, outcome=Outcome.from_response(status, body, request_id))
        retry_after = parse_retry_after(headers or {}, now=now)
        if status == 429:
            # Rate limited (the tenant's own limits, or the provider's): back off, never fail; the
            # batch's 24 h window is the bound (expiry ends the item if it never gets through).
            delay = retry_after if retry_after is not None else self.backoff(throttles + 1, jitter)
            return Decision(
                Action.RETRY, delay=min(delay, self.max_retry_after), throttled=True, reason="rate limited (429)"
            )
        failures = attempts - throttles
        if failures >= self.max_attempts:
            # Keep the last answer: the client sees the provider's own error body.
            return Decision(
                Action.FINISH,
                outcome=Outcome.from_response(status, body, request_id),
                reason=f"gave up after {failures} attempts",
            )
        delay = retry_after if retry_after is not None else self.backoff(failures, jitter)
        return Decision(Action.RETRY, delay=min(delay, self.max_retry_after), reason=f"HTTP {status}")

    def after_connection_error(self, error: str, *, attempts: int, throttles: int, jitter: float) -> Decision:
        """No answer at all (refused, reset, timed out): transient until the budget is spent."""
        failures = attempts - throttles
        if failures >= self.max_attempts:
            return Decision(
                Action.FINISH,
                outcome=Outcome.errored(f"gave up after {failures} attempts: {error}"),
                reason="too many attempts",
            )
        return Decision(Action.RETRY, delay=self.backoff(failures, jitter), reason=error)


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (what the Anthropic and OpenAI APIs also send) or
    ``retry-after`` (seconds, or an HTTP date measured against ``now``); None if absent or bad."""
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = lowered.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(text).timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return value if math.isfinite(value) and value >= 0 else None


# --- dead letters -----------------------------------------------------------------------------


class DeadReason(enum.StrEnum):
    EXPIRED = "expired"  # the message outlived its lane's TTL in the queue
    TOO_MANY_ATTEMPTS = "too_many_attempts"  # redelivered past the limit (workers keep dying on it)
    REJECTED = "rejected"  # a worker rejected it as unreadable


# RabbitMQ's x-death reasons -> ours ("maxlen" is an overflowing queue: the message never ran).
_BROKER_REASONS = {
    "expired": DeadReason.EXPIRED,
    "delivery_limit": DeadReason.TOO_MANY_ATTEMPTS,
    "rejected": DeadReason.REJECTED,
    "maxlen": DeadReason.EXPIRED,
}


def dead_reason(headers: Mapping[str, Any]) -> DeadReason:
    """Why a message is on the dead-letter queue: our own header if a worker set one, else the
    newest ``x-death`` entry RabbitMQ added (a list of tables, newest first)."""
    ours = headers.get(REASON_HEADER)
    if isinstance(ours, bytes):
        ours = ours.decode(errors="replace")
    if isinstance(ours, str) and ours in tuple(DeadReason):
        return DeadReason(ours)
    deaths = headers.get("x-death")
    if isinstance(deaths, Sequence) and deaths and isinstance(deaths[0], Mapping):
        reason = deaths[0].get("reason")
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        if reason in _BROKER_REASONS:
            return _BROKER_REASONS[reason]
    return DeadReason.REJECTED


@dataclass(frozen=True, slots=True)
class DeadLetterDecision:
    action: Action  # RETRY: back to the feeder as queued; FINISH: record ``outcome``
    outcome: Outcome | None
    reason: str


def after_dead_letter(
    reason: DeadReason, *, lane: Lane, ttl_requeues: int, max_ttl_requeues: int = 3
) -> DeadLetterDecision:
    """How a dead-lettered item ends. Aged out on the batch lane: the queue was backed up, not the
    item wrong, so it is re-fed (a bounded number of times; the batch's own expiry still applies).
    Aged out on the interactive lane: nobody is waiting any more -> expired. Redelivered too often
    or unreadable -> errored, saying so.

    RETRY means publish again with ``ttl_requeues + 1``; the item stays queued (a message the broker
    requeued after a worker died keeps its first expiry, so the item may be ``sent``: put it back
    with ``model.retry_later``). FINISH means ``record`` / ``expire_item`` with the outcome."""
    if reason is DeadReason.EXPIRED:
        if lane.requeue_on_ttl and ttl_requeues < max_ttl_requeues:
            return DeadLetterDecision(
                Action.RETRY, None, f"waited over {lane.ttl_seconds} s in the {lane.name} lane; queued again"
            )
        return DeadLetterDecision(
            Action.FINISH,
            Outcome.expired(f"waited over {lane.ttl_seconds} s in the {lane.name} lane"),
            "expired in the queue",
        )
    if reason is DeadReason.TOO_MANY_ATTEMPTS:
        return DeadLetterDecision(
            Action.FINISH, Outcome.errored("delivered too many times without a result"), "too many attempts"
        )
    return DeadLetterDecision(Action.FINISH, Outcome.errored("the queued item could not be read"), "rejected")
