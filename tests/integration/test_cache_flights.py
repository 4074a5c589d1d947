"""In-flight deduplication shared through Redis (extproc.cache.inflight.RedisFlights): the claim,
the wake-up by pub/sub, the wake-up by polling when no message comes, and Redis down (every request
leads, nothing raises); on the machine's Redis, then on a Sentinel set and a three-master Cluster
started here (claims of keys on every master, wake-ups published from each)."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
import redis.asyncio as aioredis

from extproc.auth.redis_limits import connect
from extproc.auth.resp_client import RespClient
from extproc.cache import redis_flights as inflight
from extproc.cache.inflight import Flights
from extproc.cache.redis_flights import RedisFlights
from tests.integration import redis_procs

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> str:
    return f"ccr:test:{uuid.uuid4().hex[:8]}:"


def shared(client, prefix: str) -> RedisFlights:
    return RedisFlights(client, lambda: connect(REDIS_URL, timeout_s=2.0).pubsub(), prefix)


@pytest.mark.parametrize("kind", ["resp", "redis-py"])
async def test_two_workers_share_a_flight_and_the_follower_is_woken_by_the_end(kind: str, prefix: str) -> None:
    def client():
        return RespClient("127.0.0.1", 6379, timeout_s=5.0) if kind == "resp" else connect(REDIS_URL, timeout_s=5.0)

    one, two = Flights(shared(client(), prefix)), Flights(shared(client(), prefix))
    try:
        leader = await one.join("k", 10.0)
        assert leader
        await asyncio.sleep(0.2)  # the follower's subscription is up before the end is published
        followers = asyncio.gather(*(two.join("k", 10.0) for _ in range(5)))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        ended = loop.time()
        await one.end("k", leader)
        assert await followers == [None] * 5
        assert loop.time() - ended < inflight.POLL_S  # woken by the message, not by polling
        assert await one.shared.client.execute_command("EXISTS", f"{prefix}{{k}}:flight") == 0
    finally:
        await one.aclose()
        await two.aclose()
        await one.shared.client.aclose()
        await two.shared.client.aclose()


async def test_a_follower_that_misses_the_message_sees_the_claim_gone_when_it_polls(prefix: str) -> None:
    client = connect(REDIS_URL, timeout_s=5.0)
    never = RedisFlights(client, lambda: connect("redis://127.0.0.1:1/0", timeout_s=0.05).pubsub(), prefix)
    flights = Flights(never)
    try:
        assert await client.set(f"{prefix}{{k}}:flight", "someone", px=10_000)
        follower = asyncio.ensure_future(flights.join("k", 10.0))
        await asyncio.sleep(0.1)
        assert not follower.done()
        await client.delete(f"{prefix}{{k}}:flight")  # that flight's end, its message lost
        assert await asyncio.wait_for(follower, 2 * inflight.POLL_S + 0.5) is None
    finally:
        await flights.aclose()
        await client.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_with_redis_down_every_request_leads_and_nothing_raises(prefix: str, caplog) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    flights = Flights(RedisFlights(connect(url), lambda: connect(url).pubsub(), prefix))
    try:
        first = await flights.join("k", 5.0)
        assert first  # led: the claim could not be asked
        await flights.end("k", first)  # not raised either
        assert await flights.join("k", 5.0)
        assert sum("unavailable for in-flight deduplication" in r.message for r in caplog.records) == 1
    finally:
        await flights.aclose()


async def test_the_claim_expires_on_its_own(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    flights = Flights(shared(client, prefix))
    try:
        assert await flights.join("k", 0.2)
        ttl = await client.pttl(f"{prefix}{{k}}:flight")
        assert 0 < ttl <= 200
    finally:
        await flights.aclose()
        await client.aclose()


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest):
    if redis_procs.REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    started = redis_procs.redis_cluster() if request.param == "cluster" else redis_procs.sentinel_group()
    with started as group:
        yield group


@pytest.mark.parametrize("topology", ["cluster", "sentinel"], indirect=True)
async def test_flights_on_every_master_wake_their_followers_on_another_client(topology, prefix: str) -> None:
    def flights() -> Flights:
        client = connect(topology.url, timeout_s=5.0)
        return Flights(RedisFlights(client, lambda: connect(topology.url, timeout_s=2.0).pubsub(), prefix))

    one, two = flights(), flights()
    keys = [f"key-{i}" for i in range(12)]  # their claims' slots spread over a cluster's masters
    try:
        leaders = [await one.join(key, 10.0) for key in keys]
        assert all(leaders)
        await asyncio.sleep(0.3)  # the follower's subscription is up before the ends are published
        followers = asyncio.gather(*(two.join(key, 10.0) for key in keys))
        # Every follower's claim refused and its wait registered before the ends (a fixed sleep was
        # too short on a loaded CI host: the claims came after the ends and led instead).
        deadline = asyncio.get_running_loop().time() + 10
        while set(two.shared._waiting) != set(keys) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        ended = loop.time()
        for key, leader in zip(keys, leaders, strict=True):
            await one.end(key, leader)
        assert await followers == [None] * len(keys)
        assert loop.time() - ended < 2 * inflight.POLL_S  # the messages, not the polls
        assert not any([await one.shared._claimed(key) for key in keys])
    finally:
        for side in (one, two):
            await side.aclose()
            await side.shared.client.aclose()
