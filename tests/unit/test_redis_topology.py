"""Limits URLs -> which Redis deployment (extproc.auth.redis_topology), without any I/O."""

from __future__ import annotations

import pytest

from extproc.auth.redis_topology import RedisTarget, Topology, parse_redis_url, redact


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.internal:6380/2", "unix:///run/redis.sock?db=1"]
)
def test_plain_urls_are_a_single_server_left_to_redis_py(url: str) -> None:
    assert parse_redis_url(url) == RedisTarget(Topology.SINGLE)


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    target = parse_redis_url("redis+sentinel://:s3cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/ccr-limits/3")
    assert target.topology is Topology.SENTINEL
    assert target.nodes == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381))
    assert target.service == "ccr-limits"
    assert target.db == 3
    assert (target.username, target.password) == (None, "s3cret")


def test_a_sentinel_url_without_a_db_uses_db_zero() -> None:
    target = parse_redis_url("redis+sentinel://s1:26379/mymaster")
    assert (target.service, target.db, target.password) == ("mymaster", 0, None)


def test_a_cluster_url_lists_its_startup_nodes() -> None:
    target = parse_redis_url("redis+cluster://gateway:p%40ss@n1:7000,n2:7001,n3")
    assert target.topology is Topology.CLUSTER
    assert target.nodes == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert (target.username, target.password) == ("gateway", "p@ss")


def test_a_password_may_hold_slashes_and_question_marks_unencoded() -> None:
    target = parse_redis_url("redis+cluster://:a/b?c#d@n1:7000")
    assert target.password == "a/b?c#d"
    assert target.nodes == (("n1", 7000),)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:hunter2@s1:26379", "service name"),
        ("redis+sentinel://:hunter2@s1:26379/", "service name"),
        ("redis+sentinel://:hunter2@s1:26379/svc/one", "database must be a number"),
        ("redis+sentinel://:hunter2@s1:26379/svc/1/2", "service name"),
        ("redis+cluster://:hunter2@n1:7000/1", "only database 0"),
        ("redis+cluster://:hunter2@n1:7000,:7001", "needs a host"),
        ("redis+cluster://:hunter2@n1:70000", "bad port"),
        ("redis+cluster://:hunter2@[::1:7000", "bad IPv6"),
        ("redis+cluster://:hunter2@n1:7000?ssl=true", "query options"),
        ("redis-sentinel://:hunter2@s1/svc", "scheme must be one of"),
        (":hunter2@s1:6379", "scheme must be one of"),
    ],
)
def test_bad_urls_are_refused_without_showing_the_password(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        parse_redis_url(url)
    assert "hunter2" not in str(raised.value)
    assert "***" in str(raised.value)


def test_the_parsed_target_does_not_print_its_password() -> None:
    target = parse_redis_url("redis+sentinel://:hunter2@s1/svc")
    assert "hunter2" not in repr(target)
    assert "hunter2" not in str(target)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis+cluster://user:hunter2@a:1,b:2", "redis+cluster://user:***@a:1,b:2"),
        ("redis+sentinel://:hunter2/x@s1/svc", "redis+sentinel://:***@s1/svc"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
    ],
)
def test_redact_masks_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_every_topology_gets_hot_path_timeouts_and_no_retries() -> None:
    """Built without any I/O: the timeouts are on the data connections and, behind Sentinel, on
    the connections to the sentinels too (redis-py's defaults would wait for ever)."""
    from redis.asyncio.cluster import RedisCluster

    from extproc.auth.redis_limits import connect

    single = connect("redis://127.0.0.1:6379/0", timeout_s=0.03)
    behind_sentinel = connect("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/svc/2", timeout_s=0.03)
    cluster = connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", timeout_s=0.03)
    assert isinstance(cluster, RedisCluster)
    master_pool = behind_sentinel.connection_pool
    sentinels = master_pool.sentinel_manager.sentinels
    pools = [single.connection_pool, master_pool, *(sentinel.connection_pool for sentinel in sentinels)]
    for kwargs in [pool.connection_kwargs for pool in pools] + [cluster.get_connection_kwargs()]:
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.03, 0.03)
    for retry in [pool.connection_kwargs["retry"] for pool in pools] + [cluster.retry]:
        assert retry.get_retries() == 0
    assert (master_pool.connection_kwargs["db"], master_pool.connection_kwargs["password"]) == (2, "pw")
    assert all(sentinel.connection_pool.connection_kwargs.get("password") is None for sentinel in sentinels)
