"""The response cache in Redis: shared by every worker and gateway, on a single Redis, Sentinel or
Cluster (any client ``extproc.auth.redis_limits.connect`` or ``connect_hot`` makes). The same
``CacheStore`` interface as the embedded store (extproc.cache.store), the same promise: a Redis
that fails is a miss or a put not made, counted and logged once per outage, never an error.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from redis.exceptions import RedisClusterException, RedisError

from extproc.auth.redis_limits import UNAVAILABLE
from extproc.auth.resp_client import RespClient
from extproc.cache.metrics import StoreMetrics
from extproc.cache.store import DEFAULT_MAX_ENTRY_BYTES, DEFAULT_PREFIX, check_ttl

log = logging.getLogger(__name__)

# Everything a Redis can do instead of answering: not answering (UNAVAILABLE: down, slow, failing
# over, a slot moving), or answering with an error (OOM under maxmemory noeviction, WRONGTYPE on a
# key someone else wrote, a cluster that lost a slot). For the cache each one is just a miss.
STORE_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, RedisError, RedisClusterException)


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
        check_ttl(ttl_s)
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
