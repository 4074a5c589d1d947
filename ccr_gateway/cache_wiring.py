"""The response cache's store, from the policy's top-level ``cache:`` to the ext_proc workers.

`up` tells each worker where entries are kept: the Redis URL in the environment (it may hold a
password: never on a command line), else the size of the worker's in-process store
(``--cache-memory``). Whether and how requests are cached travels in the policy, so it switches
without a restart; the store is read when the workers start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ccr_gateway.auth_wiring import connection_url
from control_plane.policy.cache import DEFAULT_MEMORY_BYTES, CacheSpec
from control_plane.policy.cache import DEFAULT_REDIS_TIMEOUT_S as DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from extproc.cache.inflight import Flights
    from extproc.cache.store import CacheStore

CACHE_REDIS_ENV = "CCR_CACHE_REDIS"
SUBSCRIBER_TIMEOUT_S = 2.0  # the flights' subscription: it blocks up to 1 s reading a message
log = logging.getLogger("ccr.cache")


def worker_arguments(spec: CacheSpec | None) -> list[str]:
    if spec is None:
        return []
    if spec.redis:
        return ["--cache-redis-timeout", f"{spec.redis_timeout_s:g}"] if spec.redis_timeout_s != DEFAULT_TIMEOUT else []
    return [] if spec.memory_bytes == DEFAULT_MEMORY_BYTES else ["--cache-memory", str(spec.memory_bytes)]


def environment(spec: CacheSpec | None) -> dict[str, str]:
    return {CACHE_REDIS_ENV: spec.redis} if spec is not None and spec.redis else {}


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-redis",
        default=os.environ.get(CACHE_REDIS_ENV),
        metavar="URL",
        help=f"keep the response cache in this Redis (default ${CACHE_REDIS_ENV}; else in this worker's memory)",
    )
    parser.add_argument(
        "--cache-redis-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long the cache waits for Redis before it is bypassed for a request (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--cache-memory",
        type=int,
        default=DEFAULT_MEMORY_BYTES,
        metavar="BYTES",
        help=f"the in-process response cache's size (default {DEFAULT_MEMORY_BYTES // (1 << 20)} MiB)",
    )


@contextlib.asynccontextmanager
async def opened_cache(args: argparse.Namespace) -> AsyncIterator[tuple[CacheStore, Flights]]:
    """The worker's store and its in-flight deduplication: in Redis (a client of its own: the
    limits' is not shared; flights shared with every worker and gateway on it) or in memory (this
    worker's alone). An empty in-process store costs nothing until the policy caches something."""
    from extproc.cache.inflight import Flights
    from extproc.cache.store import LocalLruStore

    if not args.cache_redis:
        store: CacheStore = LocalLruStore(args.cache_memory)
        flights = Flights()
    else:
        # Imported only here: redis-py is ~9 MB of every process that loads it.
        from extproc.auth.redis_limits import connect, connect_hot
        from extproc.cache.redis_flights import RedisFlights
        from extproc.cache.redis_store import RedisCacheStore

        url = connection_url(args.cache_redis)
        client = connect_hot(url, timeout_s=args.cache_redis_timeout)
        store = RedisCacheStore(client)
        # Wake-ups on a connection of their own, whose reads wait up to a second for a message.
        flights = Flights(RedisFlights(client, lambda: connect(url, timeout_s=SUBSCRIBER_TIMEOUT_S).pubsub()))
    try:
        yield store, flights
    finally:
        await flights.aclose()
        await store.aclose()
