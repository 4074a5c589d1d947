"""Cluster-wide limits (extproc.auth.redis_limits) on the Redis topologies ``connect`` speaks:
a Redis Cluster of three masters and a Sentinel group (master, replica, three sentinels), each
started by this module on free ports (tests/integration/redis_procs.py) and killed after it. The
machine's Redis on 6379 is not used. Time is the caller's ``now`` (fixed), so limits never
refill while a test runs and every count is exact.

The Sentinel failover test prints the failover window it measured (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot

from extproc.auth.limits import Budget, Limit, hash_tag
from extproc.auth.local_limits import LocalLimiter
from extproc.auth.redis_limits import UNAVAILABLE, FailurePolicy, GuardedLimiter, RedisLimiter, connect
from tests.integration import redis_procs
from tests.integration.redis_procs import ClusterGroup, RedisProcess, SentinelGroup

pytestmark = pytest.mark.skipif(redis_procs.REDIS_SERVER is None, reason="redis-server is not installed")

T0 = 1_700_000_000.0
LOGGER = "extproc.auth.redis_limits"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterGroup]:
    with redis_procs.redis_cluster() as group:
        yield group


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelGroup]:
    with redis_procs.sentinel_group() as group:
        yield group


@pytest.fixture
def prefix() -> str:
    return f"ccrtest:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def cluster_limiter(cluster: ClusterGroup, prefix: str) -> AsyncIterator[RedisLimiter]:
    client = connect(cluster.url, timeout_s=1.0)  # a busy test machine is not an outage
    yield RedisLimiter(client, prefix=prefix)
    await client.aclose()


def errors_counted(policy: str) -> float:
    return REGISTRY.get_sample_value("ccr_auth_redis_errors_total", {"policy": policy}) or 0.0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_scope_per_master(cluster: ClusterGroup) -> list[str]:
    """A key, a tenant and a model whose hash slots are served by three different masters."""
    scopes: list[str] = []
    taken: set[int] = set()
    for kind in ("key:k", "tenant:t", "model:m"):
        for index in range(1000):
            scope = f"{kind}{index}"
            owner = cluster.owner(key_slot(hash_tag(scope).encode()))
            if owner.port not in taken:
                taken.add(owner.port)
                scopes.append(scope)
                break
    assert len(scopes) == 3
    return scopes


def keys_on(node: RedisProcess, prefix: str) -> list[str]:
    return sorted(node.admin("KEYS", f"{prefix}*"))  # type: ignore[call-overload]


def redirects_answered(node: RedisProcess) -> dict[str, int]:
    with node.client() as client:
        stats = client.info("errorstats")
    return {kind: stats.get(f"errorstat_{kind}", {}).get("count", 0) for kind in ("ASK", "MOVED")}


# -- Cluster -------------------------------------------------------------------------------------


async def test_limits_of_three_scopes_on_three_masters_admit_exactly_the_limit(
    cluster: ClusterGroup, cluster_limiter: RedisLimiter, prefix: str
) -> None:
    key, tenant, model = one_scope_per_master(cluster)
    limits = [Limit.of("rpm", key, 10), Limit.of("rpm", tenant, 100), Limit.of("tpm", model, 100_000)]
    decisions = [await cluster_limiter.admit(limits, f"r{i}", token_estimate=10, now=T0) for i in range(15)]
    assert [decision.allowed for decision in decisions] == [True] * 10 + [False] * 5
    assert decisions[-1].limit == limits[0]
    # The refusals were charged nowhere, on any master
    after = await cluster_limiter.admit(limits[1:], "other", token_estimate=10, now=T0)
    assert after.remaining == {"rpm": 89, "tpm": 100_000 - 110}
    for scope in (key, tenant, model):
        owner = cluster.owner(key_slot(hash_tag(scope).encode()))
        assert [stored.split(":")[-2] for stored in keys_on(owner, prefix)] == [scope.split(":")[1]]


async def test_budgets_and_script_reloads_work_on_every_master(
    cluster: ClusterGroup, cluster_limiter: RedisLimiter
) -> None:
    key, tenant, model = one_scope_per_master(cluster)
    for node in cluster.nodes:
        node.admin("SCRIPT", "FLUSH")
    limits = [Limit.of("rpm", key, 5), Limit.of("rpm", tenant, 5), Limit.of("rpm", model, 5)]
    assert (await cluster_limiter.admit(limits, "a", now=T0)).remaining == {"rpm": 4}
    budget = Budget(tenant, 1.0, "day")
    assert (await cluster_limiter.reserve(budget, "a", 0.6, now=T0)).allowed
    assert not (await cluster_limiter.reserve(budget, "b", 0.6, now=T0)).allowed
    assert await cluster_limiter.settle(budget, "a", 0.25, now=T0)
    assert await cluster_limiter.spent_usd(budget, now=T0) == (0.25, 0.0)


async def test_a_slot_migrated_between_checks_is_followed_through_ask_then_moved(
    cluster: ClusterGroup, cluster_limiter: RedisLimiter, prefix: str
) -> None:
    rule = Limit.of("rpm", "key:k_migrating", 10)
    slot = key_slot(hash_tag(rule.scope).encode())
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)
    redirects_before = redirects_answered(source)
    admitted = [(await cluster_limiter.admit([rule], f"a{i}", now=T0)).allowed for i in range(4)]

    cluster.begin_migration(slot, source, target)
    assert cluster.move_keys(slot, source, target) == 1  # the rule's GCRA key, 4 requests in it
    admitted += [(await cluster_limiter.admit([rule], f"b{i}", now=T0)).allowed for i in range(3)]
    assert redirects_answered(source)["ASK"] - redirects_before["ASK"] == 3

    cluster.end_migration(slot, target)
    admitted += [(await cluster_limiter.admit([rule], f"c{i}", now=T0)).allowed for i in range(4)]
    assert redirects_answered(source)["MOVED"] > redirects_before["MOVED"]
    assert admitted == [True] * 10 + [False]
    assert len(keys_on(target, prefix)) == 1 and keys_on(source, prefix) == []


# -- Sentinel ------------------------------------------------------------------------------------


async def test_the_sentinel_url_finds_the_master(sentinel: SentinelGroup, prefix: str) -> None:
    client = connect(sentinel.url)
    limiter = RedisLimiter(client, prefix=prefix)
    try:
        rule = Limit.of("rpm", "key:k_abc", 3)
        assert [(await limiter.admit([rule], f"r{i}", now=T0)).allowed for i in range(4)] == [True] * 3 + [False]
        master = client.connection_pool.master_address  # type: ignore[attr-defined]
        assert master == ("127.0.0.1", sentinel.master.port)
    finally:
        await client.aclose()


async def test_writing_to_a_replica_is_an_outage_for_the_failure_policy(
    sentinel: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    """What a plain redis:// URL meets once its master is demoted: READONLY, which the failure
    policy handles like any outage instead of failing the request."""
    client = connect(f"redis://{sentinel.replica.address}/0")
    guarded = GuardedLimiter(RedisLimiter(client), policies={"rpm": FailurePolicy.FAIL_OPEN})
    rule = Limit.of("rpm", "key:k_abc", 3)
    before = errors_counted("fail_open")
    try:
        with pytest.raises(UNAVAILABLE):
            await guarded.primary.admit([rule], "direct", now=T0)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            decision = await guarded.admit([rule], "guarded", now=T0)
    finally:
        await client.aclose()
    assert decision.allowed and decision.degraded
    assert errors_counted("fail_open") - before == 1
    assert "ReadOnlyError" in caplog.text


@dataclass
class Decision:
    kind: str  # admit | reserve
    started: float  # time.monotonic()
    finished: float
    allowed: bool
    degraded: bool
    remaining: float  # rpm left, as the deciding store saw it


async def test_sentinel_failover_under_load_keeps_the_limit_state_and_reports_the_window(
    sentinel: SentinelGroup, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two loops on one gateway (of two), a request every 5 ms each: admissions against 100 rpm
    (failure policy local: 50 while Redis is away) and $1 reservations against a budget (fail
    closed). SIGKILL the master once 60 requests are in; the sentinels promote the replica and the
    same client finds it. The new master must know what the old one admitted. Replication is
    asynchronous and nothing waits for it on the hot path, so what may be missing is bounded by
    the kill's instant: the last write acknowledged before it (one per loop: each runs one request
    at a time), and a request in flight at the kill may be charged without the gateway knowing."""
    # A dead master shows as refused and reset connections, not timeouts, so the window does not
    # depend on the timeout; a longer one keeps a busy test machine from adding degraded decisions.
    client = connect(sentinel.url, timeout_s=0.25)
    gateways = 2
    guarded = GuardedLimiter(RedisLimiter(client, prefix=prefix), gateways=gateways)
    rule = Limit.of("rpm", "key:k_load", 100)
    budget = Budget("tenant:acme", 100_000.0, "day")
    decisions: list[Decision] = []
    stop = asyncio.Event()

    async def load(kind: str) -> None:
        for index in range(100_000):
            if stop.is_set():
                return
            started = time.monotonic()
            if kind == "admit":
                decision = await guarded.admit([rule], f"a{index}", now=T0)
            else:
                decision = await guarded.reserve(budget, f"b{index}", 1.0, now=T0)
            remaining = decision.remaining.get("rpm", -1.0)
            decisions.append(Decision(kind, started, time.monotonic(), decision.allowed, decision.degraded, remaining))
            await asyncio.sleep(0.005)

    def shared(kind: str) -> list[Decision]:
        return [d for d in decisions if d.kind == kind and d.allowed and not d.degraded]

    def recovered() -> bool:
        """Since the last decision the failure policy took, the shared limit ran out again."""
        degraded = [d.finished for d in decisions if d.degraded]
        return bool(degraded) and any(
            d.started > degraded[-1] and d.kind == "admit" and not d.allowed for d in decisions
        )

    errors_before = {policy: errors_counted(policy) for policy in ("local", "fail_closed")}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loops = asyncio.gather(load("admit"), load("reserve"))
        try:
            while len(shared("admit")) < 60 and not loops.done():
                await asyncio.sleep(0.001)
            killed = time.monotonic()
            sentinel.master.kill()
            while not recovered() and not loops.done():  # a loop that raised raises below
                assert time.monotonic() - killed < 30, "no recovery 30 s after the kill"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await loops
    pool = client.connection_pool
    assert pool.master_address == ("127.0.0.1", sentinel.replica.port)  # type: ignore[attr-defined]
    assert len({id(asked) for asked in pool.sentinel_manager.sentinels}) == 3  # type: ignore[attr-defined]
    await client.aclose()

    degraded = [d for d in decisions if d.degraded]
    last_degraded = max(d.finished for d in degraded)
    back = min(d.finished for d in decisions if d.started > last_degraded)
    assert back - killed < 15
    # Never degraded outside the window, and every degraded decision counted
    assert all(d.finished >= killed for d in degraded)
    degraded_admits = [d for d in degraded if d.kind == "admit"]
    degraded_reserves = [d for d in degraded if d.kind == "reserve"]
    assert errors_counted("local") - errors_before["local"] == len(degraded_admits)
    assert errors_counted("fail_closed") - errors_before["fail_closed"] == len(degraded_reserves)

    # In the window: this gateway's share of the limit, decided locally; budgets refused
    reference = LocalLimiter()
    share = rule.divided(gateways)
    local_admitted = sum(reference.admit([share], f"x{i}", now=T0).allowed for i in range(len(degraded_admits)))
    assert sum(d.allowed for d in degraded_admits) == local_admitted
    assert not any(d.allowed for d in degraded_reserves)

    # What the old master admitted, the new one knows: its first answer counts it
    shared_admits = shared("admit")
    before_kill = [d for d in shared_admits if d.finished < killed]
    first_after = next(d for d in shared_admits if d.started > killed)
    print(
        f"\nSentinel failover: requests decided by the failure policy from {degraded[0].finished - killed:.3f} s"
        f" to {last_degraded - killed:.3f} s after the kill ({len(degraded)} of them, {local_admitted} admitted"
        f" locally); shared limits enforced again {back - killed:.3f} s after it. {len(before_kill)} admitted"
        f" before the kill; the new master's first answer left {first_after.remaining:.0f} of 100."
    )
    assert abs(first_after.remaining - (100 - len(before_kill) - 1)) <= 1, (len(before_kill), first_after)
    assert 99 <= len(shared_admits) <= 101, len(shared_admits)
    reader = connect(sentinel.url)
    try:
        spent, reserved = await RedisLimiter(reader, prefix=prefix).spent_usd(budget, now=T0)
    finally:
        await reader.aclose()
    assert spent == 0.0 and abs(reserved - len(shared("reserve"))) <= 1

    # A warning when the outage began and one when it ended: never silent, never one per request
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    outages = [line for line in lines if line.startswith("redis unavailable for limits")]
    recoveries = [line for line in lines if line.startswith("redis reachable again")]
    assert 1 <= len(outages) == len(recoveries) <= 2, lines
    sentinel.wait_for_master(sentinel.replica.port)


async def test_unreachable_topologies_apply_the_policy_without_showing_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    urls = [
        f"redis://:hunter2@127.0.0.1:{port}/0",
        f"redis+sentinel://:hunter2@127.0.0.1:{port}/ccrtest",
        f"redis+cluster://:hunter2@127.0.0.1:{port}",
    ]
    rule = Limit.of("rpm", "key:k_abc", 4)
    for url in urls:
        client = connect(url)
        guarded = GuardedLimiter(RedisLimiter(client), policies={"rpm": FailurePolicy.FAIL_OPEN})
        before = errors_counted("fail_open")
        try:
            with pytest.raises(UNAVAILABLE) as raised:
                await guarded.primary.admit([rule], "direct", now=T0)
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                decision = await guarded.admit([rule], "guarded", now=T0)
        finally:
            await client.aclose()
        assert decision.allowed and decision.degraded, url
        assert errors_counted("fail_open") - before == 1
        error_text = [str(raised.value), repr(raised.value), str(raised.value.__cause__), str(raised.value.__context__)]
        assert not any("hunter2" in text for text in error_text), url
    assert len([r for r in caplog.records if "redis unavailable" in r.getMessage()]) == len(urls)
    assert "hunter2" not in caplog.text
