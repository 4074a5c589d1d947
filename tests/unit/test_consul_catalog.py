"""control_plane.consul.catalog: Consul health -> Envoy endpoints, and service registration."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from envoy.config.core.v3.health_check_pb2 import HealthStatus

from control_plane.consul.catalog import (
    CatalogWatcher,
    Endpoint,
    ServiceRegistration,
    check_health,
    endpoint_from_entry,
    to_cluster_load_assignment,
)
from tests.consul_double import ConsulDouble, running_double

FAST = 2.0


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with running_double(other_datacenters=("dc2",)) as running:
        yield running


async def put(url: str, path: str, body: Any = None) -> int:
    async with aiohttp.ClientSession() as session:
        data = json.dumps(body) if body is not None else None
        async with session.put(url + path, data=data) as response:
            await response.read()
            return response.status


async def register(double: ConsulDouble, service_id: str, port: int, **extra: Any) -> None:
    """An instance on the agent's node with a TTL check (critical until passed)."""
    body = {"ID": service_id, "Name": "llm", "Address": "10.0.0.1", "Port": port, "Check": {"TTL": "30s"}, **extra}
    assert await put(double.url, "/v1/agent/service/register", body) == 200


async def ttl(double: ConsulDouble, service_id: str, verb: str) -> None:
    assert await put(double.url, f"/v1/agent/check/{verb}/service:{service_id}") == 200


def entry(status: str | list[str] = "passing", dc: str = "dc1", **service: Any) -> dict[str, Any]:
    statuses = [status] if isinstance(status, str) else status
    return {
        "Node": {"Node": "n1", "Address": "10.1.1.1", "Datacenter": dc, "Meta": service.pop("node_meta", {})},
        "Service": {"ID": "s1", "Service": "llm", "Address": "", "Port": 8000, **service},
        "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)],
    }


# --- mapping, pure -------------------------------------------------------------------------------


def test_health_comes_from_every_check_of_the_instance_and_its_node():
    assert check_health(["passing", "passing"]) == "HEALTHY"
    assert check_health([]) == "HEALTHY"
    assert check_health(["passing", "warning"]) == "DEGRADED"
    assert check_health(["warning", "critical"]) == "UNHEALTHY"
    assert check_health(["passing", "maintenance"]) == "UNHEALTHY"


def test_weight_follows_the_health_state():
    weights = {"Weights": {"Passing": 10, "Warning": 2}}
    assert endpoint_from_entry(entry("passing", **weights), "dc1").weight == 10
    degraded = endpoint_from_entry(entry(["passing", "warning"], **weights), "dc1")
    assert (degraded.health, degraded.weight) == ("DEGRADED", 2)
    assert endpoint_from_entry(entry("critical", **weights), "dc1").health == "UNHEALTHY"
    # Warning weight 0: no traffic while warning, which Envoy can only say as UNHEALTHY (weights >= 1)
    silenced = endpoint_from_entry(entry("warning", Weights={"Passing": 3, "Warning": 0}), "dc1")
    assert (silenced.health, silenced.weight) == ("UNHEALTHY", 3)
    assert endpoint_from_entry(entry("passing"), "dc1").weight == 1  # Consul's default weights


def test_address_falls_back_to_the_node_and_sockets_become_unix_addresses():
    assert endpoint_from_entry(entry(), "dc1").address == "10.1.1.1"
    assert endpoint_from_entry(entry(Address="10.2.2.2"), "dc1").address == "10.2.2.2"
    socket = endpoint_from_entry(entry(SocketPath="/run/llm.sock"), "dc1")
    assert (socket.address, socket.port) == ("unix:/run/llm.sock", 0)


def test_locality_prefers_service_locality_then_service_meta_then_node_meta():
    node_only = endpoint_from_entry(entry(node_meta={"zone": "nz", "region": "nr"}), "dc1")
    assert (node_only.region, node_only.zone) == ("nr", "nz")
    meta = endpoint_from_entry(entry(node_meta={"zone": "nz"}, Meta={"zone": "sz"}), "dc1")
    assert meta.zone == "sz"
    locality = endpoint_from_entry(entry(Meta={"zone": "sz"}, Locality={"Region": "r1", "Zone": "z1"}), "dc1")
    assert (locality.region, locality.zone) == ("r1", "z1")
    assert endpoint_from_entry(entry(Meta={"hostname": "api.internal"}), "dc1").hostname == "api.internal"
    assert endpoint_from_entry(entry(), "dc1").hostname == "n1"


def test_priority_is_zero_in_the_local_datacenter_and_one_elsewhere():
    assert endpoint_from_entry(entry(dc="dc1"), "dc1").priority == 0
    assert endpoint_from_entry(entry(dc="dc2"), "dc1").priority == 1
    assert endpoint_from_entry(entry(dc="dc2"), "").priority == 0  # no local datacenter known: all equal


