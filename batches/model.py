"""One API-neutral batch that both APIs map onto: a Batch header and its Items.

Everything that changes an item's or a batch's state lives in this module (the h11 rule): the
store, the worker and the HTTP handlers call these functions and persist what they return; they
never set a state themselves. The functions are pure: (old value, input, ``now``) -> new value and
a small enum saying what happened, so an adapter can tell "stored" from "duplicate, just ack".

Item states:

    queued --send--> sent --record--> succeeded | errored
      ^               |
      +--retry_later--+          (a transient failure puts it back; it is "not yet sent" again)
    queued --cancel--> canceled  (cancellation stops items not yet sent; sent ones finish)
    queued|sent --expire--> expired   (at the batch's expires_at, whatever is unfinished)

A final state never changes: recording the same outcome again is a no-op (a redelivered message
after a crash) and a different outcome is refused (the first write wins, so every item ends
exactly once). The batch has ended when no item is queued or sent; its counts are always derived
from item states, never kept on the side.

Items are per-item functions rather than methods on a batch holding a tuple of items: the store
keeps one row per item and a 100,000-item batch must not be copied per transition.
``BatchState`` is the in-memory aggregate (embedded mode, tests) built on the same functions.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

# Both APIs give a batch 24 hours, from creation (Anthropic expires_at; OpenAI completion_window "24h").
BATCH_WINDOW_SECONDS = 24 * 3600
# Anthropic keeps results 29 days after creation; OpenAI batch files default to 30 days.
RESULTS_RETENTION_SECONDS = 29 * 24 * 3600
DEFAULT_LANE = "batch"  # lanes.BATCH.name: batches run on spare capacity unless told otherwise


class Api(enum.StrEnum):
    """The client API a batch was submitted through; results are rendered back in it."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"


class ItemState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self not in UNFINISHED


UNFINISHED = frozenset({ItemState.QUEUED, ItemState.SENT})
FINAL = frozenset(ItemState) - UNFINISHED


class BatchStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    ENDED = "ended"


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    CANCELED = "canceled"  # cancellation was requested (whatever the items ended as)
    EXPIRED = "expired"  # the 24 h window closed with items unfinished
    FAILED = "failed"  # the input was rejected before any item ran (OpenAI validates the file late)


class BatchModelError(ValueError):
    """Our misuse of the model (an impossible transition asked for): a bug in the caller."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an item ended. ``status_code``/``body``/``request_id`` are the gateway's own HTTP answer
    (already in the batch's client API, since the worker sends items through the gateway);
    ``reason`` says why when there was no answer to keep (connection failures, expiry, dead letter).
    """

    state: ItemState
    status_code: int | None = None
    body: Any = None
    request_id: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.state in UNFINISHED:
            raise BatchModelError(f"an outcome is a final state, not {self.state}")
        if self.state is ItemState.SUCCEEDED and (self.status_code is None or not 200 <= self.status_code < 300):
            raise BatchModelError("a succeeded outcome carries a 2xx answer")
        if self.state is ItemState.ERRORED:
            answered = self.status_code is not None
            if answered and 200 <= self.status_code < 300:
                raise BatchModelError("an errored outcome cannot carry a 2xx answer")
            if not answered and not self.reason:
                raise BatchModelError("an errored outcome without an answer needs a reason")
        if self.state in (ItemState.EXPIRED, ItemState.CANCELED) and self.status_code is not None:
            raise BatchModelError(f"a {self.state} item was never answered")

    @classmethod
    def from_response(cls, status_code: int, body: Any, request_id: str | None = None) -> Outcome:
        """The gateway answered: 2xx succeeded, anything else errored (retries are decided before)."""
        state = ItemState.SUCCEEDED if 200 <= status_code < 300 else ItemState.ERRORED
        return cls(state, status_code=status_code, body=body, request_id=request_id)

    @classmethod
    def errored(cls, reason: str) -> Outcome:
        return cls(ItemState.ERRORED, reason=reason)

    @classmethod
    def expired(cls, reason: str | None = None) -> Outcome:
        return cls(ItemState.EXPIRED, reason=reason)

    @classmethod
    def canceled(cls) -> Outcome:
        return cls(ItemState.CANCELED)


