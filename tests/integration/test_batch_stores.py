"""The batch stores' contract, run against all three: MemoryStore, SqliteBatchStore (a file in
tmp_path) and PostgresBatchStore (a throwaway database ccr_batches_test_<random>, one schema per
test, dropped after; skipped when PostgreSQL is not there, CCR_TEST_POSTGRES overrides the server).

Every store must leave a batch exactly where ``model.BatchState`` (the core's in-memory aggregate)
would: the hypothesis test at the end drives random event sequences through each store and the
aggregate side by side.
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batches import openai_api
from batches.api_common import ApiError, paginate
from batches.feeder import ActiveBatch
from batches.model import (
    BATCH_WINDOW_SECONDS,
    RESULTS_RETENTION_SECONDS,
    Api,
    BatchModelError,
    BatchState,
    BatchStatus,
    CancelResult,
    Dispatch,
    EndReason,
    InputError,
    ItemState,
    Outcome,
    Recorded,
    archive,
    failed_batch,
    new_batch,
)
from batches.pg_store import PostgresBatchStore
from batches.sqlite_store import SqliteBatchStore
from batches.store import AlreadyStored, BatchStore, MemoryStore, NotInStore

SERVER = os.environ.get("CCR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
T0 = 1_700_000_000.0
OpenStore = Callable[[], Awaitable[BatchStore]]


def _admin(statement: str, database: str = "postgres") -> None:
    async def run() -> None:
        connection = await asyncpg.connect(f"{SERVER}/{database}", timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as thread:  # not on the loop the async tests share
        thread.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def batches_database() -> Iterator[str]:
    name = f"ccr_batches_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f"CREATE DATABASE {name}")
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {SERVER}: {exc}")
    yield name
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens a store on this test's data; a second call is a second worker on the same data (a new
    connection to the same file or database; the memory store is the one instance)."""
    opened: list[BatchStore] = []
    schema = f"t_{uuid.uuid4().hex[:12]}"
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("batches_database")
        _admin(f"CREATE SCHEMA {schema}", database)
    memory = MemoryStore()

    async def open_one() -> BatchStore:
        store: BatchStore
        if request.param == "memory":
            store = memory
        elif request.param == "sqlite":
            store = SqliteBatchStore(tmp_path / "batches.db")
        else:  # asyncpg passes unknown DSN parameters on as server settings: this test's schema
            store = PostgresBatchStore(f"{SERVER}/{database}?search_path={schema}")
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()
    if database is not None:
        _admin(f"DROP SCHEMA {schema} CASCADE", database)


@pytest.fixture
async def store(open_store: OpenStore) -> BatchStore:
    return await open_store()


def requests(n: int, *, size: int = 0) -> list[tuple[str, dict]]:
    padding = "x" * size
    return [
        (f"req-{i:06d}", {"model": "m", "messages": [{"role": "user", "content": f"{i}{padding}"}]}) for i in range(n)
    ]


async def add_batch(
    store: BatchStore,
    n: int,
    *,
    tenant: str = "acme",
    now: float = T0,
    batch_id: str | None = None,
    lane: str = "batch",
):
    batch, items = new_batch(
        batch_id or f"msgbatch_{uuid.uuid4().hex}",
        tenant=tenant,
        api=Api.ANTHROPIC,
        endpoint="/v1/messages",
        requests=requests(n),
        now=now,
        metadata={"job": "test"},
        lane=lane,
    )
    await store.create_batch(batch, items)
    return batch


def answer(custom_id: str) -> Outcome:
    return Outcome.from_response(200, {"content": [{"type": "text", "text": custom_id}]}, f"req_{custom_id}")


async def collect(iterator: AsyncIterator) -> list:
    return [item async for item in iterator]


# --- a whole batch ---------------------------------------------------------------------------------


