"""extproc.auth.key_store on a real PostgreSQL, and the key cache over it: NOTIFY reaches a running
cache within a second; the cache keeps its keys while the database is unreachable and catches up
when it is back. Runs in a throwaway database ccr_keys_test_<random> (created in ``postgres``,
dropped after); skipped when PostgreSQL is not there (CCR_TEST_POSTGRES overrides the server)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import asyncpg
import pytest

from extproc.auth.key_cache import STORE_UP, KeyCache
from extproc.auth.key_store import KeyNotFound, KeyStoreUnavailable
from extproc.auth.key_store_pg import PostgresKeyStore
from extproc.auth.keys import new_key, parse_presented
from tests.tcp_proxy import TcpProxy

SERVER = os.environ.get("CCR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(f"{SERVER}/postgres", timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as thread:  # not on the loop the async tests share
        thread.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def keys_dsn() -> Iterator[str]:
    name = f"ccr_keys_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f"CREATE DATABASE {name}")
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {SERVER}: {exc}")
    yield f"{SERVER}/{name}"
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def store(keys_dsn: str):
    store = PostgresKeyStore(keys_dsn)
    yield store
    await store.close()


async def add(store: PostgresKeyStore, tenant: str = "acme", **limits: object):
    presented, record = new_key(tenant, "ci", time.time(), **limits)
    return presented, await store.create(record)


async def eventually(condition, within: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_operations_and_versions_on_postgres(store: PostgresKeyStore, keys_dsn: str) -> None:
    presented, record = await add(store, "pg-ops", models=("m1",), rpm=9, budget_usd=1.5, budget_period="month")
    assert await store.get(record.key_id) == record
    assert [r.key_id for r in await store.list("pg-ops")] == [record.key_id]
    new, rotated = await store.rotate(record.key_id, 60)
    assert rotated.verify(parse_presented(presented)[1], time.time())
    assert rotated.verify(parse_presented(new)[1], time.time())
    edited = await store.update_limits(record.key_id, {"tpm": 100})
    revoked = await store.revoke(record.key_id)
    assert record.version < rotated.version < edited.version < revoked.version
    assert await store.get(record.key_id) == revoked and revoked.key.tpm == 100
    assert [r.version for r in await store.changes_since(edited.version)] == [revoked.version]
    with pytest.raises(KeyNotFound):
        await store.revoke("zzzzzzzz")
    connection = await asyncpg.connect(keys_dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM auth_schema_migrations") == 2
    finally:
        await connection.close()


async def test_a_password_in_the_dsn_is_never_in_errors(keys_dsn: str) -> None:
    parts = urlsplit(keys_dsn)
    dsn = f"postgresql://nobody:hunter2@{parts.hostname}:1{parts.path}"  # port 1: nothing listens
    store = PostgresKeyStore(dsn)
    with pytest.raises(KeyStoreUnavailable) as raised:
        await store.list()
    assert "hunter2" not in str(raised.value) and "***" in str(raised.value)
    os.environ["CCR_TEST_KEYS_PW"] = "hunter3"
    try:
        with pytest.raises(KeyStoreUnavailable) as raised:
            await PostgresKeyStore(f"postgresql://nobody:${{CCR_TEST_KEYS_PW}}@{parts.hostname}:1/x").list()
        assert "hunter3" not in str(raised.value)
    finally:
        del os.environ["CCR_TEST_KEYS_PW"]


async def test_notify_reaches_a_running_cache_within_a_second(store: PostgresKeyStore, keys_dsn: str) -> None:
    presented, record = await add(store, "pg-notify")
    # A poll interval far beyond the deadline: only the NOTIFY can make it in time.
    cache = KeyCache(PostgresKeyStore(keys_dsn), poll_interval=30)
    assert await cache.start()
    admin = PostgresKeyStore(keys_dsn)
    try:
        await eventually(lambda: cache._listening is not None, within=5)
        await asyncio.sleep(0.1)  # the first look after LISTEN
        assert cache.lookup(presented) == record.key
        delays = []
        await admin.update_limits(record.key_id, {"rpm": 77})
        delays.append(await eventually(lambda: cache.lookup(presented).rpm == 77, within=1))
        new, _ = await admin.rotate(record.key_id, 0)
        delays.append(await eventually(lambda: cache.lookup(presented) is None, within=1))
        await admin.revoke(record.key_id)
        delays.append(await eventually(lambda: cache.lookup(new) is None, within=1))
        late, _ = await add(admin, "pg-notify")
        delays.append(await eventually(lambda: cache.lookup(late) is not None, within=1))
        assert max(delays) < 1
    finally:
        await cache.close()
        await cache._store.close()
        await admin.close()


async def test_the_cache_keeps_its_keys_while_postgres_is_unreachable_and_catches_up(
    store: PostgresKeyStore, keys_dsn: str
) -> None:
    presented, record = await add(store, "pg-outage")
    parts = urlsplit(keys_dsn)
    with TcpProxy(parts.hostname, parts.port or 5432) as proxy:
        through_proxy = f"{parts.scheme}://{parts.username}@{proxy.address}{parts.path}"
        cache_store = PostgresKeyStore(through_proxy)
        cache = KeyCache(cache_store, poll_interval=0.2)
        assert await cache.start()
        try:
            await eventually(lambda: cache._listening is not None, within=5)
            assert cache.lookup(presented) == record.key

            proxy.cut()
            await eventually(lambda: STORE_UP._value.get() == 0, within=3)
            await store.revoke(record.key_id)  # while the cache cannot see it
            await asyncio.sleep(0.5)
            assert cache.lookup(presented) == record.key  # the last known state still serves

            proxy.restore()
            await eventually(lambda: cache.lookup(presented) is None, within=5)
            assert STORE_UP._value.get() == 1
            # LISTENing again: a change reaches it within a second even with a long poll.
            cache.poll_interval = 30
            await eventually(lambda: cache._listening is not None and cache._listening.alive, within=5)
            await asyncio.sleep(0.3)  # the poll interval in flight (0.2 s) runs out
            late, _ = await add(store, "pg-outage")
            await eventually(lambda: cache.lookup(late) is not None, within=1)
        finally:
            await cache.close()
            await cache_store.close()


async def test_a_key_store_call_is_a_postgresql_span_of_the_request_or_of_its_own(store: PostgresKeyStore) -> None:
    from ccr.v1 import tracing

    exported: list[list[tracing.Span]] = []
    tracing.configure(exported.append, "test", sample=1.0)
    try:
        _, record = await add(store, "pg-traced")
        opened = tracing.begin("ccr.decide", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        await store.get(record.key_id)
        tracing.end(opened)
    finally:
        tracing.configure(None)
    alone, request = exported  # create(): a trace of its own; get(): inside the request's
    assert [(s.name, s.attributes["db.operation.name"]) for s in alone] == [("ccr.key_store", "create")]
    spans = {span.name: span for span in request}
    assert spans["ccr.key_store"].parent_id == spans["ccr.decide"].span_id
    assert spans["ccr.key_store"].attributes == {"db.system": "postgresql", "db.operation.name": "get"}