def test_cluster_load_assignment_groups_by_priority_region_and_zone():
    endpoints = [
        Endpoint("10.0.0.1", 80, "HEALTHY", 3, "dc1", "z1", "r1", 0, "a"),
        Endpoint("10.0.0.2", 80, "DEGRADED", 1, "dc1", "z1", "r1", 0, "b"),
        Endpoint("10.0.0.3", 80, "UNHEALTHY", 2, "dc1", "z2", "r1", 0, "c"),
        Endpoint("10.9.0.1", 81, "HEALTHY", 5, "dc2", "z9", "r9", 1, "d"),
        Endpoint("unix:/run/x.sock", 0, "HEALTHY", 1, "dc1", "z1", "r1", 0, "e"),
    ]
    cla = to_cluster_load_assignment("provider_pool", endpoints)
    assert cla.cluster_name == "provider_pool"
    groups = [(g.priority, g.locality.region, g.locality.zone, g.load_balancing_weight.value) for g in cla.endpoints]
    assert groups == [(0, "r1", "z1", 5), (0, "r1", "z2", 2), (1, "r9", "z9", 5)]
    first = cla.endpoints[0].lb_endpoints
    assert [(e.endpoint.address.socket_address.address, e.health_status) for e in first[:2]] == [
        ("10.0.0.1", HealthStatus.HEALTHY),
        ("10.0.0.2", HealthStatus.DEGRADED),
    ]
    assert first[0].load_balancing_weight.value == 3
    assert first[0].endpoint.hostname == "a"
    assert first[2].endpoint.address.pipe.path == "/run/x.sock"
    assert cla.endpoints[1].lb_endpoints[0].health_status == HealthStatus.UNHEALTHY
    assert cla.endpoints[2].lb_endpoints[0].endpoint.address.socket_address.port_value == 81


def test_priorities_stay_dense_when_the_local_datacenter_has_no_endpoints():
    cla = to_cluster_load_assignment("c", [Endpoint("10.9.0.1", 81, "HEALTHY", 1, "dc2", priority=1)])
    assert [g.priority for g in cla.endpoints] == [0]  # Envoy rejects a first priority above 0


# --- the watcher against the double ----------------------------------------------------------------


async def test_instances_map_to_endpoints_with_health_weight_and_locality(double: ConsulDouble):
    await register(double, "llm-1", 8001, Weights={"Passing": 10, "Warning": 1}, Meta={"zone": "a"})
    await register(double, "llm-2", 8002, Locality={"Region": "eu", "Zone": "b"})
    await ttl(double, "llm-1", "pass")
    watcher = CatalogWatcher(double.url, "llm")
    try:
        endpoints = await watcher.fetch_once()
    finally:
        await watcher.close()
    assert watcher.local_datacenter == "dc1"  # asked from the agent
    by_port = {e.port: e for e in endpoints}
    assert by_port[8001] == Endpoint(
        "10.0.0.1", 8001, "HEALTHY", 10, "dc1", "a", "", 0, "double-node", "double-node", "llm-1"
    )
    assert (by_port[8002].health, by_port[8002].region, by_port[8002].zone) == ("UNHEALTHY", "eu", "b")