async def test_a_1000_item_batch_is_sent_recorded_and_read_back_in_request_order(open_store: OpenStore):
    first, second = await open_store(), await open_store()
    batch = await add_batch(first, 1000)
    assert await first.get_batch(batch.id) == batch
    assert (await first.counts(batch.id)).queued == 1000

    async def worker(store: BatchStore, indexes: range) -> None:
        for index in indexes:
            item, dispatch = await store.send_item(batch.id, index, now=T0 + 1)
            assert dispatch is Dispatch.SEND and item.attempts == 1
            _, recorded = await store.record_item(batch.id, index, answer(item.custom_id), now=T0 + 2)
            assert recorded is Recorded.STORED

    # Four workers on two connections, interleaved over the batch.
    await asyncio.gather(*(worker((first, second)[n % 2], range(n, 1000, 4)) for n in range(4)))
    ended = await second.get_batch(batch.id)
    assert ended.status is BatchStatus.ENDED and ended.ended_at == T0 + 2
    assert ended.end_reason(await first.counts(batch.id)) is EndReason.COMPLETED
    results = await collect(first.results(batch.id))
    assert [item.index for item in results] == list(range(1000))
    for item in results:
        assert item.state is ItemState.SUCCEEDED
        assert item.outcome == answer(item.custom_id) and item.outcome.body["content"][0]["text"] == item.custom_id
        assert item.body["messages"][0]["content"] == str(item.index)
    succeeded = await collect(first.results(batch.id, states={ItemState.SUCCEEDED}))
    assert len(succeeded) == 1000 and await collect(first.results(batch.id, states={ItemState.ERRORED})) == []


async def test_a_failed_batch_has_no_items_and_ids_are_never_reused(store: BatchStore):
    failed = failed_batch(
        "batch_failed1",
        tenant="acme",
        api=Api.OPENAI,
        endpoint="/v1/chat/completions",
        errors=[InputError("invalid_json_line", "bad", line=3)],
        now=T0,
        input_file_id="file-x",
    )
    await store.create_batch(failed, [])
    assert await store.get_batch(failed.id) == failed
    assert (await store.counts(failed.id)).total == 0
    with pytest.raises(AlreadyStored):
        await store.create_batch(failed, [])
    with pytest.raises(BatchModelError):  # items that are not the batch's 0..total-1
        batch, items = new_batch(
            "b2", tenant="a", api=Api.ANTHROPIC, endpoint="/v1/messages", requests=requests(2), now=T0
        )
        await store.create_batch(batch, items[:1])
    assert await store.get_batch("b2") is None


async def test_unknown_batches_and_items(store: BatchStore):
    batch = await add_batch(store, 2)
    assert await store.get_batch("nope") is None
    assert await store.get_batch(batch.id, tenant="someone-else") is None
    assert await store.get_item(batch.id, 5) is None
    for call in (
        store.counts("nope"),
        store.send_item("nope", 0, now=T0),
        store.send_item(batch.id, 5, now=T0),
        store.request_cancel("nope", now=T0),
        collect(store.results("nope")),
    ):
        with pytest.raises(NotInStore):
            await call


async def test_the_feeder_window_is_the_next_queued_items_by_index(store: BatchStore):
    batch = await add_batch(store, 10)
    await store.send_item(batch.id, 1, now=T0)
    await store.send_item(batch.id, 2, now=T0)
    window = await store.queued_items(batch.id, limit=3)
    assert [item.index for item in window] == [0, 3, 4]
    assert [item.index for item in await store.queued_items(batch.id, after_index=4, limit=10)] == [5, 6, 7, 8, 9]
    await store.retry_item_later(batch.id, 2, throttled=True, now=T0)  # back in the queue
    item = await store.get_item(batch.id, 2)
    assert (item.state, item.attempts, item.throttles) == (ItemState.QUEUED, 1, 1)
    assert [item.index for item in await store.queued_items(batch.id, limit=3)] == [0, 2, 3]