@dataclass(frozen=True, slots=True)
class Item:
    index: int  # position in the request: results are rendered in this order
    custom_id: str
    body: Mapping[str, Any]  # the request body sent to the batch's endpoint
    state: ItemState = ItemState.QUEUED
    attempts: int = 0  # times handed to the provider (send), redeliveries included
    throttles: int = 0  # of those, answered 429 and put back: they do not use up the retry budget
    outcome: Outcome | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        if (self.outcome is None) != (self.state in UNFINISHED):
            raise BatchModelError("an item has an outcome exactly when its state is final")
        if self.outcome is not None and self.outcome.state is not self.state:
            raise BatchModelError("an item's outcome and state disagree")
        if not 0 <= self.throttles <= self.attempts:
            raise BatchModelError("throttles count among attempts")


@dataclass(frozen=True, slots=True)
class InputError:
    """One problem with the submitted requests (OpenAI reports these on a failed batch)."""

    code: str
    message: str
    line: int | None = None  # 1-based line of the input file
    param: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """The batch header; its items are stored (and passed) separately."""

    id: str
    tenant: str
    api: Api
    endpoint: str  # the path every item is sent to, e.g. /v1/messages, /v1/chat/completions
    created_at: float  # unix seconds
    expires_at: float
    total: int
    cancel_requested_at: float | None = None
    ended_at: float | None = None
    archived_at: float | None = None  # results deleted (retention over)
    metadata: Mapping[str, str] = field(default_factory=dict)
    input_file_id: str | None = None
    failure: tuple[InputError, ...] = ()
    # The lane its items run in (a ``lanes.LANES`` key; a string here: the model knows no lanes).
    # Not part of either API's objects: set by the gateway, read by the feeder.
    lane: str = DEFAULT_LANE
    # The id of the key that created the batch ("" for a caller without one), as the gateway named
    # it: the workers send each item for that key, under its limits and budget. Not in the APIs' objects.
    owner_key: str = ""

    @property
    def status(self) -> BatchStatus:
        if self.ended_at is not None:
            return BatchStatus.ENDED
        return BatchStatus.IN_PROGRESS if self.cancel_requested_at is None else BatchStatus.CANCELING

    def end_reason(self, counts: Counts) -> EndReason | None:
        if self.ended_at is None:
            return None
        if self.failure:
            return EndReason.FAILED
        if self.cancel_requested_at is not None:
            return EndReason.CANCELED
        return EndReason.EXPIRED if counts.expired else EndReason.COMPLETED


@dataclass(frozen=True, slots=True)
class Counts:
    queued: int = 0
    sent: int = 0
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    canceled: int = 0

    @classmethod
    def of(cls, items: Iterable[Item]) -> Counts:
        return cls.from_states(Counter(item.state for item in items))

    @classmethod
    def from_states(cls, by_state: Mapping[ItemState, int] | Mapping[str, int]) -> Counts:
        """From a state -> count mapping (what ``SELECT state, count(*) ... GROUP BY state`` gives)."""
        return cls(**{ItemState(state).value: count for state, count in by_state.items()})

    @property
    def unfinished(self) -> int:
        return self.queued + self.sent

    @property
    def total(self) -> int:
        return self.unfinished + self.succeeded + self.errored + self.expired + self.canceled


# --- creating ---------------------------------------------------------------------------------


def new_batch(
    batch_id: str,
    *,
    tenant: str,
    api: Api,
    endpoint: str,
    requests: Sequence[tuple[str, Mapping[str, Any]]],
    now: float,
    metadata: Mapping[str, str] | None = None,
    input_file_id: str | None = None,
    lane: str = DEFAULT_LANE,
    owner_key: str = "",
) -> tuple[Batch, list[Item]]:
    """A batch of already validated ``(custom_id, body)`` requests, every item queued."""
    if not requests:
        raise BatchModelError("a batch has at least one request")
    ids = [custom_id for custom_id, _ in requests]
    if len(set(ids)) != len(ids):
        raise BatchModelError("custom_id values are unique within a batch")
    batch = Batch(
        id=batch_id,
        tenant=tenant,
        api=api,
        endpoint=endpoint,
        created_at=now,
        expires_at=now + BATCH_WINDOW_SECONDS,
        total=len(requests),
        metadata=dict(metadata or {}),
        input_file_id=input_file_id,
        lane=lane,
        owner_key=owner_key,
    )
    return batch, [Item(index, custom_id, body) for index, (custom_id, body) in enumerate(requests)]


