"""Both stores of stored responses (extproc.responses_store, extproc.responses_store_pg): the two
halves in either order, isolation per tenant and key, expiry and purge. PostgreSQL runs against
the machine's server (127.0.0.1:5432, database ``test``) in a schema of its own, else is skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from extproc.responses_store import (
    SAVE_FAILURES,
    AnswerHalf,
    RequestHalf,
    ResponseStore,
    Saver,
    SqliteResponseStore,
    StoredResponse,
)

PG_DSN = os.environ.get("CCR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
NOW = 1_000_000.0
INPUT = [{"type": "message", "role": "user", "content": "hi"}]
RESPONSE = {"id": "resp_a", "object": "response", "output": [], "store": True}


def request_half(
    token: str = "t1", tenant: str = "acme", key_id: str = "k1", expires: float = NOW + 100
) -> RequestHalf:
    return RequestHalf(token, tenant, key_id, NOW, expires, INPUT, "be brief")


def answer_half(token: str = "t1", tenant: str = "acme", key_id: str = "k1", expires: float = NOW + 100) -> AnswerHalf:
    return AnswerHalf(token, tenant, key_id, NOW, expires, "resp_a", RESPONSE)


async def _sqlite(tmp_path) -> AsyncIterator[ResponseStore]:
    store = SqliteResponseStore(tmp_path / "sub" / "responses.db")
    yield store
    await store.close()


async def _postgres() -> AsyncIterator[ResponseStore]:
    asyncpg = pytest.importorskip("asyncpg")
    from extproc.responses_store_pg import PostgresResponseStore

    schema = f"ccr_test_{uuid.uuid4().hex[:12]}"
    try:
        store = await PostgresResponseStore.open(PG_DSN, schema=schema)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {PG_DSN}: {exc}")
    try:
        yield store
    finally:
        await store.close()
        connection = await asyncpg.connect(PG_DSN)
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        await connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path) -> AsyncIterator[ResponseStore]:
    opened = _sqlite(tmp_path) if request.param == "sqlite" else _postgres()
    async for value in opened:
        yield value


async def test_a_record_is_found_once_both_halves_are_in_whichever_came_first(store) -> None:
    await store.put_answer(answer_half())
    assert await store.get("acme", "k1", "resp_a", NOW) is None  # the request's half is missing
    await store.put_request(request_half())
    record = await store.get("acme", "k1", "resp_a", NOW)
    assert record is not None
    assert (record.id, record.input_items, record.instructions, record.response) == (
        "resp_a",
        INPUT,
        "be brief",
        RESPONSE,
    )
    await store.put_request(request_half("t2"))
    assert await store.get("acme", "k1", "resp_a", NOW) is not None
    assert await store.get("acme", "k1", "resp_unknown", NOW) is None


async def test_another_tenants_or_keys_id_is_not_found(store) -> None:
    await store.put(StoredResponse("resp_a", "acme", "k1", NOW, NOW + 100, INPUT, None, RESPONSE), "t1")
    assert await store.get("acme", "k1", "resp_a", NOW) is not None
    assert await store.get("other", "k1", "resp_a", NOW) is None
    assert await store.get("acme", "k2", "resp_a", NOW) is None
    assert not await store.delete("other", "k1", "resp_a", NOW)
    assert not await store.delete("acme", "k2", "resp_a", NOW)
    assert await store.delete("acme", "k1", "resp_a", NOW)
    assert await store.get("acme", "k1", "resp_a", NOW) is None
    assert not await store.delete("acme", "k1", "resp_a", NOW)


async def test_an_expired_record_is_gone_and_purged(store) -> None:
    await store.put_request(request_half(expires=NOW + 10))
    await store.put_answer(answer_half(expires=NOW + 10))
    assert await store.get("acme", "k1", "resp_a", NOW + 5) is not None
    assert await store.get("acme", "k1", "resp_a", NOW + 10) is None
    assert not await store.delete("acme", "k1", "resp_a", NOW + 11)
    await store.put_request(request_half("t2", expires=NOW + 1000))  # a half whose answer never came
    assert await store.purge(NOW + 11) == 1
    assert await store.purge(NOW + 11) == 0


async def test_the_saver_writes_in_the_background_and_counts_failures(tmp_path) -> None:
    store = SqliteResponseStore(tmp_path / "r.db")
    saver = Saver(store, clock=lambda: NOW)
    saver.request(request_half())
    saver.answer(answer_half())
    await saver.drain()
    assert await store.get("acme", "k1", "resp_a", NOW) is not None
    await store.close()

    class Broken(SqliteResponseStore):
        async def put_answer(self, half: AnswerHalf) -> None:
            raise OSError("disk full")

    before = SAVE_FAILURES.labels("put_answer")._value.get()
    broken = Saver(Broken(tmp_path / "b.db"), clock=lambda: NOW)
    broken.answer(answer_half())
    await broken.drain()
    assert SAVE_FAILURES.labels("put_answer")._value.get() == before + 1


def test_the_saver_without_a_loop_counts_instead_of_raising(tmp_path) -> None:
    before = SAVE_FAILURES.labels("put_request")._value.get()
    Saver(SqliteResponseStore(tmp_path / "r.db")).request(request_half())
    assert SAVE_FAILURES.labels("put_request")._value.get() == before + 1
