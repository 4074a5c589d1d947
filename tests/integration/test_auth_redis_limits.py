"""Cluster-wide limits and budgets (extproc.auth.redis_limits) against the real Redis of this
machine (redis://127.0.0.1:6379/0, override with CCR_TEST_REDIS). Every test writes under a key
prefix of its own and deletes it after; time is the caller's ``now``, so nothing sleeps."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot

from extproc.auth.limits import Budget, Limit, hash_tag, period_window
from extproc.auth.local_limits import LocalLimiter
from extproc.auth.redis_limits import FailurePolicy, GuardedLimiter, RedisLimiter, connect
from tests.tcp_proxy import TcpProxy

REDIS_URL = os.environ.get("CCR_TEST_REDIS", "redis://127.0.0.1:6379/0")
T0 = 1_700_000_000.0


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"ccrtest:{uuid.uuid4().hex[:12]}:"
    client = connect(REDIS_URL, timeout_s=1.0)
    try:
        await client.ping()
    except Exception as error:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {error}")
    yield name
    keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def limiter(prefix: str) -> AsyncIterator[RedisLimiter]:
    client = connect(REDIS_URL, timeout_s=1.0)
    yield RedisLimiter(client, prefix=prefix)
    await client.aclose()


async def stored_keys(limiter: RedisLimiter) -> list[str]:
    return [key.decode() async for key in limiter.client.scan_iter(match=f"{limiter.prefix}*")]


def errors_counted(policy: str) -> float:
    return REGISTRY.get_sample_value("ccr_auth_redis_errors_total", {"policy": policy}) or 0.0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- rate limits -------------------------------------------------------------------------------


async def test_ten_rpm_admits_exactly_ten_then_refuses_with_the_exact_retry_after(limiter: RedisLimiter) -> None:
    rule = Limit.of("rpm", "key:k_abc", 10)
    decisions = [await limiter.admit([rule], f"r{i}", now=T0) for i in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[-1].limit == rule
    assert decisions[-1].retry_after_s == pytest.approx(6.0, abs=0.001)
    assert not (await limiter.admit([rule], "early", now=T0 + 6.0 - 0.05)).allowed
    assert (await limiter.admit([rule], "on time", now=T0 + 6.0)).allowed


async def test_two_gateways_sharing_redis_see_one_limit(limiter: RedisLimiter) -> None:
    other_client = connect(REDIS_URL, timeout_s=1.0)
    other_gateway = RedisLimiter(other_client, prefix=limiter.prefix)
    rule = Limit.of("rpm", "tenant:acme", 10)
    try:
        admitted = [
            (await gateway.admit([rule], f"r{i}", now=T0)).allowed
            for i in range(20)
            for gateway in [(limiter, other_gateway)[i % 2]]
        ]
    finally:
        await other_client.aclose()
    assert sum(admitted) == 10


async def test_no_double_burst_across_a_minute_boundary(limiter: RedisLimiter) -> None:
    rule = Limit.of("rpm", "key:k_abc", 10)
    edge = T0 - T0 % 60 + 60
    assert all([(await limiter.admit([rule], f"a{i}", now=edge - 0.1)).allowed for i in range(10)])
    after_edge = [(await limiter.admit([rule], f"b{i}", now=edge + 0.1)).allowed for i in range(10)]
    assert sum(after_edge) == 0  # a fixed window would admit 10 more here


async def test_the_lua_decides_exactly_as_the_python_does(limiter: RedisLimiter) -> None:
    """One random sequence of admits and reconciliations through both limiters: same decisions,
    same retry-after, same remaining."""
    chooser = random.Random(15)
    for sequence in range(15):
        local = LocalLimiter()
        scope = f"key:k{sequence}"
        limits = [
            Limit.of("rpm", scope, chooser.randint(1, 20), burst=chooser.choice([None, 1, 3])),
            Limit.of("tpm", f"key_model:k{sequence}:gpt-4o", chooser.randint(50, 2000)),
            Limit.of("rph", scope, chooser.choice([7, 30, 1000])),
        ]
        now = T0 + chooser.random()
        for step in range(60):
            now += chooser.choice([0.0, 0.0, chooser.random() * 3, chooser.random() * 30])
            estimate = chooser.randint(0, 400)
            expected = local.admit(limits, f"r{step}", token_estimate=estimate, now=now)
            actual = await limiter.admit(limits, f"r{step}", token_estimate=estimate, now=now)
            assert actual.allowed == expected.allowed, (sequence, step)
            assert actual.limit == expected.limit
            assert actual.retry_after_s == pytest.approx(expected.retry_after_s, abs=1e-9)
            assert actual.remaining == expected.remaining
            if expected.allowed and chooser.random() < 0.5:
                real = chooser.randint(0, 600)
                local.reconcile_tokens(limits, estimate, real, now=now)
                await limiter.reconcile_tokens(limits, estimate, real, now=now)


async def test_a_refusal_in_one_slot_charges_no_other_slot(limiter: RedisLimiter) -> None:
    key_rpm, tenant_rpm = Limit.of("rpm", "key:k_abc", 100), Limit.of("rpm", "tenant:acme", 1)
    assert hash_tag(key_rpm.scope) != hash_tag(tenant_rpm.scope)
    assert (await limiter.admit([key_rpm, tenant_rpm], "a", now=T0)).allowed
    for index in range(5):
        refused = await limiter.admit([key_rpm, tenant_rpm], f"refused{index}", now=T0)
        assert not refused.allowed and refused.limit == tenant_rpm
    assert (await limiter.admit([key_rpm], "b", now=T0)).remaining["rpm"] == 98


async def test_tokens_reconcile_down_after_the_response(limiter: RedisLimiter) -> None:
    tpm = Limit.of("tpm", "key:k_abc", 1000)
    assert (await limiter.admit([tpm], "a", token_estimate=900, now=T0)).allowed
    assert not (await limiter.admit([tpm], "b", token_estimate=500, now=T0)).allowed
    await limiter.reconcile_tokens([tpm], estimated=900, actual=100, now=T0)
    assert (await limiter.admit([tpm], "b", token_estimate=500, now=T0)).allowed
    await limiter.reconcile_tokens([tpm], estimated=500, actual=0, now=T0)
    await limiter.reconcile_tokens([tpm], estimated=100, actual=0, now=T0)
    assert await stored_keys(limiter) == []  # back at rest: nothing stored


async def test_parallel_slots_are_released_and_a_crashed_workers_lease_expires(limiter: RedisLimiter) -> None:
    slots = Limit("parallel", "key:k_abc", 2, period_s=30)
    assert (await limiter.admit([slots], "a", now=T0)).allowed
    assert (await limiter.admit([slots], "b", now=T0)).allowed
    refused = await limiter.admit([slots], "c", now=T0)
    assert not refused.allowed and refused.limit == slots
    await limiter.release([slots], "a")
    assert (await limiter.admit([slots], "c", now=T0)).allowed
    assert not (await limiter.admit([slots], "d", now=T0 + 29)).allowed
    assert (await limiter.admit([slots], "d", now=T0 + 30)).allowed


async def test_a_keys_limits_live_in_one_hash_slot(limiter: RedisLimiter) -> None:
    limits = [
        Limit.of("rpm", "key:k_abc123", 10),
        Limit.of("tpm", "key:k_abc123", 10_000),
        Limit.of("tpm", "key_model:k_abc123:gpt-4o", 10_000),
        Limit.of("parallel", "key_model:k_abc123:gpt-4o", 5),
    ]
    assert (await limiter.admit(limits, "r", token_estimate=10, now=T0)).allowed
    budget = Budget("key:k_abc123", 5.0, "day")
    assert (await limiter.reserve(budget, "r", 1.0, now=T0)).allowed
    await limiter.settle(budget, "r", 0.5, now=T0)
    keys = await stored_keys(limiter)
    assert len(keys) >= 6
    assert all("{ccr:key:k_abc123}" in key for key in keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_scripts_reload_after_redis_forgets_them(limiter: RedisLimiter) -> None:
    rule = Limit.of("rpm", "key:k_abc", 10)
    assert (await limiter.admit([rule], "a", now=T0)).allowed
    await limiter.client.script_flush()
    assert (await limiter.admit([rule, Limit.of("rpm", "tenant:acme", 5)], "b", now=T0)).allowed
    await limiter.client.script_flush()
    assert (await limiter.admit([rule], "c", now=T0)).remaining["rpm"] == 7


# -- budgets -----------------------------------------------------------------------------------


async def test_fifty_concurrent_requests_against_a_budget_for_ten_serve_ten(limiter: RedisLimiter) -> None:
    budget = Budget("key:k_abc", 2.5, "day")
    gateways = [limiter] + [RedisLimiter(connect(REDIS_URL, timeout_s=1.0), prefix=limiter.prefix) for _ in range(2)]
    try:
        decisions = await asyncio.gather(
            *(gateways[i % 3].reserve(budget, f"r{i}", 0.25, now=T0 + i * 1e-3) for i in range(50))
        )
        admitted = [f"r{i}" for i, decision in enumerate(decisions) if decision.allowed]
        assert 9 <= len(admitted) <= 10
        refused = next(decision for decision in decisions if not decision.allowed)
        assert refused.limit == budget
        assert refused.retry_after_s == pytest.approx(period_window("day", T0)[1] - T0, abs=1)
        await asyncio.gather(*(limiter.settle(budget, request_id, 0.05, now=T0 + 1) for request_id in admitted))
        assert await limiter.spent_usd(budget, now=T0 + 1) == (pytest.approx(0.05 * len(admitted)), 0.0)
        more = await asyncio.gather(*(gateways[i % 3].reserve(budget, f"s{i}", 0.25, now=T0 + 2) for i in range(50)))
        assert sum(decision.allowed for decision in more) == int((2.5 - 0.05 * len(admitted)) / 0.25)
    finally:
        for gateway in gateways[1:]:
            await gateway.client.aclose()


async def test_reservations_of_requests_that_never_finish_expire(prefix: str) -> None:
    client = connect(REDIS_URL, timeout_s=1.0)
    limiter = RedisLimiter(client, prefix=prefix, reservation_ttl_s=300)
    budget = Budget("tenant:acme", 1.0, "month")
    try:
        assert all([(await limiter.reserve(budget, f"lost{i}", 0.5, now=T0)).allowed for i in range(2)])
        assert not (await limiter.reserve(budget, "next", 0.5, now=T0 + 299)).allowed
        assert (await limiter.reserve(budget, "next", 0.5, now=T0 + 300)).allowed
        assert await limiter.spent_usd(budget, now=T0 + 300) == (0.0, 0.5)
    finally:
        await client.aclose()


async def test_settle_is_idempotent_by_request_id(limiter: RedisLimiter) -> None:
    budget = Budget("key:k_abc", 1.0, "week")
    assert (await limiter.reserve(budget, "r", 0.6, now=T0)).allowed
    assert await limiter.settle(budget, "r", 0.3, now=T0 + 1)
    assert not await limiter.settle(budget, "r", 0.3, now=T0 + 2)
    assert (await limiter.reserve(budget, "r", 0.6, now=T0 + 3)).allowed  # settled: holds nothing
    assert await limiter.spent_usd(budget, now=T0 + 3) == (0.3, 0.0)
    assert (await limiter.reserve(budget, "s", 0.7, now=T0 + 4)).allowed
    assert not (await limiter.reserve(budget, "t", 0.01, now=T0 + 5)).allowed


# -- failure policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "admitted"),
    [(FailurePolicy.FAIL_OPEN, 6), (FailurePolicy.FAIL_CLOSED, 0), (FailurePolicy.LOCAL, 2)],
)
async def test_unreachable_redis_applies_the_failure_policy_and_counts_it(
    policy: FailurePolicy, admitted: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.02)
    guarded = GuardedLimiter(RedisLimiter(client), policies={"rpm": policy}, gateways=2)
    rule = Limit.of("rpm", "key:k_abc", 4)
    before = errors_counted(policy.value)
    with caplog.at_level(logging.WARNING, logger="extproc.auth.redis_limits"):
        decisions = [await guarded.admit([rule], f"r{i}", now=T0) for i in range(6)]
    await client.aclose()
    assert sum(decision.allowed for decision in decisions) == admitted  # local: 4 rpm over 2 gateways
    assert all(decision.degraded for decision in decisions)
    assert errors_counted(policy.value) - before == 6
    assert len([r for r in caplog.records if "redis unavailable" in r.getMessage()]) == 1  # once per outage


async def test_budgets_fail_closed_during_an_outage_and_recover_after(prefix: str) -> None:
    host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
    with TcpProxy(host, int(port)) as proxy:
        client = connect(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.05)
        guarded = GuardedLimiter(RedisLimiter(client, prefix=prefix))
        budget = Budget("key:k_abc", 1.0, "day")
        try:
            assert (await guarded.reserve(budget, "a", 0.1, now=T0)).allowed
            proxy.cut(blackhole=True)
            before = errors_counted("fail_closed")
            refused = await guarded.reserve(budget, "b", 0.1, now=T0)
            assert not refused.allowed and refused.degraded and refused.limit == budget
            assert errors_counted("fail_closed") - before == 1
            proxy.restore()
            await client.connection_pool.disconnect()  # the held connection's reply never came
            assert (await guarded.reserve(budget, "c", 0.1, now=T0)).allowed
            assert not guarded._in_outage
        finally:
            await client.aclose()
