"""Where batches live: the ``BatchStore`` interface the feeder, the workers and the HTTP endpoints
use, what every store shares (rows <-> model objects, bulk transitions), and ``MemoryStore``.

Adapters around the core, not a second core: every state change is one of ``batches.model``'s pure
transitions, applied to the stored value, and the store persists what it returns. A store adds
only what the model leaves to it: atomicity (one batch's writes are serialized, so two workers
recording the same item store exactly one outcome, and the batch is settled in the same
transaction that finished its last item), ordering (results by index, batches newest first) and
retention (``purge``).

Three stores, one contract (``tests/integration/test_batch_stores.py``):

  MemoryStore          here: ``model.BatchState`` per batch; tests and an embedded gateway
                       that may forget its batches on restart
  SqliteBatchStore     batches/sqlite_store.py: one local file, the embedded default
  PostgresBatchStore   batches/pg_store.py: shared by every gateway and worker

Archiving (retention over) keeps each item's state and custom_id, so counts still derive from
item states, and drops what is heavy: the request body and the answer's body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson

from batches import model
from batches.api_common import ApiError, Page, paginate
from batches.feeder import ActiveBatch
from batches.model import (
    Api,
    Batch,
    BatchState,
    CancelResult,
    Counts,
    Dispatch,
    InputError,
    Item,
    ItemState,
    Outcome,
    Recorded,
)
from batches.openai_api import FileRecord

RESULTS_PAGE_SIZE = 500  # items per read while streaming results: bounded memory, few round trips
EXPIRY_SWEEP_LIMIT = 100  # batches expired per sweep call; the sweeper calls again while it gets some


class BatchStoreError(Exception):
    """Base of what a store raises on purpose."""


class NotInStore(BatchStoreError, LookupError):
    """No such batch (or item) in this store."""


class AlreadyStored(BatchStoreError, ValueError):
    """A batch or file with this id exists already: ids are never reused."""


@dataclass(frozen=True, slots=True)
class BatchPage:
    """One page of a tenant's batches, newest first, as both APIs list them."""

    batches: list[Batch]
    has_more: bool

    @property
    def page(self) -> Page:
        """The ids and ``has_more`` as ``api_common.Page`` (what the APIs' ``render_list`` take)."""
        return Page([batch.id for batch in self.batches], self.has_more)


@dataclass(frozen=True, slots=True)
class Purged:
    archived: list[str]  # batches whose results were dropped
    deleted_files: int  # input files past their expiry


