"""In-flight deduplication across workers and gateways, through Redis (extproc.cache.inflight has
the why and the in-process half).

A flight is claimed with ``SET <prefix>{<key>}:flight <id> NX PX <wait>`` (the entry's hash tag:
one slot on a Cluster) and ended with a script that deletes the claim if it is still this flight's
and publishes the key on ``<prefix>flights``; each worker's subscriber wakes its followers of that
key. A follower also checks the claim every ``POLL_S``, so a message lost to a reconnect or a
failover costs a moment, never the whole wait. Redis down: every request leads (the cache is
bypassed anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from extproc.auth.resp_client import RespClient
from extproc.cache.redis_store import STORE_FAILURES
from extproc.cache.store import DEFAULT_PREFIX

log = logging.getLogger("ccr.cache")

POLL_S = 0.25  # a follower's check of the claim between wake-ups (a lost message's cost)
CHANNEL = "flights"
_RESUBSCRIBE_S = 1.0

# KEYS[1] the claim, ARGV[1] the flight id, ARGV[2] the channel, ARGV[3] the cache key. The claim
# is deleted only if it is still this flight's (a flight that outlived its wait may have been
# claimed again since); followers are woken either way.
_END_FLIGHT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class RedisFlights:
    """Flights shared through Redis. ``client``: the cache's (a RespClient or redis-py client);
    ``subscribe``: makes a redis-py PubSub for the wake-ups (a connection of its own, whose reads
    may wait: not the hot path's client, which gives up in tens of milliseconds)."""

    def __init__(self, client: Any, subscribe: Callable[[], Any], prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = prefix + CHANNEL
        self._subscribe = subscribe
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._in_outage = False

    def claim_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:flight"

    async def claim(self, key: str, flight_id: str, wait_s: float) -> bool:
        self._listen()
        try:
            answer = await self._command("SET", self.claim_key(key), flight_id, "NX", "PX", str(_ms(wait_s)))
        except STORE_FAILURES as error:
            self._failed(error)
            return True
        self._answered()
        return answer is not None

    async def wait(self, key: str, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        woken: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(key, set()).add(woken)
        try:
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(woken), min(POLL_S, left))
                    return
                if not await self._claimed(key):
                    return
        finally:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(woken)
                if not waiting:
                    del self._waiting[key]

    async def end(self, key: str, flight_id: str) -> None:
        try:
            await self._command("EVAL", _END_FLIGHT, "1", self.claim_key(key), flight_id, self.channel, key)
        except STORE_FAILURES as error:
            self._failed(error)  # the claim expires on its own; followers see it gone when they poll
        else:
            self._answered()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _claimed(self, key: str) -> bool:
        """Whether the flight is still on (a store that does not answer: it is over for us)."""
        try:
            return bool(await self._command("EXISTS", self.claim_key(key)))
        except STORE_FAILURES as error:
            self._failed(error)
            return False

    def _wake(self, key: str) -> None:
        for woken in self._waiting.get(key, ()):
            if not woken.done():
                woken.set_result(None)

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._subscription())

    async def _subscription(self) -> None:
        """Wake-ups for this worker's followers, from every flight's end; reconnects forever."""
        while True:
            pubsub = self._subscribe()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure of the subscription: followers poll meanwhile
                log.debug("cache flights: subscription lost (%r); again in %ss", error, _RESUBSCRIBE_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_RESUBSCRIBE_S)

    async def _command(self, *args: str) -> Any:
        if isinstance(self.client, RespClient):
            return await self.client.send(*args)
        return await self.client.execute_command(*args)

    def _failed(self, error: BaseException) -> None:
        if not self._in_outage:
            self._in_outage = True
            log.warning("redis unavailable for in-flight deduplication (%r): identical requests go upstream", error)

    def _answered(self) -> None:
        if self._in_outage:
            self._in_outage = False
            log.warning("redis answering in-flight deduplication again")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
