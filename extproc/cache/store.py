"""Where cached answers live: a small async key -> bytes interface with a TTL, and two stores.

- ``LocalLruStore``: the embedded default, one per worker: an in-process LRU capped by bytes.
- ``RedisCacheStore``: shared by every worker and gateway, on a single Redis, Sentinel or Cluster
  (any client ``extproc.auth.redis_limits.connect`` or ``connect_hot`` makes).

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
from typing import Any, Protocol

from redis.exceptions import RedisClusterException, RedisError

from extproc.auth.redis_limits import UNAVAILABLE
from extproc.auth.resp_client import RespClient
from extproc.cache.metrics import EVICTIONS, LOCAL_BYTES, StoreMetrics

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "ccr:cache:"
DEFAULT_MAX_ENTRY_BYTES = 4 * 1024 * 1024  # one entry this big already costs Redis ~1 ms to move

# Everything a Redis can do instead of answering: not answering (UNAVAILABLE: down, slow, failing
# over, a slot moving), or answering with an error (OOM under maxmemory noeviction, WRONGTYPE on a
# key someone else wrote, a cluster that lost a slot). For the cache each one is just a miss.
STORE_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, RedisError, RedisClusterException)


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


def _check_ttl(ttl_s: float) -> None:
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
        _check_ttl(ttl_s)
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


class RedisCacheStore:
    """Entries as plain Redis strings: ``SET <prefix>{<key>} <value> PX <ttl ms>`` and ``GET``.
    The braces make the key its own hash tag, so on a Cluster each entry lives whole in one slot
    and no command spans two (one key per command). Eviction beyond the TTL is Redis' own
    (``maxmemory-policy allkeys-lru`` or ``volatile-lru`` on a Redis given to the cache).

    ``aclose`` closes the client: give the cache a client of its own, not the limits' (a 1 MB
    value on the limits' pipelined connection would hold up every limit check queued behind it).
    The client's timeouts are the cache's: ``connect_hot``/``connect`` make clients that give up
    in tens of milliseconds, which is what a cache lookup is worth."""

    def __init__(
        self, client: Any, prefix: str = DEFAULT_PREFIX, *, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not hold braces (they pick the hash slot)")
        self.client = client
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self._commands = _commands_for(client)
        self._metrics = StoreMetrics("redis")
        self._in_outage = False

    def redis_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}"

    async def get(self, key: str) -> bytes | None:
        metrics = self._metrics
        started = time.perf_counter()
        try:
            value = await self._commands.get(self.redis_key(key))
        except STORE_FAILURES as error:
            metrics.latency.observe(time.perf_counter() - started)
            metrics.error.inc()
            self._failed("get", error)
            return None
        metrics.latency.observe(time.perf_counter() - started)
        self._answered()
        if value is None:
            metrics.miss.inc()
            return None
        metrics.hit.inc()
        return bytes(value)

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        _check_ttl(ttl_s)
        metrics = self._metrics
        if len(value) > self.max_entry_bytes:
            metrics.too_large.inc()
            return False
        try:
            await self._commands.set(self.redis_key(key), value, max(1, round(ttl_s * 1000)))
        except STORE_FAILURES as error:
            metrics.put_error.inc()
            self._failed("put", error)
            return False
        self._answered()
        metrics.stored.inc()
        metrics.stored_bytes.inc(len(value))
        return True

    async def aclose(self) -> None:
        await self._commands.aclose()

    def _failed(self, op: str, error: BaseException) -> None:
        if not self._in_outage:
            self._in_outage = True
            log.warning("redis unavailable for the response cache (%s: %r); cache bypassed until it answers", op, error)

    def _answered(self) -> None:
        if self._in_outage:
            self._in_outage = False
            log.warning("redis answering the response cache again")


# --- the two client kinds, behind the three commands the cache uses ------------------------------


class _Commands(Protocol):
    async def get(self, key: str) -> Any: ...
    async def set(self, key: str, value: bytes, ttl_ms: int) -> Any: ...
    async def aclose(self) -> None: ...


class _RespCommands:
    """extproc.auth.resp_client.RespClient: commands as they go on the wire."""

    __slots__ = ("client",)

    def __init__(self, client: RespClient) -> None:
        self.client = client

    async def get(self, key: str) -> Any:
        return await self.client.send("GET", key)

    async def set(self, key: str, value: bytes, ttl_ms: int) -> Any:
        return await self.client.send("SET", key, value, "PX", str(ttl_ms))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.client.aclose()


class _RedisPyCommands:
    """redis-py's asyncio Redis, its Sentinel master or RedisCluster (which routes by key slot)."""

    __slots__ = ("client",)

    def __init__(self, client: Any) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("the cache stores bytes: a client with decode_responses=True cannot read them")
        self.client = client

    async def get(self, key: str) -> Any:
        return await self.client.get(key)

    async def set(self, key: str, value: bytes, ttl_ms: int) -> Any:
        return await self.client.set(key, value, px=ttl_ms)

    async def aclose(self) -> None:
        await self.client.aclose()


def _commands_for(client: Any) -> _Commands:
    return _RespCommands(client) if isinstance(client, RespClient) else _RedisPyCommands(client)
