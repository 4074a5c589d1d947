"""In-flight deduplication (extproc.cache.inflight): one worker's flights (shared ones, through
Redis: tests/integration/test_cache_flights.py)."""

from __future__ import annotations

import asyncio

from extproc.cache.inflight import Flights


async def gather_joins(flights: Flights, key: str, count: int, wait_s: float = 5.0) -> list[str | None]:
    return await asyncio.gather(*(flights.join(key, wait_s) for _ in range(count)))


async def test_of_twenty_identical_requests_one_leads_and_the_others_wait_for_its_end() -> None:
    flights = Flights()
    joins = asyncio.gather(*(flights.join("k", 5.0) for _ in range(20)))
    await asyncio.sleep(0.01)
    assert len(flights) == 1
    leader_id = next(iter(flights._flights.values())).flight_id
    await flights.end("k", leader_id)
    results = await joins
    assert results.count(None) == 19 and results.count(leader_id) == 1
    assert len(flights) == 0
    assert await flights.join("k", 5.0) not in (None, leader_id)  # the next miss leads a new flight


async def test_a_leader_that_never_reports_is_forgotten_after_the_wait() -> None:
    flights = Flights()
    leader = await flights.join("k", 0.05)
    assert leader
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await flights.join("k", 5.0) is None  # followed until the leader's flight expired
    assert loop.time() - started < 1.0
    assert len(flights) == 0


async def test_an_end_of_another_flight_of_the_key_wakes_nobody() -> None:
    flights = Flights()
    await flights.join("k", 5.0)
    follower = asyncio.ensure_future(flights.join("k", 5.0))
    await flights.end("k", "0123456789abcdef")  # an earlier flight's late report
    await asyncio.sleep(0.01)
    assert not follower.done()
    await flights.aclose()
    assert await follower is None
