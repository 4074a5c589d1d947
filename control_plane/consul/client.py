"""Consul's HTTP API as this control plane uses it: addresses and durations, the client factory,
and the blocking-query loop every watch runs (the KV policy source, the catalog watcher).

The loop follows Consul's rules for blocking queries: ``?index=<X-Consul-Index>&wait=...``; a return
does not mean a change; an index that goes backwards resets to 0; an index below 1 is treated as 1;
the loop is rate limited (token bucket) and backs off with jitter after errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
from prometheus_client import Counter, Gauge

log = logging.getLogger("ccr.control_plane.consul")

CONSUL_INDEX = Gauge(
    "ccr_consul_index", "X-Consul-Index last returned to a blocking query", ["watch"], multiprocess_mode="livemax"
)
CONSUL_ANSWERED = Gauge(
    "ccr_consul_watch_last_answer_timestamp_seconds",
    "When a Consul watch last had an answer (Unix time): a blocking query answers at least once per "
    "its wait, so time() minus this is the watch's lag",
    ["watch"],
    multiprocess_mode="livemax",
)
CONSUL_ERRORS = Counter(
    "ccr_consul_errors_total", "Failed requests of a Consul watch (retried with backoff)", ["watch"]
)

DEFAULT_ADDRESS = "http://127.0.0.1:8500"
REQUEST_TIMEOUT = 10.0  # for every request that is not a blocking query


# --- addresses, durations, client ---------------------------------------------------------------


def parse_address(address: str) -> tuple[str, str, int]:
    """``http://host:port``, ``https://host``, or bare ``host:port`` (what CONSUL_HTTP_ADDR holds)
    -> (scheme, host, port)."""
    text = address.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{address!r} is not a Consul HTTP address (http://host:port)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{address!r} has an invalid port") from None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 8500)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration as Consul takes it ("5s", "1m30s", "250ms") -> seconds."""
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (expected e.g. 5s, 1m30s, 250ms)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def blocking_timeout(wait: str) -> float:
    """How long the HTTP client may wait for a blocking query: Consul caps the wait at 10 minutes and
    adds up to wait/16 of jitter; past that, the request is lost, not slow."""
    seconds = min(parse_duration(wait), 600.0)
    return seconds + seconds / 16 + REQUEST_TIMEOUT


def make_client(
    address: str, token: str | None, datacenter: str | None = None, timeout: float = REQUEST_TIMEOUT
) -> consul.aio.Consul:
    """py-consul's asyncio client; call inside a running event loop (it opens an aiohttp session).

    Two of its defaults are overridden: CONSUL_HTTP_TOKEN from the environment would win over an
    explicit token, and aiohttp's 5-minute total timeout would cut every default-length blocking
    query (5m + jitter) short: ``timeout`` must cover the longest blocking query the client makes
    (``blocking_timeout(wait)``); calls that take a per-request timeout pass a shorter one."""
    scheme, host, port = parse_address(address)
    with warnings.catch_warnings():  # py-consul passes aiohttp's deprecated ssl_context argument
        warnings.simplefilter("ignore", DeprecationWarning)
        client = consul.aio.Consul(host=host, port=port, scheme=scheme, dc=datacenter, connections_timeout=timeout)
    client.token = token if token is not None else os.environ.get("CONSUL_HTTP_TOKEN")
    return client


def consul_index(value: Any) -> int:
    """py-consul hands X-Consul-Index over as the header's string."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise consul.ConsulException(f"invalid X-Consul-Index {value!r}") from None


# Errors a Consul request can end with that say nothing about our data: retried with backoff.
TRANSIENT_ERRORS = (consul.ConsulException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


# --- the blocking-query loop ---------------------------------------------------------------------


def next_index(current: int, returned: int) -> int:
    """The index the next blocking query sends, after a response carrying ``returned``.

    An index that went backwards (a snapshot restore, a KV tombstone reaped, a new leader with a
    different view) says nothing about what was missed: start over with a non-blocking read (0).
    An index below 1 would make the next query non-blocking and the loop spin: use 1 instead."""
    returned = max(returned, 0)
    if returned < current:
        return 0
    return max(returned, 1)


class TokenBucket:
    """At most ``rate`` starts per second on average, ``burst`` back to back. Blocking queries can
    return at once for many reasons (an unrelated write, an index reset, a proxy that ignores
    ``index``); this keeps such a loop from hammering Consul."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def reserve(self) -> float:
        """Take a token; returns how long to wait before using it (0 when one was available)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class Backoff:
    """Exponential backoff with jitter: the n-th consecutive failure waits between half and all of
    min(maximum, minimum * 2**n), so many watchers that lost Consul together don't return together."""

    def __init__(self, minimum: float = 0.1, maximum: float = 30.0, rng: Callable[[], float] = random.random) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.rng = rng
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(self.failures, 60))  # no overflow in long outages
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self.rng())

    def reset(self) -> None:
        self.failures = 0


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoopSettings:
    wait: str = "5m"  # Consul's default; the longest wait is 10m
    rate: float = 5.0  # blocking queries started per second, on average
    burst: int = 5
    backoff_min: float = 0.1
    backoff_max: float = 30.0


DEFAULT_SETTINGS = LoopSettings()


class BlockingLoop(Generic[T]):
    """One Consul blocking query, repeated forever by the rules in FIELD_NOTES:

    - ``?index=<last X-Consul-Index>&wait=<wait>``; a return does not mean a change (callers
      compare what they got, e.g. by hash);
    - the index going backwards resets it to 0, an index below 1 counts as 1 (``next_index``);
    - every query start takes a token from a bucket, so the loop never spins;
    - a failed request is retried after an exponential, jittered backoff, and the index is kept.

    ``fetch(index, wait)`` does the request and returns (X-Consul-Index, data); ``on_result`` is
    called with every successful response's (index, data).
    """

    def __init__(
        self,
        name: str,
        fetch: Callable[[int, str], Awaitable[tuple[int, T]]],
        settings: LoopSettings = DEFAULT_SETTINGS,
    ) -> None:
        self.name = name
        self.fetch = fetch
        self.settings = settings
        self.index = 0
        self.bucket = TokenBucket(settings.rate, settings.burst)
        self.backoff = Backoff(settings.backoff_min, settings.backoff_max)
        self._last_error = ""

    async def run(self, on_result: Callable[[int, T], Awaitable[None] | None]) -> None:
        while True:
            await self.bucket.acquire()
            try:
                returned, data = await self.fetch(self.index, self.settings.wait)
            except TRANSIENT_ERRORS as exc:
                CONSUL_ERRORS.labels(self.name).inc()
                delay = self.backoff.next()
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:  # once per distinct error, not every retry
                    log.warning("consul watch %s failed (%s); retrying with backoff", self.name, message)
                    self._last_error = message
                log.debug("consul watch %s: retry in %.2fs", self.name, delay)
                await asyncio.sleep(delay)
                continue
            if self._last_error:
                log.info("consul watch %s recovered", self.name)
                self._last_error = ""
            self.backoff.reset()
            if returned < self.index:
                log.info(
                    "consul watch %s: index went backwards (%d -> %d), reading afresh", self.name, self.index, returned
                )
            self.index = next_index(self.index, returned)
            CONSUL_INDEX.labels(self.name).set(returned)
            CONSUL_ANSWERED.labels(self.name).set_to_current_time()
            outcome = on_result(returned, data)
            if outcome is not None:
                await outcome