async def test_running_batches_are_listed_with_their_tenant_lane_and_queued_count(store: BatchStore):
    bulk = await add_batch(store, 5, tenant="acme")
    urgent = await add_batch(store, 3, tenant="zeta", lane="interactive")
    canceling = await add_batch(store, 2)
    ended = await add_batch(store, 1)
    assert (await store.get_batch(bulk.id)).lane == "batch"
    assert (await store.get_batch(urgent.id)).lane == "interactive"
    await store.send_item(bulk.id, 0, now=T0)
    await store.send_item(canceling.id, 0, now=T0)
    await store.request_cancel(canceling.id, now=T0 + 1)  # one item still sent: canceling, not ended
    await store.send_item(ended.id, 0, now=T0)
    await store.record_item(ended.id, 0, answer("e"), now=T0 + 1)
    active = sorted(await store.active_batches(), key=lambda batch: batch.tenant)
    assert active == [ActiveBatch("acme", bulk.id, "batch", 4), ActiveBatch("zeta", urgent.id, "interactive", 3)]


async def test_published_items_are_left_out_of_a_restarted_feeders_window_until_put_back(open_store: OpenStore):
    store = await open_store()
    batch = await add_batch(store, 6)
    await store.mark_published(batch.id, [0, 1, 3, 99])  # an unknown index is ignored
    unpublished = await store.queued_items(batch.id, limit=10, unpublished_only=True)
    assert [item.index for item in unpublished] == [2, 4, 5]
    assert [item.index for item in await store.queued_items(batch.id, limit=10)] == list(range(6))
    # a second process (a restarted feeder) sees the marks too
    again = await open_store()
    assert [
        item.index for item in await again.queued_items(batch.id, after_index=2, limit=1, unpublished_only=True)
    ] == [4]
    # sent, then put back by a worker's retry: the mark is gone (the worker publishes it again)
    await store.send_item(batch.id, 1, now=T0)
    await store.send_item(batch.id, 3, now=T0)
    await store.retry_item_later(batch.id, 1, throttled=True, now=T0 + 1)
    unpublished = await again.queued_items(batch.id, limit=10, unpublished_only=True)
    assert [item.index for item in unpublished] == [1, 2, 4, 5]
    # a retry that does not put the item back (it was already queued) leaves the mark alone
    await store.retry_item_later(batch.id, 0, throttled=False, now=T0 + 1)
    assert 0 not in [item.index for item in await store.queued_items(batch.id, limit=10, unpublished_only=True)]
    with pytest.raises(NotInStore):
        await store.mark_published("nope", [0])


# --- idempotent results ----------------------------------------------------------------------------


async def test_recording_twice_is_a_no_op_and_a_different_result_is_refused(store: BatchStore):
    batch = await add_batch(store, 2)
    await store.send_item(batch.id, 0, now=T0)
    first, recorded = await store.record_item(batch.id, 0, answer("a"), now=T0 + 1)
    assert recorded is Recorded.STORED
    again, recorded = await store.record_item(batch.id, 0, answer("a"), now=T0 + 5)
    assert recorded is Recorded.DUPLICATE and again == first and again.finished_at == T0 + 1
    other, recorded = await store.record_item(batch.id, 0, Outcome.errored("late"), now=T0 + 6)
    assert recorded is Recorded.REFUSED and other == first
    assert (await store.get_item(batch.id, 0)).outcome == answer("a")
    # a redelivered message for the finished item is skipped, not sent again
    assert (await store.send_item(batch.id, 0, now=T0 + 7))[1] is Dispatch.SKIP


