"""The response cache's Redis store (extproc.cache.redis_store.RedisCacheStore) against real Redis, with
both client kinds the gateway makes (``connect_hot``'s RespClient, ``connect``'s redis-py):
entries and their TTLs, the size cap, and every failure a miss or a False, counted and logged once
per outage, never raised. The machine's Redis on 6379 (skipped when absent; every test its own key
prefix, deleted after it), a fault-injecting proxy in front of it, and a Cluster of three masters
started on free ports (tests/integration/redis_procs.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from prometheus_client import REGISTRY
from redis.crc import key_slot

from extproc.auth.redis_limits import connect, connect_hot
from extproc.cache.entry import CachedAnswer, decode, encode
from extproc.cache.redis_store import RedisCacheStore
from tests.integration import redis_procs
from tests.integration.redis_procs import ClusterGroup
from tests.tcp_proxy import TcpProxy

HOST, PORT = "127.0.0.1", 6379
URL = f"redis://{HOST}:{PORT}/0"
LOGGER = "extproc.cache.redis_store"
KINDS = ["resp", "redis-py"]


def make_client(kind: str, url: str, timeout_s: float = 1.0):  # a busy test machine is not an outage
    return connect_hot(url, timeout_s=timeout_s) if kind == "resp" else connect(url, timeout_s=timeout_s)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"store": "redis", **labels}) or 0.0


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "unavailable" in r.getMessage()]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def admin() -> Iterator[redis.Redis]:
    client = redis.Redis(HOST, PORT, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis not reachable at {URL}: {error}")
    yield client
    client.close()


@pytest.fixture
def prefix(admin: redis.Redis) -> Iterator[str]:
    prefix = f"ccrtest:cache:{uuid.uuid4().hex[:10]}:"
    yield prefix
    keys = list(admin.scan_iter(match=prefix + "*", count=1000))
    if keys:
        admin.delete(*keys)


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[RedisCacheStore]:
    cache = RedisCacheStore(make_client(request.param, URL), prefix=prefix)
    yield cache
    await cache.aclose()


def answer(body: bytes) -> CachedAnswer:
    return CachedAnswer("anthropic", 200, body, 1_756_315_657.0, "anthropic", "claude-sonnet-4-5", {"output_tokens": 9})


# --- entries ---------------------------------------------------------------------------------------


async def test_an_entry_is_stored_under_its_hash_tagged_key_with_its_ttl(
    store: RedisCacheStore, admin: redis.Redis, prefix: str
) -> None:
    raw = encode(answer(b'{"id":"msg_1","content":[{"type":"text","text":"caf\xc3\xa9"}]}'))
    assert await store.put("4f2a9c", raw, ttl_s=60)
    assert await store.get("4f2a9c") == raw
    assert decode(await store.get("4f2a9c")) == answer(
        b'{"id":"msg_1","content":[{"type":"text","text":"caf\xc3\xa9"}]}'
    )
    assert admin.get(f"{prefix}{{4f2a9c}}") == raw
    assert 59_000 < admin.pttl(f"{prefix}{{4f2a9c}}") <= 60_000


async def test_a_missing_key_is_a_miss_and_counted(store: RedisCacheStore) -> None:
    before = counted("ccr_cache_lookups_total", outcome="miss")
    assert await store.get("never-stored") is None
    assert counted("ccr_cache_lookups_total", outcome="miss") - before == 1


async def test_an_entry_expires_after_its_ttl(store: RedisCacheStore) -> None:
    assert await store.put("short", b"value", ttl_s=0.05)
    assert await store.get("short") == b"value"
    await asyncio.sleep(0.15)
    assert await store.get("short") is None


async def test_put_replaces_the_value_and_its_ttl(store: RedisCacheStore, admin: redis.Redis, prefix: str) -> None:
    await store.put("k", b"old", ttl_s=1)
    await store.put("k", b"new", ttl_s=120)
    assert await store.get("k") == b"new"
    assert admin.pttl(f"{prefix}{{k}}") > 60_000


async def test_a_large_compressed_entry_and_an_incompressible_one_round_trip(store: RedisCacheStore) -> None:
    text = b'{"content":"' + b"The quick brown fox. " * 50_000 + b'"}'  # ~1 MB of JSON, compresses well
    large = encode(answer(text))
    assert len(large) < len(text) // 20
    noise = os.urandom(2 * 1024 * 1024)  # every byte value, 2 MiB
    assert await store.put("large", large, ttl_s=60) and await store.put("noise", noise, ttl_s=60)
    assert decode(await store.get("large")) == answer(text)
    assert await store.get("noise") == noise


async def test_an_entry_over_the_cap_is_refused_without_a_round_trip(prefix: str, admin: redis.Redis) -> None:
    store = RedisCacheStore(make_client("resp", URL), prefix=prefix, max_entry_bytes=1000)
    before = counted("ccr_cache_stores_total", outcome="too_large")
    stored_bytes = counted("ccr_cache_stored_bytes_total")
    try:
        assert not await store.put("big", b"x" * 1001, ttl_s=60)
        assert await store.put("fits", b"x" * 1000, ttl_s=60)
    finally:
        await store.aclose()
    assert counted("ccr_cache_stores_total", outcome="too_large") - before == 1
    assert counted("ccr_cache_stored_bytes_total") - stored_bytes == 1000
    assert not admin.exists(f"{prefix}{{big}}") and admin.exists(f"{prefix}{{fits}}")


async def test_many_concurrent_lookups_get_their_own_values(store: RedisCacheStore) -> None:
    await asyncio.gather(*(store.put(f"k{i}", str(i).encode() * 100, ttl_s=60) for i in range(100)))
    values = await asyncio.gather(*(store.get(f"k{i}") for i in range(100)))
    assert values == [str(i).encode() * 100 for i in range(100)]


def test_a_client_that_decodes_responses_cannot_hold_entries() -> None:
    import redis.asyncio as aioredis

    with pytest.raises(ValueError, match="decode_responses"):
        RedisCacheStore(aioredis.Redis(host=HOST, port=PORT, decode_responses=True))


def test_braces_in_the_prefix_are_refused() -> None:
    with pytest.raises(ValueError):
        RedisCacheStore(connect_hot(URL), prefix="ccr:{cache}:")


# --- Redis down: misses, never errors ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_redis_that_is_not_there_is_a_quick_miss_counted_and_logged_once(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisCacheStore(make_client(kind, f"redis://{HOST}:{closed_port()}/0", timeout_s=0.05))
    lookup_errors = counted("ccr_cache_lookups_total", outcome="error")
    put_errors = counted("ccr_cache_stores_total", outcome="error")
    loop = asyncio.get_running_loop()
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            started = loop.time()
            for _ in range(3):
                assert await store.get("k") is None
                assert await store.put("k", b"v", ttl_s=60) is False
            elapsed = loop.time() - started
    finally:
        await store.aclose()
    assert elapsed < 1.0, elapsed
    assert counted("ccr_cache_lookups_total", outcome="error") - lookup_errors == 3
    assert counted("ccr_cache_stores_total", outcome="error") - put_errors == 3
    assert len(outage_lines(caplog)) == 1, outage_lines(caplog)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_redis_cut_mid_use_is_a_miss_and_the_cache_comes_back_with_it(
    kind: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpProxy(HOST, PORT) as proxy:
        store = RedisCacheStore(make_client(kind, f"redis://{HOST}:{proxy.port}/0", timeout_s=0.2), prefix=prefix)
        errors = counted("ccr_cache_lookups_total", outcome="error")
        try:
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                assert await store.put("k", b"before", ttl_s=60)
                assert await store.get("k") == b"before"
                proxy.cut()  # the open connection is reset, new ones are refused
                results = [await store.get("k") for _ in range(5)]
                stored = await store.put("k2", b"during", ttl_s=60)
                assert results == [None] * 5 and stored is False
                proxy.cut(blackhole=True)  # now a Redis that accepts and never answers: timeouts
                started = asyncio.get_running_loop().time()
                assert await store.get("k") is None
                assert asyncio.get_running_loop().time() - started < 1.0
                proxy.restore()
                assert await store.get("k") == b"before"  # the entry outlived the outage
                assert await store.put("k2", b"after", ttl_s=60)
        finally:
            await store.aclose()
    assert counted("ccr_cache_lookups_total", outcome="error") - errors == 6
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(outage_lines(caplog)) == 1, messages
    assert messages[-1] == "redis answering the response cache again"


# --- Cluster ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterGroup]:
    if redis_procs.REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with redis_procs.redis_cluster() as group:
        yield group


async def test_entries_spread_over_the_cluster_masters_and_read_back(cluster: ClusterGroup) -> None:
    store = RedisCacheStore(connect(cluster.url, timeout_s=1.0), prefix="ccrtest:cache:")
    keys = [uuid.uuid4().hex for _ in range(40)]
    try:
        assert all(await asyncio.gather(*(store.put(key, key.encode() * 10, ttl_s=60) for key in keys)))
        assert await asyncio.gather(*(store.get(key) for key in keys)) == [key.encode() * 10 for key in keys]
    finally:
        await store.aclose()
    owners = {}
    for key in keys:
        name = store.redis_key(key)
        owner = cluster.owner(key_slot(name.encode()))
        assert owner.admin("GET", name) == key * 10  # stored whole on the master owning its slot
        owners[key] = owner.port
    assert len(set(owners.values())) == len(cluster.nodes) == 3


async def test_an_entry_whose_slot_moves_is_still_found_then_and_after(cluster: ClusterGroup) -> None:
    store = RedisCacheStore(connect(cluster.url, timeout_s=1.0), prefix="ccrtest:cache:")
    key = uuid.uuid4().hex
    slot = key_slot(store.redis_key(key).encode())
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)
    try:
        assert await store.put(key, b"entry", ttl_s=60)
        cluster.begin_migration(slot, source, target)
        assert cluster.move_keys(slot, source, target) == 1
        assert await store.get(key) == b"entry"  # the source answers ASK: followed
        assert await store.put(key, b"rewritten", ttl_s=60)
        cluster.end_migration(slot, target)
        assert await store.get(key) == b"rewritten"  # MOVED: followed, the slot map refreshed
    finally:
        await store.aclose()
    assert cluster.owner(slot) is target


async def test_a_burst_of_commands_beyond_redis_pys_default_pool_is_not_an_outage(prefix: str) -> None:
    """redis-py fails the 101st command in flight at once with its default pool: a burst of
    requests must wait for Redis, not read as Redis being down."""
    from extproc.auth.redis_limits import connect

    store = RedisCacheStore(connect("redis://127.0.0.1:6379/0", timeout_s=2.0), prefix)
    try:
        before = counted("ccr_cache_lookups_total", store="redis", outcome="error")
        assert await asyncio.gather(*(store.get(f"burst-{i}") for i in range(300))) == [None] * 300
        assert counted("ccr_cache_lookups_total", store="redis", outcome="error") == before
    finally:
        await store.aclose()
