"""Where cached answers live: a small async key -> bytes interface with a TTL, and the embedded
store.

- ``LocalLruStore``: the embedded default, one per worker: an in-process LRU capped by bytes.
- ``RedisCacheStore`` (extproc.cache.redis_store): shared by every worker and gateway, on a single
  Redis, Sentinel or Cluster; imported only where a Redis is named (redis-py is ~9 MB of a worker).

Stores hold opaque bytes (``extproc.cache.entry.encode``); what a key means is the caller's
business. The cache only ever saves work: a store that fails answers a miss (``get``) or False
(``put``), counts it and logs the first failure of an outage, and never raises for it. Redis down
must cost provider calls, never a client request.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Protocol

from extproc.cache.metrics import EVICTIONS, LOCAL_BYTES, StoreMetrics

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "ccr:cache:"
DEFAULT_MAX_ENTRY_BYTES = 4 * 1024 * 1024  # one entry this big already costs Redis ~1 ms to move


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None: never stored, expired, evicted, or the store
        failed (counted and logged, never raised)."""
        ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Store ``value`` for ``ttl_s`` seconds (> 0), replacing any value under ``key``; False
        when it was not stored (too large, or the store failed). Raises ValueError for ttl_s <= 0."""
        ...

    async def aclose(self) -> None: ...


def check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:  # also NaN
        raise ValueError(f"a cache entry needs a positive TTL, not {ttl_s!r}")


class LocalLruStore:
    """In-process, least recently used first out, capped at ``max_bytes`` (keys and values; the
    Python objects around them cost ~150 bytes more per entry, not counted). An entry past its TTL
    is a miss and is dropped when looked up; until then it waits its turn in the LRU order like
    any other entry nobody reads. One per worker; asyncio-only (no locks: nothing here awaits)."""

    def __init__(
        self,
        max_bytes: int,
        *,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.clock = clock
        self.bytes = 0
        self.evictions = 0  # entries dropped to make room
        self.expirations = 0  # entries found past their TTL
        self._entries: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()
        self._metrics = StoreMetrics("local")
        self._evicted = EVICTIONS.labels("capacity")
        self._expired = EVICTIONS.labels("expired")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:  # for tests and debugging: no LRU or TTL effect
        return key in self._entries

    async def get(self, key: str) -> bytes | None:
        started = time.perf_counter()
        value = self._lookup(key)
        self._metrics.latency.observe(time.perf_counter() - started)
        return value

    def peek(self, key: str) -> bytes | None:
        """``get`` without awaiting (nothing here waits): a hit answered in the same call."""
        return self._lookup(key)

    def _lookup(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            self._metrics.miss.inc()
            return None
        value, expires_at = found
        if expires_at <= self.clock():
            self._drop(key)
            self.expirations += 1
            self._expired.inc()
            self._metrics.miss.inc()
            return None
        self._entries.move_to_end(key)
        self._metrics.hit.inc()
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        size = len(key) + len(value)
        if size > self.max_entry_bytes:
            self._metrics.too_large.inc()
            return False
        self._drop(key)
        while self.bytes + size > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
            self._evicted.inc()
        self._entries[key] = (bytes(value), self.clock() + ttl_s)
        self._grow(size)
        self._metrics.stored.inc()
        self._metrics.stored_bytes.inc(len(value))
        return True

    async def aclose(self) -> None:
        self._entries.clear()
        self._grow(-self.bytes)

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._grow(-(len(key) + len(found[0])))

    def _grow(self, delta: int) -> None:
        self.bytes += delta
        LOCAL_BYTES.inc(delta)  # the gauge adds up every live store of the process