async def test_two_concurrent_recorders_of_one_item_store_exactly_one(open_store: OpenStore):
    first, second = await open_store(), await open_store()
    batch = await add_batch(first, 20)
    for index in range(20):
        await first.send_item(batch.id, index, now=T0)
    outcomes = [(answer(f"one-{i}"), Outcome.from_response(500, {"worker": 2})) for i in range(20)]
    answers = await asyncio.gather(
        *(
            store.record_item(batch.id, i, outcomes[i][n], now=T0 + 1)
            for i in range(20)
            for n, store in enumerate((first, second))
        )
    )
    for index in range(20):
        pair = answers[2 * index : 2 * index + 2]
        assert sorted(recorded for _, recorded in pair) == [Recorded.REFUSED, Recorded.STORED]
        winner = next(n for n, (_, recorded) in enumerate(pair) if recorded is Recorded.STORED)
        stored = await second.get_item(batch.id, index)
        assert stored.outcome == outcomes[index][winner] and all(item == stored for item, _ in pair)
    assert (await first.get_batch(batch.id)).ended_at == T0 + 1


# --- cancellation and expiry -----------------------------------------------------------------------


async def test_cancellation_cancels_only_unsent_items_and_the_batch_ends_when_sent_ones_finish(store: BatchStore):
    batch = await add_batch(store, 6)
    for index in (0, 1, 2):
        await store.send_item(batch.id, index, now=T0)
    await store.record_item(batch.id, 0, answer("c0"), now=T0 + 1)
    canceling, result = await store.request_cancel(batch.id, now=T0 + 2)
    assert result is CancelResult.STARTED and canceling.status is BatchStatus.CANCELING
    counts = await store.counts(batch.id)
    assert (counts.succeeded, counts.sent, counts.canceled, counts.queued) == (1, 2, 3, 0)
    assert (await store.request_cancel(batch.id, now=T0 + 3))[1] is CancelResult.ALREADY
    # a queued item's message that was already on the lane is skipped
    assert (await store.send_item(batch.id, 3, now=T0 + 3))[1] is Dispatch.SKIP
    # a sent item that fails transiently now ends canceled instead of going back to the queue
    assert (await store.retry_item_later(batch.id, 1, throttled=False, now=T0 + 4)).state is ItemState.CANCELED
    assert (await store.get_batch(batch.id)).ended_at is None
    await store.record_item(batch.id, 2, answer("c2"), now=T0 + 5)
    ended = await store.get_batch(batch.id)
    assert ended.ended_at == T0 + 5 and ended.end_reason(await store.counts(batch.id)) is EndReason.CANCELED
    assert (await store.request_cancel(batch.id, now=T0 + 6))[1] is CancelResult.ENDED
    states = [item.state for item in await collect(store.results(batch.id))]
    assert states == [ItemState.SUCCEEDED, ItemState.CANCELED, ItemState.SUCCEEDED] + [ItemState.CANCELED] * 3


async def test_the_expiry_sweep_expires_every_unfinished_item_of_a_batch_past_its_window(store: BatchStore):
    due = await add_batch(store, 4)
    later = await add_batch(store, 2, now=T0 + 3600)
    await store.send_item(due.id, 0, now=T0)
    await store.record_item(due.id, 0, answer("x"), now=T0 + 1)
    await store.send_item(due.id, 1, now=T0 + 2)
    expiry = T0 + BATCH_WINDOW_SECONDS
    assert await store.expire_due(now=expiry - 1) == []
    assert await store.expire_due(now=expiry) == [due.id]
    assert await store.expire_due(now=expiry) == []  # ended: nothing left to sweep
    ended = await store.get_batch(due.id)
    counts = await store.counts(due.id)
    assert (counts.succeeded, counts.expired) == (1, 3) and ended.ended_at == expiry
    assert ended.end_reason(counts) is EndReason.EXPIRED
    assert (await store.get_batch(later.id)).ended_at is None
    # the worker's late answer for the expired item is refused: it ended expired
    assert (await store.record_item(due.id, 1, answer("late"), now=expiry + 1))[1] is Recorded.REFUSED
    # one item expiring on its own (its message aged out of the interactive lane)
    item = await store.expire_item(later.id, 0, now=T0 + 3601, reason="ttl")
    assert item.state is ItemState.EXPIRED and item.outcome.reason == "ttl"


