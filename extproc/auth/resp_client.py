"""A lean client for the limits' hot path on a single Redis: one pipelined connection, hiredis' C
parser, no connection pool.

redis-py's asyncio client costs ~150-200 us of Python CPU per command (pool checkout, command
packing, its reader), more than the whole limit check is worth (`ccr-gateway bench --paths
hop,hop-auth-redis`). A limit check is one EVALSHA whose reply is one short string, so this client
does only that well: commands are written as they come, each waits on a future, replies come back in
order (Redis answers a connection's commands in order) and resolve the futures first in, first out.
Concurrent requests share the connection; nothing waits for a free one.

Failures are redis-py's exceptions, so the failure policy (redis_limits.UNAVAILABLE) treats both
clients alike: a connect or a reply slower than ``timeout_s`` is a ``TimeoutError`` and drops the
connection (later replies could no longer be matched to their commands), a lost connection is a
``ConnectionError`` for every command in flight; the next command connects again. Error replies
are ``ResponseError`` (``NoScriptError`` for NOSCRIPT). Sentinel and Cluster keep redis-py
(redis_limits.connect).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class RespClient:
    """What RedisLimiter asks of a client: ``evalsha``, ``script_load``, ``hmget``, ``send`` (a
    command written now, its reply awaited later: a pipeline without a pipeline object), ``aclose``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 0.05,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self._auth = (username, password)
        self.timeout_s = timeout_s
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Future[_RespProtocol] | None = None

    def __repr__(self) -> str:  # never the password
        return f"RespClient({self.host}:{self.port}/{self.db})"

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: str) -> Any:
        return await self.send("EVALSHA", sha, str(numkeys), *keys_and_args)

    async def script_load(self, source: str) -> Any:
        return await self.send("SCRIPT", "LOAD", source)

    async def hmget(self, key: str, fields: list[str]) -> Any:
        return await self.send("HMGET", key, *fields)

    async def execute_command(self, *args: str) -> Any:
        return await self.send(*args)

    async def send(self, *args: str) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.call(_encode(args))

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("client closed"))
            self._protocol = None

    async def _connect(self) -> _RespProtocol:
        """One connection for everyone: callers arriving while it is made wait for the same one."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _RespProtocol(self.timeout_s), self.host, self.port), self.timeout_s
            )
        except TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to redis at {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis at {self.host}:{self.port}: {exc.strerror}") from exc
        username, password = self._auth
        if password is not None:
            await protocol.call(_encode(("AUTH", username, password) if username else ("AUTH", password)))
        if self.db:
            await protocol.call(_encode(("SELECT", str(self.db))))
        self._protocol = protocol
        return protocol


class _RespProtocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.outbox: list[bytes] = []  # commands of this turn of the loop, written together
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(RedisConnectionError(f"connection to redis lost: {exc or 'closed by the server'}"))

    def call(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise RedisConnectionError("connection to redis closed")
        future = self._loop.create_future()
        self.waiting.append((future, self._loop.time() + self.timeout_s))
        # Coalesced: the commands of every request decided in this turn of the loop go out in one
        # write (one system call, one wake-up of Redis), not one each.
        self.outbox.append(command)
        if len(self.outbox) == 1:
            self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self.timeout_s, self._check_deadline)
        return future

    def _flush(self) -> None:
        if self.outbox and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.close(RedisConnectionError("redis sent a reply nobody asked for"))
                return
            future, _ = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, ResponseError):
                message = str(reply)
                future.set_exception(NoScriptError(message) if message.startswith("NOSCRIPT") else reply)
            else:
                future.set_result(reply)

    def _check_deadline(self) -> None:
        """One timer for the connection, not one per command: the oldest command's deadline."""
        self._watchdog = None
        if self.closed or not self.waiting:
            return
        now = self._loop.time()
        deadline = self.waiting[0][1]
        if deadline <= now:
            self.close(RedisTimeoutError(f"redis did not answer within {self.timeout_s * 1000:.0f} ms"))
            return
        self._watchdog = self._loop.call_later(deadline - now, self._check_deadline)

    def close(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


def _encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
