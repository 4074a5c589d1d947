"""In-flight deduplication: identical cacheable requests wait for the first one instead of each
paying a provider for the same answer.

The first request of a key to miss the cache leads a *flight*: it goes to the provider, and its
answer's ``/store`` (Envoy sends it to the deciding worker, extproc.cache.answers) ends the flight,
stored or not. An identical request that misses meanwhile follows: it waits until the flight ends,
then looks the key up again and is answered from the cache (or, when the leader's answer was not
stored, goes to the provider itself). A follower never waits longer than the policy's
``dedup_wait``: past it, it goes upstream on its own; a leader that never reports (its client went
away mid-stream) is forgotten after that long too.

Two halves:

- ``Flights``: this worker's flights, one asyncio future per key. Every follower of this worker
  waits on it, never on Redis: 20 identical requests on one worker cost Redis one claim.
- ``RedisFlights`` (extproc.cache.redis_flights): across workers and gateways. A flight is claimed with
  ``SET <prefix>{<key>}:flight <id> NX PX <wait>`` (the entry's hash tag: one slot on a Cluster),
  ended with a script that deletes the claim if it is still this flight's and publishes the key on
  ``<prefix>flights``; each worker's subscriber wakes its followers of that key. A follower also
  checks the claim every ``POLL_S``, so a message lost to a reconnect or a failover costs a moment,
  never the whole wait. Redis down: every request leads (the cache is bypassed anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Protocol

from extproc.cache.metrics import FLIGHTS

log = logging.getLogger("ccr.cache")


class SharedFlights(Protocol):
    async def claim(self, key: str, flight_id: str, wait_s: float) -> bool:
        """True: this flight leads everywhere (or the claim could not be asked: lead anyway)."""
        ...

    async def wait(self, key: str, wait_s: float) -> None:
        """Return when the flight that holds ``key``'s claim has ended, or after ``wait_s``."""
        ...

    async def end(self, key: str, flight_id: str) -> None: ...

    async def aclose(self) -> None: ...


class _Flight:
    __slots__ = ("done", "flight_id", "timer")

    def __init__(self, flight_id: str, done: asyncio.Future[None]) -> None:
        self.flight_id = flight_id
        self.done = done
        self.timer: asyncio.TimerHandle | None = None


class Flights:
    """One worker's flights, over ``shared`` ones when the cache is shared (None: this worker's
    memory is the cache; its flights are all there is)."""

    def __init__(self, shared: SharedFlights | None = None) -> None:
        self.shared = shared
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def join(self, key: str, wait_s: float) -> str | None:
        """A flight id when this request leads (it goes upstream; its /store ends the flight);
        None when it followed a flight to its end (or waited ``wait_s``): look the key up again."""
        flight = self._flights.get(key)
        if flight is not None:
            FLIGHTS.labels("followed").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(flight.done), wait_s)
            return None
        loop = asyncio.get_running_loop()
        flight = _Flight(secrets.token_hex(8), loop.create_future())
        self._flights[key] = flight
        flight.timer = loop.call_later(wait_s, self._land, key, flight, "expired")
        if self.shared is None or await self.shared.claim(key, flight.flight_id, wait_s):
            FLIGHTS.labels("led").inc()
            return flight.flight_id
        # Another worker or gateway leads: wait for it here, on behalf of this worker's followers.
        FLIGHTS.labels("followed").inc()
        try:
            await self.shared.wait(key, wait_s)
        finally:
            self._land(key, flight, "")
        return None

    async def end(self, key: str, flight_id: str) -> None:
        """The leader's answer was stored, or will not be: wake every follower."""
        flight = self._flights.get(key)
        if flight is not None and flight.flight_id == flight_id:
            self._land(key, flight, "")
        if self.shared is not None:
            await self.shared.end(key, flight_id)

    def _land(self, key: str, flight: _Flight, outcome: str) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.timer is not None:
            flight.timer.cancel()
        if not flight.done.done():
            flight.done.set_result(None)
            if outcome:
                FLIGHTS.labels(outcome).inc()

    async def aclose(self) -> None:
        for key, flight in list(self._flights.items()):
            self._land(key, flight, "")
        if self.shared is not None:
            await self.shared.aclose()