# --- listing ---------------------------------------------------------------------------------------


async def test_pagination_walks_both_directions_as_the_reference_does(store: BatchStore):
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    # equal creation times too: the order is (created_at, id), newest first
    for n, created in enumerate([T0, T0 + 1, T0 + 1, T0 + 1, T0 + 2, T0 + 3, T0 + 5]):
        await add_batch(store, 1, tenant=tenant, now=created, batch_id=f"msgbatch_{n:02d}{uuid.uuid4().hex[:4]}")
    await add_batch(store, 1, tenant="another-tenant")
    everything = await store.list_batches(tenant, limit=100)
    newest_first = [batch.id for batch in everything.batches]
    assert len(newest_first) == 7 and not everything.has_more
    assert newest_first == [b.id for b in sorted(everything.batches, key=lambda b: (b.created_at, b.id), reverse=True)]
    for limit in (1, 2, 3, 7):
        for cursor in [None, *newest_first]:
            for direction in ("after_id", "before_id"):
                if cursor is None and direction == "before_id":
                    continue
                page = await store.list_batches(tenant, limit=limit, **{direction: cursor})
                assert page.page == paginate(newest_first, limit=limit, **{direction: cursor})
    for bad in ("msgbatch_unknown", (await store.list_batches("another-tenant", limit=1)).batches[0].id):
        with pytest.raises(ApiError) as refused:
            await store.list_batches(tenant, limit=5, after_id=bad)
        assert refused.value.status == 400 and refused.value.param == "after_id"
    with pytest.raises(ApiError):
        await store.list_batches(tenant, limit=5, after_id=newest_first[0], before_id=newest_first[1])


# --- retention and files ---------------------------------------------------------------------------


async def test_retention_archives_results_after_29_days_and_deletes_expired_files(store: BatchStore):
    batch = await add_batch(store, 3)
    running = await add_batch(store, 1)
    for index in range(3):
        await store.send_item(batch.id, index, now=T0)
        await store.record_item(batch.id, index, answer(f"r{index}"), now=T0 + 10)
    assert (await store.archive(batch.id, now=T0 + 11)).archived_at is None  # retention not over
    record = openai_api.new_file("file-abc", tenant="acme", filename="in.jsonl", size=3, now=T0)
    await store.put_file(record, b"{}\n")
    due = T0 + RESULTS_RETENTION_SECONDS
    purged = await store.purge(now=due - 1)
    assert (purged.archived, purged.deleted_files) == ([], 0)
    purged = await store.purge(now=due)
    assert purged.archived == [batch.id] and purged.deleted_files == 0  # files last 30 days
    archived = await store.get_batch(batch.id)
    assert archived.archived_at == due and archived.ended_at == T0 + 10
    assert (await store.get_batch(running.id)).archived_at is None  # never archived while running
    assert (await store.counts(batch.id)).succeeded == 3  # counts still derive from item states
    for item in await collect(store.results(batch.id)):
        assert item.body == {} and item.outcome.body is None and item.custom_id == f"req-{item.index:06d}"
    assert (await store.purge(now=due + 1)).archived == []
    purged = await store.purge(now=record.expires_at)
    assert purged.deleted_files == 1 and await store.get_file("file-abc") is None
    assert await store.delete_batch(batch.id) and await store.get_batch(batch.id) is None
    assert not await store.delete_batch(batch.id)


async def test_openai_input_files_are_put_read_and_deleted(store: BatchStore):
    content = b"".join(
        openai_api.orjson.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": b}) + b"\n"
        for c, b in requests(3)
    )
    record = openai_api.new_file("file-in1", tenant="acme", filename="in.jsonl", size=len(content), now=T0)
    await store.put_file(record, content)
    with pytest.raises(AlreadyStored):
        await store.put_file(record, content)
    assert await store.get_file("file-in1") == record
    assert await store.get_file("file-in1", tenant="other") is None
    assert await store.file_content("file-in1") == content
    assert openai_api.validate_input(await store.file_content("file-in1"), endpoint="/v1/chat/completions").requests
    assert await store.delete_file("file-in1") and not await store.delete_file("file-in1")
    assert await store.get_file("file-in1") is None and await store.file_content("file-in1") is None