def failed_batch(
    batch_id: str,
    *,
    tenant: str,
    api: Api,
    endpoint: str,
    errors: Sequence[InputError],
    now: float,
    metadata: Mapping[str, str] | None = None,
    input_file_id: str | None = None,
    lane: str = DEFAULT_LANE,
) -> Batch:
    """A batch whose input was rejected: no items, ended at once (OpenAI status ``failed``)."""
    if not errors:
        raise BatchModelError("a failed batch says why")
    return Batch(
        id=batch_id,
        tenant=tenant,
        api=api,
        endpoint=endpoint,
        created_at=now,
        expires_at=now + BATCH_WINDOW_SECONDS,
        total=0,
        ended_at=now,
        metadata=dict(metadata or {}),
        input_file_id=input_file_id,
        failure=tuple(errors),
        lane=lane,
    )


# --- item transitions -------------------------------------------------------------------------


class Dispatch(enum.StrEnum):
    SEND = "send"  # hand it to the provider now
    SKIP = "skip"  # already final (canceled, expired, done): ack the message, send nothing


class Recorded(enum.StrEnum):
    STORED = "stored"  # the item reached its final state now
    DUPLICATE = "duplicate"  # the same outcome was already stored: nothing changed
    REFUSED = "refused"  # a different outcome was already stored: the first one stands


def send(item: Item, *, now: float, expires_at: float, cancel_requested: bool = False) -> tuple[Item, Dispatch]:
    """A worker is about to send the item. A redelivered ``sent`` item (the last worker died) is
    sent again: that is a new attempt, and the idempotent ``record`` keeps the first answer."""
    if item.state.final:
        return item, Dispatch.SKIP
    if now >= expires_at:
        return expire_item(item, now=now), Dispatch.SKIP
    if cancel_requested and item.state is ItemState.QUEUED:
        # Its message was already on the queue when cancellation came: still not sent, so canceled.
        return _finish(item, Outcome.canceled(), now), Dispatch.SKIP
    return replace(item, state=ItemState.SENT, attempts=item.attempts + 1), Dispatch.SEND


def record(item: Item, outcome: Outcome, *, now: float) -> tuple[Item, Recorded]:
    """Store a provider answer (or a give-up) as the item's final outcome."""
    if outcome.state not in (ItemState.SUCCEEDED, ItemState.ERRORED):
        raise BatchModelError("record stores answers; use cancel_item / expire_item for the others")
    if item.state.final:
        return item, (Recorded.DUPLICATE if item.outcome == outcome else Recorded.REFUSED)
    # A result for a still-queued item is accepted too: the answer is the truth even if the "sent"
    # write was lost (a worker can crash between sending and recording that it sent).
    return _finish(item, outcome, now), Recorded.STORED


def retry_later(item: Item, *, throttled: bool, cancel_requested: bool, now: float) -> Item:
    """A transient failure: the item goes back to the queue, or, if the batch is being canceled,
    ends canceled (it is no longer in flight, so cancellation applies to it)."""
    if item.state is not ItemState.SENT:
        return item  # a stale retry for an item that already ended or was put back
    if cancel_requested:
        return _finish(item, Outcome.canceled(), now)
    throttles = item.throttles + 1 if throttled else item.throttles
    return replace(item, state=ItemState.QUEUED, throttles=throttles)


def cancel_item(item: Item, *, now: float) -> Item:
    """Cancellation: items not yet sent end canceled; sent ones are left to finish."""
    if item.state is ItemState.QUEUED:
        return _finish(item, Outcome.canceled(), now)
    return item


def expire_item(item: Item, *, now: float, reason: str | None = None) -> Item:
    """The window closed (or the message died of old age in its lane): unfinished items expire."""
    if item.state in UNFINISHED:
        return _finish(item, Outcome.expired(reason), now)
    return item


def _finish(item: Item, outcome: Outcome, now: float) -> Item:
    return replace(item, state=outcome.state, outcome=outcome, finished_at=now)


# --- batch transitions ------------------------------------------------------------------------


class CancelResult(enum.StrEnum):
    STARTED = "started"
    ALREADY = "already"  # cancellation was requested before: nothing changes
    ENDED = "ended"  # the batch has ended: there is nothing to cancel


