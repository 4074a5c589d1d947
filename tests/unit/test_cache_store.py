"""The in-process cache store (extproc.cache.store.LocalLruStore): a byte cap over keys and values,
least recently used out first, TTLs on an injected clock, every outcome counted."""

from __future__ import annotations

import inspect
import math

import pytest
from prometheus_client import REGISTRY

from extproc.cache.redis_store import RedisCacheStore
from extproc.cache.store import CacheStore, LocalLruStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lookups(outcome: str) -> float:
    return counted("ccr_cache_lookups_total", store="local", outcome=outcome)


def entry(key: str, size: int) -> tuple[str, bytes]:
    """A key and a value that take ``size`` bytes together."""
    return key, b"v" * (size - len(key))


def test_both_stores_have_the_cache_store_methods() -> None:
    for store in (LocalLruStore, RedisCacheStore):
        for name in ("get", "put", "aclose"):
            assert inspect.iscoroutinefunction(getattr(store, name)), (store, name)
            assert inspect.signature(getattr(store, name)).parameters.keys() == (
                inspect.signature(getattr(CacheStore, name)).parameters.keys()
            )


async def test_a_stored_value_is_found_until_its_ttl_passes() -> None:
    clock = Clock()
    store = LocalLruStore(1000, clock=clock)
    assert await store.put("k", b"answer", ttl_s=60)
    clock.now += 59.999
    assert await store.get("k") == b"answer"
    clock.now += 0.001
    assert await store.get("k") is None  # expired at exactly its TTL
    assert "k" not in store and store.bytes == 0 and store.expirations == 1 and store.evictions == 0


async def test_an_unknown_key_is_a_miss() -> None:
    assert await LocalLruStore(100).get("nope") is None


async def test_the_byte_cap_counts_keys_and_values_and_evicts_the_oldest_first() -> None:
    store = LocalLruStore(300)
    for key in "abc":
        assert await store.put(*entry(key, 100), ttl_s=60)
    assert store.bytes == 300 and len(store) == 3
    assert await store.put(*entry("d", 100), ttl_s=60)
    assert "a" not in store and [k in store for k in "bcd"] == [True, True, True]
    assert store.bytes == 300 and store.evictions == 1


async def test_a_lookup_makes_an_entry_the_most_recently_used() -> None:
    store = LocalLruStore(300)
    for key in "abc":
        await store.put(*entry(key, 100), ttl_s=60)
    assert await store.get("a") is not None
    await store.put(*entry("d", 100), ttl_s=60)
    assert "b" not in store and "a" in store
    await store.put(*entry("e", 100), ttl_s=60)
    assert "c" not in store and "a" in store


async def test_a_large_entry_evicts_as_many_as_it_needs_in_order() -> None:
    store = LocalLruStore(400)
    for key in "abcd":
        await store.put(*entry(key, 100), ttl_s=60)
    await store.put(*entry("big", 250), ttl_s=60)
    assert [k in store for k in ("a", "b", "c", "d", "big")] == [False, False, False, True, True]
    assert store.bytes == 350 and store.evictions == 3


async def test_replacing_a_key_frees_its_old_value_first() -> None:
    store = LocalLruStore(300)
    for key in "abc":
        await store.put(*entry(key, 100), ttl_s=60)
    assert await store.put(*entry("a", 100), ttl_s=60)  # same size: fits where the old one was
    assert store.evictions == 0 and store.bytes == 300 and len(store) == 3
    assert await store.put("b", b"x", ttl_s=60)
    assert store.bytes == 202 and await store.get("b") == b"x"


async def test_replacing_renews_the_ttl() -> None:
    clock = Clock()
    store = LocalLruStore(1000, clock=clock)
    await store.put("k", b"old", ttl_s=10)
    clock.now += 8
    await store.put("k", b"new", ttl_s=10)
    clock.now += 8
    assert await store.get("k") == b"new"


async def test_an_entry_over_the_caps_is_refused_and_evicts_nothing() -> None:
    store = LocalLruStore(300, max_entry_bytes=150)
    await store.put(*entry("a", 100), ttl_s=60)
    before = counted("ccr_cache_stores_total", store="local", outcome="too_large")
    assert not await store.put(*entry("b", 151), ttl_s=60)
    assert not await LocalLruStore(100).put(*entry("c", 101), ttl_s=60)  # over max_bytes itself
    assert counted("ccr_cache_stores_total", store="local", outcome="too_large") - before == 2
    assert "a" in store and store.evictions == 0


async def test_expired_entries_are_evicted_with_the_rest_in_lru_order() -> None:
    clock = Clock()
    store = LocalLruStore(200, clock=clock)
    await store.put(*entry("short", 100), ttl_s=1)
    await store.put(*entry("long", 100), ttl_s=100)
    clock.now += 5
    await store.put(*entry("new", 100), ttl_s=100)
    assert "short" not in store and "long" in store and store.evictions == 1


@pytest.mark.parametrize("ttl", [0, -1, math.nan])
async def test_a_ttl_that_is_not_positive_is_a_mistake(ttl: float) -> None:
    with pytest.raises(ValueError):
        await LocalLruStore(100).put("k", b"v", ttl_s=ttl)


def test_a_store_without_room_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        LocalLruStore(0)


async def test_every_outcome_is_counted() -> None:
    clock = Clock()
    store = LocalLruStore(200, clock=clock)
    hits, misses = lookups("hit"), lookups("miss")
    stored = counted("ccr_cache_stores_total", store="local", outcome="stored")
    stored_bytes = counted("ccr_cache_stored_bytes_total", store="local")
    capacity = counted("ccr_cache_evictions_total", reason="capacity")
    expired = counted("ccr_cache_evictions_total", reason="expired")
    held = counted("ccr_cache_local_bytes")
    latency = counted("ccr_cache_lookup_seconds_count", store="local")

    await store.put(*entry("a", 100), ttl_s=1)
    await store.put(*entry("b", 100), ttl_s=100)
    assert counted("ccr_cache_local_bytes") - held == 200
    await store.get("b")
    await store.get("zzz")
    clock.now += 2
    await store.get("a")  # expired
    await store.put(*entry("c", 100), ttl_s=100)
    await store.put(*entry("d", 100), ttl_s=100)  # evicts b

    assert lookups("hit") - hits == 1
    assert lookups("miss") - misses == 2
    assert counted("ccr_cache_stores_total", store="local", outcome="stored") - stored == 4
    assert counted("ccr_cache_stored_bytes_total", store="local") - stored_bytes == 4 * 99
    assert counted("ccr_cache_evictions_total", reason="capacity") - capacity == 1
    assert counted("ccr_cache_evictions_total", reason="expired") - expired == 1
    assert counted("ccr_cache_lookup_seconds_count", store="local") - latency == 3
    assert (store.evictions, store.expirations) == (1, 1)
    await store.aclose()
    assert counted("ccr_cache_local_bytes") == held and len(store) == 0
