"""Where the MCP gateway service keeps its state: client sessions and per-key tool-call counts.

Two implementations of each, as every backend of the gateway (DESIGN.md, "Embedded defaults vs
real backends"): in this process (the default; `up` on a laptop) and in Redis (``--redis URL``),
so that a client session survives landing on another replica and a key's call limit holds across
replicas.

Sessions. The core (``extproc.mcp.session``) owns the record and its bytes (``to_bytes`` /
``from_bytes``, versioned JSON); this module only keeps them. The Redis store writes the bytes
with a TTL a little past the session's idle expiry, so Redis forgets what the core would refuse.
It also keeps the objects it read or wrote in this process: while a request is in flight on this
replica, every request of that session here sees the same object (its in-flight maps: progress,
cancellation), and a read costs one GET and no decode while the stored bytes are the ones this
replica last saw. A session changed by another replica has other bytes and is decoded afresh.
Two replicas writing one session at the same moment: the last write wins (docs/mcp.md, "Still to
build" names the compare-and-set this leaves out); a client drives a session from one place.

Call counts. A fixed one-minute window per (tenant, key): ``INCR`` of the window's key, expiring
with it. The window is the wall-clock minute, so replicas agree on it without talking.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from extproc.mcp.session import Session, SessionDecodeError

log = logging.getLogger("ccr.mcp.store")

DEFAULT_PREFIX = "ccr:mcp:"
# Redis keeps a session this long past its idle expiry: the core's own check decides, Redis only
# cleans up (a replica with a slightly slow clock must not find the record already gone).
TTL_MARGIN_S = 60
MAX_LOCAL_SESSIONS = 10_000
WINDOW_S = 60


class SessionStore(Protocol):
    async def get(self, session_id: str) -> Session | None:
        """The session, or None when unknown, expired or unreadable (the core answers 404)."""
        ...

    async def put(self, session: Session) -> None: ...

    async def delete(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


class CallCounter(Protocol):
    async def hit(self, tenant: str, key_id: str, now: float) -> int:
        """Count one tool call in the current minute; the count so far, this one included."""
        ...

    async def close(self) -> None: ...


class _Bounded(OrderedDict[str, Session]):
    """Most recently used last; the oldest dropped past ``limit`` (a bound, not a cache policy:
    expired sessions are dropped on read)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def keep(self, session: Session) -> None:
        self[session.id] = session
        self.move_to_end(session.id)
        while len(self) > self.limit:
            self.popitem(last=False)


class MemorySessionStore:
    """Sessions in this process: lost on restart, not shared with other replicas."""

    def __init__(self, limit: int = MAX_LOCAL_SESSIONS) -> None:
        self._sessions = _Bounded(limit)

    async def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expired(time.time()):
            del self._sessions[session_id]
            return None
        return session

    async def put(self, session: Session) -> None:
        self._sessions.keep(session)

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def close(self) -> None:
        self._sessions.clear()


class RedisSessionStore:
    """Sessions in Redis (``<prefix>session:<id>``), shared by every replica (module docstring)."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX, limit: int = MAX_LOCAL_SESSIONS) -> None:
        self._redis = client
        self._prefix = prefix
        self._local = _Bounded(limit)
        self._seen: dict[str, bytes] = {}  # the bytes each local object matches

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    async def get(self, session_id: str) -> Session | None:
        data = await self._redis.get(self._key(session_id))
        if data is None:
            self._forget(session_id)
            return None
        local = self._local.get(session_id)
        if local is not None and self._seen.get(session_id) == data:
            return local
        try:
            session = Session.from_bytes(data)
        except SessionDecodeError as exc:
            log.warning("MCP session %s in Redis is unreadable, treated as unknown: %s", session_id, exc)
            return None
        self._remember(session, data)
        return session

    async def put(self, session: Session) -> None:
        data = session.to_bytes()
        ttl = max(1, int(session.idle_ttl_s) + TTL_MARGIN_S)
        await self._redis.set(self._key(session.id), data, ex=ttl)
        self._remember(session, data)

    async def delete(self, session_id: str) -> None:
        self._forget(session_id)
        await self._redis.delete(self._key(session_id))

    async def close(self) -> None:
        self._local.clear()
        self._seen.clear()

    def _remember(self, session: Session, data: bytes) -> None:
        self._local.keep(session)
        self._seen[session.id] = data
        if len(self._seen) > len(self._local):  # the bound dropped some: drop their bytes too
            for stale in [k for k in self._seen if k not in self._local]:
                del self._seen[stale]

    def _forget(self, session_id: str) -> None:
        self._local.pop(session_id, None)
        self._seen.pop(session_id, None)


def window(now: float) -> int:
    return int(now // WINDOW_S)


class MemoryCallCounter:
    """Per-process counts: with several replicas, each counts its own calls."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}  # (tenant, key) -> (window, count)

    async def hit(self, tenant: str, key_id: str, now: float) -> int:
        current = window(now)
        seen, count = self._counts.get((tenant, key_id), (current, 0))
        count = count + 1 if seen == current else 1
        self._counts[(tenant, key_id)] = (current, count)
        if len(self._counts) > 100_000:  # old windows of keys that stopped calling
            self._counts = {k: v for k, v in self._counts.items() if v[0] == current}
        return count

    async def close(self) -> None:
        self._counts.clear()


class RedisCallCounter:
    """Counts in Redis, shared by every replica: ``<prefix>calls:<tenant>:<key>:<window>``."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix

    async def hit(self, tenant: str, key_id: str, now: float) -> int:
        key = f"{self._prefix}calls:{tenant}:{key_id}:{window(now)}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2 * WINDOW_S)
            count, _ = await pipe.execute()
        return int(count)

    async def close(self) -> None:
        pass


def open_redis(url: str) -> aioredis.Redis:
    """A client with timeouts: redis-py's default waits forever, and a request waits on it."""
    return aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


__all__ = [
    "CallCounter",
    "MemoryCallCounter",
    "MemorySessionStore",
    "RedisCallCounter",
    "RedisError",
    "RedisSessionStore",
    "SessionStore",
    "open_redis",
    "window",
]