def request_cancel(batch: Batch, *, now: float) -> tuple[Batch, CancelResult]:
    """Start cancellation; the caller then applies ``cancel_item`` to every item and ``settle``s."""
    if batch.ended_at is not None:
        return batch, CancelResult.ENDED
    if batch.cancel_requested_at is not None:
        return batch, CancelResult.ALREADY
    return replace(batch, cancel_requested_at=now), CancelResult.STARTED


def is_due_to_expire(batch: Batch, *, now: float) -> bool:
    """Whether the sweeper must ``expire_item`` this batch's unfinished items now."""
    return batch.ended_at is None and now >= batch.expires_at


def settle(batch: Batch, counts: Counts, *, now: float) -> Batch:
    """After items changed: the batch ends the moment none is queued or sent (idempotent)."""
    if counts.total != batch.total:
        raise BatchModelError(f"counts cover {counts.total} items, the batch has {batch.total}")
    if batch.ended_at is None and counts.unfinished == 0:
        return replace(batch, ended_at=now)
    return batch


def archive(batch: Batch, *, now: float) -> Batch:
    """Retention over: results are deleted and the batch says since when (ended batches only)."""
    if batch.ended_at is None or batch.archived_at is not None:
        return batch
    if now < batch.created_at + RESULTS_RETENTION_SECONDS:
        return batch
    return replace(batch, archived_at=now)


# --- in-memory aggregate ------------------------------------------------------------------------


class BatchState:
    """A batch and its items in memory: the embedded mode's store, and what the property tests
    drive. Every change goes through the pure functions above; counts are kept as it goes (O(1)
    per item transition). Not thread-safe."""

    def __init__(self, batch: Batch, items: Sequence[Item]) -> None:
        if len(items) != batch.total or [item.index for item in items] != list(range(batch.total)):
            raise BatchModelError("items are the batch's, indexed 0..total-1 in order")
        self.batch = batch
        self.items = list(items)
        self._by_state: Counter[ItemState] = Counter(item.state for item in items)

    @property
    def counts(self) -> Counts:
        return Counts.from_states(self._by_state)

    def _put(self, item: Item, now: float) -> None:
        old = self.items[item.index]
        if old is item:
            return
        self._by_state[old.state] -= 1
        self._by_state[item.state] += 1
        self.items[item.index] = item
        self.batch = settle(self.batch, self.counts, now=now)

    def send(self, index: int, *, now: float) -> Dispatch:
        cancel_requested = self.batch.cancel_requested_at is not None
        item, dispatch = send(
            self.items[index], now=now, expires_at=self.batch.expires_at, cancel_requested=cancel_requested
        )
        self._put(item, now)
        return dispatch

    def record(self, index: int, outcome: Outcome, *, now: float) -> Recorded:
        item, recorded = record(self.items[index], outcome, now=now)
        self._put(item, now)
        return recorded

    def retry_later(self, index: int, *, throttled: bool, now: float) -> None:
        cancel_requested = self.batch.cancel_requested_at is not None
        self._put(retry_later(self.items[index], throttled=throttled, cancel_requested=cancel_requested, now=now), now)

    def cancel(self, *, now: float) -> CancelResult:
        self.batch, result = request_cancel(self.batch, now=now)
        if result is CancelResult.STARTED:
            for item in list(self.items):
                self._put(cancel_item(item, now=now), now)
        return result

    def expire_if_due(self, *, now: float) -> bool:
        if not is_due_to_expire(self.batch, now=now):
            return False
        for item in list(self.items):
            self._put(expire_item(item, now=now), now)
        return True

    def expire_item(self, index: int, *, now: float, reason: str | None = None) -> None:
        self._put(expire_item(self.items[index], now=now, reason=reason), now)

    def give_up(self, index: int, outcome: Outcome, *, now: float) -> Recorded:
        """A final outcome decided without a (kept) answer: dead letter, retries exhausted."""
        if outcome.state is ItemState.EXPIRED:
            before = self.items[index]
            if before.state.final:
                return Recorded.DUPLICATE if before.outcome == outcome else Recorded.REFUSED
            self.expire_item(index, now=now, reason=outcome.reason)
            return Recorded.STORED
        return self.record(index, outcome, now=now)