# --- streaming -------------------------------------------------------------------------------------


async def test_a_20000_item_result_streams_in_bounded_memory(store: BatchStore):
    n, body_size = 20_000, 1000  # about 20 MB of request bodies
    batch, items = new_batch(
        f"msgbatch_{uuid.uuid4().hex}", tenant="acme", api=Api.ANTHROPIC, endpoint="/v1/messages",
        requests=requests(n, size=body_size), now=T0,
    )  # fmt: skip
    await store.create_batch(batch, items)
    del items
    limit = 8 * 1024 * 1024  # a few pages (they measure about 2 MB here), not the 20 MB
    tracemalloc.start()
    try:
        seen = 0
        async for item in store.results(batch.id):
            assert item.index == seen and item.custom_id == f"req-{seen:06d}"
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n
    assert peak < limit, f"streaming {n} items peaked at {peak / 1e6:.1f} MB"


# --- every store where model.BatchState would be ---------------------------------------------------

OUTCOMES = st.sampled_from(
    [answer("a"), answer("b"), Outcome.from_response(400, {"type": "error"}), Outcome.errored("gave up")]
)
EVENTS = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 4)),
    st.tuples(st.just("record"), st.integers(0, 4), OUTCOMES),
    st.tuples(st.just("retry"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("expire_item"), st.integers(0, 4)),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("sweep")),
    st.tuples(st.just("purge")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 5), events=st.lists(st.tuples(EVENTS, st.floats(0, 2 * BATCH_WINDOW_SECONDS)), max_size=15))
async def test_random_event_sequences_leave_every_store_where_batch_state_is(store: BatchStore, n, events):
    batch, items = new_batch(
        f"msgbatch_{uuid.uuid4().hex}", tenant="acme", api=Api.OPENAI, endpoint="/v1/chat/completions",
        requests=requests(n), now=T0,
    )  # fmt: skip
    await store.create_batch(batch, items)
    expected = BatchState(batch, items)
    now = T0
    for event, step in events:
        now += step  # time only moves forward
        kind, *args = event
        index = args[0] % n if args else 0
        if kind == "send":
            _, dispatch = await store.send_item(batch.id, index, now=now)
            assert dispatch is expected.send(index, now=now)
        elif kind == "record":
            _, recorded = await store.record_item(batch.id, index, args[1], now=now)
            assert recorded is expected.record(index, args[1], now=now)
        elif kind == "retry":
            await store.retry_item_later(batch.id, index, throttled=args[1], now=now)
            expected.retry_later(index, throttled=args[1], now=now)
        elif kind == "expire_item":
            await store.expire_item(batch.id, index, now=now, reason="ttl")
            expected.expire_item(index, now=now, reason="ttl")
        elif kind == "cancel":
            assert (await store.request_cancel(batch.id, now=now))[1] is expected.cancel(now=now)
        elif kind == "sweep":
            swept = batch.id in await store.expire_due(now=now, limit=10_000)
            assert swept is expected.expire_if_due(now=now)
        else:  # retention (other examples' batches may be archived too: only ours is checked)
            await store.purge(now=now)
            expected.batch = archive(expected.batch, now=now)
        assert await store.counts(batch.id) == expected.counts
    assert await store.get_batch(batch.id) == expected.batch
    stored = await collect(store.results(batch.id))
    if expected.batch.archived_at is None:
        assert stored == expected.items
    else:
        assert [(item.state, item.attempts) for item in stored] == [
            (item.state, item.attempts) for item in expected.items
        ]
