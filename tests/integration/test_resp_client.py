"""The limits' lean Redis client (extproc.auth.resp_client) against the machine's Redis: the same
answers as redis-py's, replies matched to their commands under concurrency, NOSCRIPT recovered,
and every failure one of redis-py's exceptions, so the failure policy applies unchanged."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from extproc.auth.limits import Limit
from extproc.auth.redis_limits import FailurePolicy, GuardedLimiter, RedisLimiter, connect_hot
from extproc.auth.resp_client import RespClient
from tests.tcp_proxy import TcpProxy

URL = "redis://127.0.0.1:6379/0"
T0 = 1_700_000_000.0


@pytest.fixture
async def client() -> RespClient:
    hot = connect_hot(URL, timeout_s=1.0)
    assert isinstance(hot, RespClient)
    try:
        await hot.execute_command("PING")
    except RedisConnectionError as error:
        pytest.skip(f"Redis not reachable at {URL}: {error}")
    yield hot
    await hot.aclose()


def prefix() -> str:
    return f"ccrtest:{uuid.uuid4().hex[:12]}:"


async def test_a_ten_rpm_limit_admits_exactly_ten_as_with_redis_py(client: RespClient) -> None:
    rule = Limit.of("rpm", "key:k_abc", 10)
    limiter = RedisLimiter(client, prefix=prefix())
    decisions = [await limiter.admit([rule], f"r{i}", now=T0) for i in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[-1].retry_after_s == pytest.approx(6.0, abs=0.001)


async def test_concurrent_commands_get_their_own_replies(client: RespClient) -> None:
    base = prefix()
    await asyncio.gather(*(client.execute_command("SET", f"{base}{i}", str(i)) for i in range(200)))
    values = await asyncio.gather(*(client.execute_command("GET", f"{base}{i}") for i in range(200)))
    assert values == [str(i).encode() for i in range(200)]
    await client.execute_command("DEL", *(f"{base}{i}" for i in range(200)))


async def test_a_flushed_script_cache_is_reloaded(client: RespClient) -> None:
    limiter = RedisLimiter(client, prefix=prefix())
    await client.execute_command("SCRIPT", "FLUSH")
    assert (await limiter.admit([Limit.of("rpm", "key:k_abc", 5)], "r1", now=T0)).allowed


async def test_error_replies_are_redis_py_errors(client: RespClient) -> None:
    with pytest.raises(ResponseError):
        await client.execute_command("NOSUCHCOMMAND")
    assert await client.execute_command("PING") == b"PONG"  # the connection is still in step


async def test_a_database_number_is_selected() -> None:
    hot = connect_hot("redis://127.0.0.1:6379/3", timeout_s=1.0)
    other = aioredis.Redis.from_url("redis://127.0.0.1:6379/3")
    key = f"{prefix()}db"
    try:
        await hot.execute_command("SET", key, "three")
        assert await other.get(key) == b"three"
    finally:
        await other.delete(key)
        await other.aclose()
        await hot.aclose()


async def test_nothing_listening_is_a_connection_error_and_the_failure_policy_applies() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hot = connect_hot(f"redis://127.0.0.1:{port}/0", timeout_s=0.05)
    with pytest.raises(RedisConnectionError):
        await hot.execute_command("PING")
    guarded = GuardedLimiter(RedisLimiter(hot), policies={"rpm": FailurePolicy.FAIL_OPEN})
    admission = await guarded.admit([Limit.of("rpm", "key:k_abc", 1)], "r1", now=T0)
    assert admission.allowed and admission.degraded
    await hot.aclose()


async def test_a_silent_redis_times_out_fast_and_the_next_command_reconnects() -> None:
    with TcpProxy("127.0.0.1", 6379) as proxy:
        hot = connect_hot(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.05)
        try:
            assert await hot.execute_command("PING") == b"PONG"
            proxy.cut(blackhole=True)  # the open connection is reset, a new one answers nothing
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RedisTimeoutError):
                await hot.execute_command("PING")
            assert loop.time() - started < 0.5
            proxy.restore()
            assert await hot.execute_command("PING") == b"PONG"
        finally:
            await hot.aclose()


def test_the_password_is_never_shown() -> None:
    hot = connect_hot("redis://user:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(hot) and "hunter2" not in str(vars(hot).get("host"))