class BatchStore(Protocol):
    """What the feeder, the workers and the HTTP endpoints need from a store. ``now`` is always
    the caller's (unix seconds), as in the model. Operations on an unknown batch or item raise
    ``NotInStore``, except the getters, which return None."""

    description: str  # for messages: the file, the DSN with its password masked, or "memory"

    # -- batches
    async def create_batch(self, batch: Batch, items: Sequence[Item]) -> None:
        """The header and every item, in one transaction (all or nothing)."""
        ...

    async def get_batch(self, batch_id: str, *, tenant: str | None = None) -> Batch | None:
        """The batch, or None (also when ``tenant`` is given and the batch is another tenant's)."""
        ...

    async def list_batches(
        self, tenant: str, *, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> BatchPage:
        """Newest first (created_at, then id), paged exactly as ``api_common.paginate``: an unknown
        cursor, or both at once, is its ApiError 400."""
        ...

    async def counts(self, batch_id: str) -> Counts: ...

    async def request_cancel(self, batch_id: str, *, now: float) -> tuple[Batch, CancelResult]:
        """``model.request_cancel``; when it starts, every queued item is canceled at once (sent
        ones finish) and the batch settles."""
        ...

    async def expire_due(self, *, now: float, limit: int = EXPIRY_SWEEP_LIMIT) -> list[str]:
        """The sweep: every batch ``model.is_due_to_expire`` has its unfinished items expired and
        settles. Returns the ids it expired (at most ``limit``; call again while non-empty)."""
        ...

    async def settle(self, batch_id: str, *, now: float) -> Batch:
        """``model.settle`` with the stored counts (the item operations already do this)."""
        ...

    async def archive(self, batch_id: str, *, now: float) -> Batch:
        """``model.archive``; when it archives, the items' bodies and answers are dropped."""
        ...

    async def delete_batch(self, batch_id: str) -> bool:
        """The batch and its items are gone (Anthropic's DELETE; the API checks it has ended)."""
        ...

    async def active_batches(self) -> list[ActiveBatch]:
        """Every batch still running (not ended, not being canceled), any order, each with its
        tenant, lane and number of queued items (``feeder.FeedSource``)."""
        ...

    # -- items
    async def get_item(self, batch_id: str, index: int) -> Item | None: ...

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> list[Item]:
        """The feeder's window: up to ``limit`` queued items with an index above ``after_index``,
        by index; with ``unpublished_only``, only those not marked published."""
        ...

    async def mark_published(self, batch_id: str, indexes: Collection[int]) -> None:
        """The feeder published these items and the lanes confirmed it: a restarted feeder reading
        ``unpublished_only`` does not publish them again. The mark is cleared when
        ``retry_item_later`` puts an item back to queued; whoever put it back (the worker that
        decided the retry, the dead-letter sweeper) publishes it again, not the feeder (which
        would skip the retry's delay). Unknown indexes are ignored."""
        ...

    async def send_item(self, batch_id: str, index: int, *, now: float) -> tuple[Item, Dispatch]:
        """``model.send`` with the batch's expiry and cancellation (a redelivery is sent again)."""
        ...

    async def record_item(self, batch_id: str, index: int, outcome: Outcome, *, now: float) -> tuple[Item, Recorded]:
        """``model.record``, idempotent by (batch_id, index): the same outcome again is DUPLICATE,
        a different one REFUSED; two concurrent callers store exactly one."""
        ...

    async def retry_item_later(self, batch_id: str, index: int, *, throttled: bool, now: float) -> Item:
        """``model.retry_later`` (canceled instead when the batch is being canceled). An item put
        back to queued loses its published mark: the caller publishes it again (see
        ``mark_published``)."""
        ...

    async def expire_item(self, batch_id: str, index: int, *, now: float, reason: str | None = None) -> Item:
        """``model.expire_item`` for one item (its message aged out of the interactive lane)."""
        ...

    def results(self, batch_id: str, *, states: Collection[ItemState] | None = None) -> AsyncIterator[Item]:
        """Every item (or those in ``states``) in request order, read a page at a time, so a
        100,000-item batch is never in memory at once. Raises NotInStore on first use."""
        ...

    # -- OpenAI input files
    async def put_file(self, record: FileRecord, content: bytes) -> None: ...

    async def get_file(self, file_id: str, *, tenant: str | None = None) -> FileRecord | None: ...

    async def file_content(self, file_id: str) -> bytes | None: ...

    async def delete_file(self, file_id: str) -> bool: ...

    # -- retention
    async def purge(self, *, now: float) -> Purged:
        """Archive every batch ``model.archive`` says is past retention, delete expired files."""
        ...

    async def close(self) -> None: ...


# --- what the stores share ----------------------------------------------------------------------


def check_new_batch(batch: Batch, items: Sequence[Item]) -> None:
    """The model's rule for a batch and its items (indexed 0..total-1, in order); BatchModelError."""
    BatchState(batch, items)


def is_due_for_archive(batch: Batch, *, now: float) -> bool:
    return model.archive(batch, now=now) is not batch


def archive_cutoff(now: float) -> float:
    """Batches created before this may be due for archiving: the SQL pre-filter, ``model.archive``
    decides each one."""
    return now - model.RESULTS_RETENTION_SECONDS


def bulk_transition(transition: Callable[[Item], Item]) -> dict[ItemState, Item]:
    """What a per-item transition that does not depend on the item (``cancel_item``,
    ``expire_item`` at a given ``now``) does to every item in each state, found by applying it to
    one probe item per state: ``{state before: item after}`` for the states it changes. A SQL store
    then runs one UPDATE per entry instead of reading 100,000 rows, and still stores only what
    the model returned. Refuses transitions that touch anything but state, outcome and
    finished_at (those would need the rows one by one)."""
    changes: dict[ItemState, Item] = {}
    for state in ItemState:
        probe = _probe(state)
        after = transition(probe)
        if after == probe:
            continue
        if replace(after, state=probe.state, outcome=probe.outcome, finished_at=probe.finished_at) != probe:
            raise model.BatchModelError("a bulk transition may change only state, outcome and finished_at")
        changes[state] = after
    return changes


# The item transitions, as functions of the stored batch and item: a SQL store loads both under
# its lock, applies one of these and writes back what the model returned.
ItemChange = Callable[[Batch, Item], tuple[Item, Any]]


def sending(now: float) -> ItemChange:
    def change(batch: Batch, item: Item) -> tuple[Item, Dispatch]:
        cancel_requested = batch.cancel_requested_at is not None
        return model.send(item, now=now, expires_at=batch.expires_at, cancel_requested=cancel_requested)

    return change


def recording(outcome: Outcome, now: float) -> ItemChange:
    return lambda batch, item: model.record(item, outcome, now=now)


def retrying(throttled: bool, now: float) -> ItemChange:
    def change(batch: Batch, item: Item) -> tuple[Item, None]:
        cancel_requested = batch.cancel_requested_at is not None
        return model.retry_later(item, throttled=throttled, cancel_requested=cancel_requested, now=now), None

    return change


def expiring(now: float, reason: str | None) -> ItemChange:
    return lambda batch, item: (model.expire_item(item, now=now, reason=reason), None)


def canceling_all(now: float) -> dict[ItemState, Item]:
    return bulk_transition(lambda item: model.cancel_item(item, now=now))


def expiring_all(now: float) -> dict[ItemState, Item]:
    return bulk_transition(lambda item: model.expire_item(item, now=now))


def both_cursors() -> ApiError:
    return ApiError(400, "give at most one of before_id and after_id")  # as api_common.paginate


def unknown_cursor(name: str, cursor: str) -> ApiError:
    return ApiError(400, f"{name} {cursor!r} does not name an object in this list", param=name)


_PROBE_OUTCOMES = {
    ItemState.SUCCEEDED: Outcome.from_response(200, None),
    ItemState.ERRORED: Outcome.errored("probe"),
    ItemState.EXPIRED: Outcome.expired(),
    ItemState.CANCELED: Outcome.canceled(),
}


def _probe(state: ItemState) -> Item:
    outcome = _PROBE_OUTCOMES.get(state)
    return Item(0, "probe", {}, state=state, attempts=1, outcome=outcome, finished_at=0.0 if outcome else None)


# Rows: the same columns in SQLite and PostgreSQL. JSON goes in as orjson bytes (BLOB / bytea):
# stored exactly as given, parsed only when read back.

BATCH_COLUMNS = (
    "id", "tenant", "api", "endpoint", "created_at", "expires_at", "total", "cancel_requested_at", "ended_at",
    "archived_at", "metadata", "input_file_id", "failure", "lane", "owner_key",
)  # fmt: skip
ITEM_COLUMNS = (
    "batch_id", "item_index", "custom_id", "body", "state", "attempts", "throttles", "status_code",
    "outcome_body", "request_id", "reason", "sent_at", "finished_at",
)  # fmt: skip
# What an item transition can change (the rest is fixed at creation).
ITEM_CHANGES = ("state", "attempts", "throttles", "status_code", "outcome_body", "request_id", "reason", "finished_at")
FILE_COLUMNS = ("id", "tenant", "filename", "purpose", "bytes", "created_at", "expires_at")


def batch_values(batch: Batch) -> tuple[Any, ...]:
    failure = [[error.code, error.message, error.line, error.param] for error in batch.failure]
    return (
        batch.id, batch.tenant, batch.api.value, batch.endpoint, batch.created_at, batch.expires_at, batch.total,
        batch.cancel_requested_at, batch.ended_at, batch.archived_at, orjson.dumps(dict(batch.metadata)),
        batch.input_file_id, orjson.dumps(failure), batch.lane, batch.owner_key,
    )  # fmt: skip


def batch_of(row: Mapping[str, Any]) -> Batch:
    return Batch(
        id=row["id"],
        tenant=row["tenant"],
        api=Api(row["api"]),
        endpoint=row["endpoint"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        total=row["total"],
        cancel_requested_at=row["cancel_requested_at"],
        ended_at=row["ended_at"],
        archived_at=row["archived_at"],
        metadata=orjson.loads(row["metadata"]),
        input_file_id=row["input_file_id"],
        failure=tuple(InputError(*error) for error in orjson.loads(row["failure"])),
        lane=row["lane"],
        owner_key=row["owner_key"],
    )


def item_changes(item: Item) -> tuple[Any, ...]:
    """The ITEM_CHANGES values of an item."""
    outcome = item.outcome
    if outcome is None:
        return (item.state.value, item.attempts, item.throttles, None, None, None, None, item.finished_at)
    return (
        item.state.value,
        item.attempts,
        item.throttles,
        outcome.status_code,
        orjson.dumps(outcome.body),
        outcome.request_id,
        outcome.reason,
        item.finished_at,
    )


# What a bulk transition changes: ITEM_CHANGES but attempts and throttles (bulk_transition keeps them).
BULK_CHANGES = ("state", "status_code", "outcome_body", "request_id", "reason", "finished_at")


def bulk_values(item: Item) -> tuple[Any, ...]:
    state, _attempts, _throttles, *rest = item_changes(item)
    return (state, *rest)


def item_values(batch_id: str, item: Item) -> tuple[Any, ...]:
    """A new item's ITEM_COLUMNS values (never sent yet)."""
    changes = item_changes(item)
    return (batch_id, item.index, item.custom_id, orjson.dumps(dict(item.body)), *changes[:-1], None, changes[-1])


def item_of(row: Mapping[str, Any]) -> Item:
    state = ItemState(row["state"])
    outcome = None
    if state.final:
        raw_body = row["outcome_body"]
        outcome = Outcome(
            state,
            status_code=row["status_code"],
            body=None if raw_body is None else orjson.loads(raw_body),
            request_id=row["request_id"],
            reason=row["reason"],
        )
    body = row["body"]
    return Item(
        index=row["item_index"],
        custom_id=row["custom_id"],
        body={} if body is None else orjson.loads(body),  # None once archived
        state=state,
        attempts=row["attempts"],
        throttles=row["throttles"],
        outcome=outcome,
        finished_at=row["finished_at"],
    )


def file_values(record: FileRecord) -> tuple[Any, ...]:
    return (
        record.id, record.tenant, record.filename, record.purpose, record.bytes, record.created_at, record.expires_at,
    )  # fmt: skip


def file_of(row: Mapping[str, Any]) -> FileRecord:
    return FileRecord(*(row[column] for column in FILE_COLUMNS))


def stripped(item: Item) -> Item:
    """An archived item: state and custom_id kept (counts), request and answer bodies dropped."""
    outcome = None if item.outcome is None else replace(item.outcome, body=None)
    return replace(item, body={}, outcome=outcome)


# --- in memory ----------------------------------------------------------------------------------


class MemoryStore:
    """Batches in this process: one ``model.BatchState`` per batch, which applies every transition
    and keeps counts as it goes. Each method runs to completion without awaiting, so concurrent
    tasks on one event loop see each operation as atomic. Lost when the process ends."""

    description = "memory"

    def __init__(self) -> None:
        self._batches: dict[str, BatchState] = {}
        self._published: dict[str, set[int]] = {}  # batch id -> indexes marked published
        self._files: dict[str, tuple[FileRecord, bytes]] = {}

    def _state(self, batch_id: str) -> BatchState:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise NotInStore(f"no batch {batch_id!r}") from None

    def _index(self, state: BatchState, index: int) -> int:
        if not 0 <= index < len(state.items):
            raise NotInStore(f"batch {state.batch.id!r} has no item {index}")
        return index

    async def create_batch(self, batch: Batch, items: Sequence[Item]) -> None:
        if batch.id in self._batches:
            raise AlreadyStored(f"batch {batch.id!r} exists")
        self._batches[batch.id] = BatchState(batch, items)
        self._published[batch.id] = set()

    async def get_batch(self, batch_id: str, *, tenant: str | None = None) -> Batch | None:
        state = self._batches.get(batch_id)
        if state is None or (tenant is not None and state.batch.tenant != tenant):
            return None
        return state.batch

    async def list_batches(
        self, tenant: str, *, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> BatchPage:
        mine = sorted(
            (state.batch for state in self._batches.values() if state.batch.tenant == tenant),
            key=lambda batch: (batch.created_at, batch.id),
            reverse=True,
        )
        page = paginate([batch.id for batch in mine], limit=limit, after_id=after_id, before_id=before_id)
        return BatchPage([self._batches[batch_id].batch for batch_id in page.ids], page.has_more)

    async def counts(self, batch_id: str) -> Counts:
        return self._state(batch_id).counts

    async def request_cancel(self, batch_id: str, *, now: float) -> tuple[Batch, CancelResult]:
        state = self._state(batch_id)
        result = state.cancel(now=now)
        return state.batch, result

    async def expire_due(self, *, now: float, limit: int = EXPIRY_SWEEP_LIMIT) -> list[str]:
        expired: list[str] = []
        for batch_id, state in list(self._batches.items()):
            if len(expired) >= limit:
                break
            if state.expire_if_due(now=now):
                expired.append(batch_id)
        return expired

    async def settle(self, batch_id: str, *, now: float) -> Batch:
        state = self._state(batch_id)
        state.batch = model.settle(state.batch, state.counts, now=now)
        return state.batch

    async def archive(self, batch_id: str, *, now: float) -> Batch:
        state = self._state(batch_id)
        archived = model.archive(state.batch, now=now)
        if archived is not state.batch:
            state.batch = archived
            state.items = [stripped(item) for item in state.items]  # same states: counts unchanged
        return state.batch

    async def delete_batch(self, batch_id: str) -> bool:
        self._published.pop(batch_id, None)
        return self._batches.pop(batch_id, None) is not None

    async def active_batches(self) -> list[ActiveBatch]:
        return [
            ActiveBatch(state.batch.tenant, batch_id, state.batch.lane, state.counts.queued)
            for batch_id, state in self._batches.items()
            if state.batch.ended_at is None and state.batch.cancel_requested_at is None
        ]

    async def get_item(self, batch_id: str, index: int) -> Item | None:
        state = self._batches.get(batch_id)
        if state is None or not 0 <= index < len(state.items):
            return None
        return state.items[index]

    async def queued_items(
        self, batch_id: str, *, after_index: int = -1, limit: int, unpublished_only: bool = False
    ) -> list[Item]:
        published = self._published[batch_id] if unpublished_only else ()
        window: list[Item] = []
        for item in self._state(batch_id).items[max(after_index + 1, 0) :]:
            if len(window) >= limit:
                break
            if item.state is ItemState.QUEUED and item.index not in published:
                window.append(item)
        return window

    async def mark_published(self, batch_id: str, indexes: Collection[int]) -> None:
        state = self._state(batch_id)
        self._published[batch_id].update(index for index in indexes if 0 <= index < len(state.items))

    async def send_item(self, batch_id: str, index: int, *, now: float) -> tuple[Item, Dispatch]:
        state = self._state(batch_id)
        dispatch = state.send(self._index(state, index), now=now)
        return state.items[index], dispatch

    async def record_item(self, batch_id: str, index: int, outcome: Outcome, *, now: float) -> tuple[Item, Recorded]:
        state = self._state(batch_id)
        recorded = state.record(self._index(state, index), outcome, now=now)
        return state.items[index], recorded

    async def retry_item_later(self, batch_id: str, index: int, *, throttled: bool, now: float) -> Item:
        state = self._state(batch_id)
        before = state.items[self._index(state, index)]
        state.retry_later(index, throttled=throttled, now=now)
        if state.items[index].state is ItemState.QUEUED and before.state is not ItemState.QUEUED:
            self._published[batch_id].discard(index)  # put back: its publisher is the caller now
        return state.items[index]

    async def expire_item(self, batch_id: str, index: int, *, now: float, reason: str | None = None) -> Item:
        state = self._state(batch_id)
        state.expire_item(self._index(state, index), now=now, reason=reason)
        return state.items[index]

    async def results(self, batch_id: str, *, states: Collection[ItemState] | None = None) -> AsyncIterator[Item]:
        state = self._state(batch_id)
        for position in range(len(state.items)):
            item = state.items[position]
            if states is None or item.state in states:
                yield item
            if position % RESULTS_PAGE_SIZE == RESULTS_PAGE_SIZE - 1:
                await asyncio.sleep(0)  # like the other stores, let other tasks run between pages

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        if record.id in self._files:
            raise AlreadyStored(f"file {record.id!r} exists")
        self._files[record.id] = (record, bytes(content))

    async def get_file(self, file_id: str, *, tenant: str | None = None) -> FileRecord | None:
        stored = self._files.get(file_id)
        if stored is None or (tenant is not None and stored[0].tenant != tenant):
            return None
        return stored[0]

    async def file_content(self, file_id: str) -> bytes | None:
        stored = self._files.get(file_id)
        return None if stored is None else stored[1]

    async def delete_file(self, file_id: str) -> bool:
        return self._files.pop(file_id, None) is not None

    async def purge(self, *, now: float) -> Purged:
        archived = []
        for batch_id, state in list(self._batches.items()):
            if is_due_for_archive(state.batch, now=now):
                await self.archive(batch_id, now=now)
                archived.append(batch_id)
        expired = [file_id for file_id, (record, _) in self._files.items() if _file_expired(record, now)]
        for file_id in expired:
            del self._files[file_id]
        return Purged(archived, len(expired))

    async def close(self) -> None:
        return None


def _file_expired(record: FileRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at <= now