async def test_the_watch_wakes_on_check_changes_and_reports_only_changes(double: ConsulDouble):
    await register(double, "llm-1", 8001, Weights={"Passing": 4, "Warning": 2})
    watcher = CatalogWatcher(double.url, "llm", local_datacenter="dc1")
    updates: asyncio.Queue[list[Endpoint]] = asyncio.Queue()
    task = asyncio.create_task(watcher.watch(updates.put_nowait))

    async def next_health() -> tuple[str, int]:
        (endpoint,) = await asyncio.wait_for(updates.get(), FAST)
        return endpoint.health, endpoint.weight

    assert await next_health() == ("UNHEALTHY", 4)  # TTL checks start critical
    for verb, expected in (("pass", ("HEALTHY", 4)), ("warn", ("DEGRADED", 2)), ("fail", ("UNHEALTHY", 4))):
        started = time.monotonic()
        await ttl(double, "llm-1", verb)
        assert await next_health() == expected
        assert time.monotonic() - started < 0.5
    since = time.monotonic()
    await ttl(double, "llm-1", "fail")  # same status: no write in Consul, nothing to report
    await asyncio.sleep(0.4)
    assert updates.empty()
    assert double.count("GET", "/v1/health/service/llm", since) <= 1  # it blocks, it does not poll
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_other_datacenters_are_watched_too_and_fail_over_by_priority(double: ConsulDouble):
    await register(double, "llm-1", 8001, Check={"TTL": "30s", "Status": "passing"})
    remote = {
        "Datacenter": "dc2",
        "Node": "far",
        "Address": "10.9.0.1",
        "NodeMeta": {"region": "us-west", "zone": "w1"},
        "Service": {"ID": "llm-far", "Service": "llm", "Port": 9000},
        "Check": {"CheckID": "far-ok", "Name": "ok", "Status": "passing", "ServiceID": "llm-far"},
    }
    assert await put(double.url, "/v1/catalog/register", remote) == 200
    watcher = CatalogWatcher(double.url, "llm", datacenters=("dc1", "dc2"))
    updates: asyncio.Queue[list[Endpoint]] = asyncio.Queue()
    task = asyncio.create_task(watcher.watch(updates.put_nowait))
    endpoints: list[Endpoint] = []
    while len(endpoints) < 2:
        endpoints = await asyncio.wait_for(updates.get(), FAST)
    assert [(e.datacenter, e.priority, e.region, e.zone, e.health) for e in endpoints] == [
        ("dc1", 0, "", "", "HEALTHY"),
        ("dc2", 1, "us-west", "w1", "HEALTHY"),
    ]
    cla = to_cluster_load_assignment("provider_llm", endpoints)
    assert [g.priority for g in cla.endpoints] == [0, 1]
    remote["Check"]["Status"] = "critical"
    assert await put(double.url, "/v1/catalog/register", remote) == 200
    endpoints = await asyncio.wait_for(updates.get(), FAST)
    assert [e.health for e in endpoints] == ["HEALTHY", "UNHEALTHY"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_passing_only_leaves_unhealthy_instances_out(double: ConsulDouble):
    await register(double, "llm-1", 8001)
    await register(double, "llm-2", 8002)
    await ttl(double, "llm-2", "pass")
    watcher = CatalogWatcher(double.url, "llm", local_datacenter="dc1", passing_only=True)
    try:
        assert [e.port for e in await watcher.fetch_once()] == [8002]
    finally:
        await watcher.close()


# --- registration of our own services ----------------------------------------------------------------


async def agent_services(double: ConsulDouble) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(double.url + "/v1/agent/services") as response:
        return await response.json()


async def test_a_ttl_registration_appears_turns_healthy_with_heartbeats_and_leaves_on_shutdown(double: ConsulDouble):
    registration = ServiceRegistration(
        double.url, "ccr-extproc", "extproc-1", 50051, ttl="2s", tags=["grpc"], meta={"zone": "a"}
    )
    async with registration:
        services = await agent_services(double)
        assert services["extproc-1"]["Service"] == "ccr-extproc"
        assert services["extproc-1"]["Port"] == 50051 and services["extproc-1"]["Tags"] == ["grpc"]
        watcher = CatalogWatcher(double.url, "ccr-extproc", local_datacenter="dc1")
        assert [e.health for e in await watcher.fetch_once()] == ["UNHEALTHY"]
        beating = asyncio.create_task(registration.heartbeat())
        await asyncio.sleep(0.1)
        assert [e.health for e in await watcher.fetch_once()] == ["HEALTHY"]
        beating.cancel()
        await watcher.close()
    assert "extproc-1" not in await agent_services(double)
    await registration.deregister()  # twice is fine
    await registration.close()


async def test_an_http_check_is_polled_by_the_agent_and_a_socket_service_registers_its_path(double: ConsulDouble):
    healthy = {"status": 200}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=healthy["status"], text="ok")

    app = web.Application()
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registration = ServiceRegistration(
        double.url,
        "ccr-cp",
        "cp-1",
        "/run/ccr/cp.sock",
        check_http_url=f"http://127.0.0.1:{port}/healthz",
        interval="100ms",
    )
    watcher = CatalogWatcher(double.url, "ccr-cp", local_datacenter="dc1")
    try:
        await registration.register()
        await asyncio.sleep(0.15)
        (endpoint,) = await watcher.fetch_once()
        assert (endpoint.address, endpoint.health) == ("unix:/run/ccr/cp.sock", "HEALTHY")
        healthy["status"] = 503
        await asyncio.sleep(0.3)
        (endpoint,) = await watcher.fetch_once()
        assert endpoint.health == "UNHEALTHY"
    finally:
        await registration.deregister()
        await registration.close()
        await watcher.close()
        await runner.cleanup()


async def test_a_service_critical_for_longer_than_deregister_after_is_removed(double: ConsulDouble):
    registration = ServiceRegistration(double.url, "ccr-x", "x-1", 1234, ttl="30s", deregister_critical_after="200ms")
    try:
        await registration.register()
        assert "x-1" in await agent_services(double)
        await asyncio.sleep(0.5)
        assert "x-1" not in await agent_services(double)
    finally:
        await registration.close()


def test_a_registration_needs_exactly_one_kind_of_check():
    with pytest.raises(ValueError):
        ServiceRegistration("http://127.0.0.1:8500", "a", "a-1", 80)
    with pytest.raises(ValueError):
        ServiceRegistration("http://127.0.0.1:8500", "a", "a-1", 80, check_http_url="http://x/", ttl="5s")
