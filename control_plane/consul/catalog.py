"""Endpoints from Consul's catalog (health of a service, per datacenter) -> Envoy EDS; and the
registration of the gateway's own services.

Mapping, one Consul health entry (node + service instance + checks) -> one ``Endpoint``:

- health: every check (node checks such as serfHealth included) passing -> HEALTHY; any critical
  (or maintenance) -> UNHEALTHY; otherwise (a warning) -> DEGRADED. Envoy sends traffic to
  DEGRADED hosts only when there are not enough HEALTHY ones.
- weight: Service.Weights.Passing when healthy, .Warning when degraded (Consul's own DNS weights).
  A Warning weight of 0 means "no traffic while warning", which Envoy spells UNHEALTHY (weights
  must be >= 1).
- locality: datacenter from Node.Datacenter; region/zone from Service.Locality (Consul >= 1.17),
  else Service.Meta, else Node.Meta (keys ``region``, ``zone``).
- priority: 0 in the local datacenter, 1 elsewhere, so Envoy fails over to other datacenters only
  when the local priority is not healthy enough (its overprovisioning factor).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import consul
from envoy.config.core.v3.address_pb2 import Address, Pipe, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint as EnvoyEndpoint
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.wrappers_pb2 import UInt32Value

from control_plane.consul.client import (
    DEFAULT_ADDRESS,
    DEFAULT_SETTINGS,
    REQUEST_TIMEOUT,
    TRANSIENT_ERRORS,
    Backoff,
    BlockingLoop,
    LoopSettings,
    blocking_timeout,
    consul_index,
    make_client,
    parse_duration,
)

log = logging.getLogger("ccr.control_plane.consul.catalog")

Health = Literal["HEALTHY", "UNHEALTHY", "DEGRADED"]
_ENVOY_HEALTH = {
    "HEALTHY": HealthStatus.HEALTHY,
    "UNHEALTHY": HealthStatus.UNHEALTHY,
    "DEGRADED": HealthStatus.DEGRADED,
}


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    address: str  # IP (or host name, see to_cluster_load_assignment), or "unix:/path" for a socket
    port: int
    health: Health
    weight: int  # >= 1
    datacenter: str = ""
    zone: str = ""
    region: str = ""
    priority: int = 0
    hostname: str = ""  # Envoy's endpoint hostname (auto_host_rewrite); Service.Meta.hostname or node name
    node: str = ""
    service_id: str = ""


def check_health(statuses: Iterable[str]) -> Health:
    seen = set(statuses)
    if seen - {"passing", "warning"}:  # critical, maintenance, anything unknown
        return "UNHEALTHY"
    return "DEGRADED" if "warning" in seen else "HEALTHY"


def endpoint_from_entry(entry: dict[str, Any], local_datacenter: str) -> Endpoint:
    """One element of GET /v1/health/service/<name> -> an Endpoint."""
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    checks = entry.get("Checks") or []
    health = check_health(str(c.get("Status", "")) for c in checks)
    weights = service.get("Weights") or {}
    passing, warning = int(weights.get("Passing", 1) or 1), int(weights.get("Warning", 1))
    weight = passing
    if health == "DEGRADED":
        if warning < 1:
            health, weight = "UNHEALTHY", passing
        else:
            weight = warning
    locality = service.get("Locality") or {}
    service_meta, node_meta = service.get("Meta") or {}, node.get("Meta") or {}

    def place(key: str) -> str:
        return str(locality.get(key.capitalize()) or service_meta.get(key) or node_meta.get(key) or "")

    datacenter = str(node.get("Datacenter") or "")
    if service.get("SocketPath"):
        address, port = "unix:" + str(service["SocketPath"]), 0
    else:
        address, port = str(service.get("Address") or node.get("Address") or ""), int(service.get("Port") or 0)
    return Endpoint(
        address=address,
        port=port,
        health=health,
        weight=max(1, weight),
        datacenter=datacenter,
        zone=place("zone"),
        region=place("region"),
        priority=0 if not local_datacenter or datacenter == local_datacenter else 1,
        hostname=str(service_meta.get("hostname") or node.get("Node") or ""),
        node=str(node.get("Node") or ""),
        service_id=str(service.get("ID") or ""),
    )


def endpoints_from_health(entries: list[dict[str, Any]] | None, local_datacenter: str) -> list[Endpoint]:
    return sorted(endpoint_from_entry(entry, local_datacenter) for entry in entries or [])


def local_region_first(endpoints: list[Endpoint], region: str) -> list[Endpoint]:
    """With the control plane's region (``--region``) and any endpoint in it: that region's
    endpoints are priority 0, every other one priority 1, as for a policy's own pools
    (control_plane.resources.localities). Otherwise the datacenter's priorities stand."""
    if not region or not any(e.region == region for e in endpoints):
        return endpoints
    return [replace(e, priority=0 if e.region == region else 1) for e in endpoints]


def to_cluster_load_assignment(cluster_name: str, endpoints: Iterable[Endpoint]) -> ClusterLoadAssignment:
    """Endpoints -> EDS resource: one LocalityLbEndpoints per (priority, region, zone), in that order
    (Envoy requires priorities to start at 0 and have no gaps, which 0 local / 1 other keeps as
    long as there are local endpoints; otherwise the priorities are renumbered densely).

    EDS addresses must be IPs (or unix sockets): a host name is passed through unchanged and Envoy
    rejects it, so name-addressed services belong in a STRICT_DNS cluster instead."""
    groups: dict[tuple[int, str, str], list[Endpoint]] = {}
    for endpoint in sorted(endpoints):
        groups.setdefault((endpoint.priority, endpoint.region, endpoint.zone), []).append(endpoint)
    dense = {priority: rank for rank, priority in enumerate(sorted({key[0] for key in groups}))}
    assignment = ClusterLoadAssignment(cluster_name=cluster_name)
    for (priority, region, zone), members in sorted(groups.items()):
        group = assignment.endpoints.add(
            locality=Locality(region=region, zone=zone),
            priority=dense[priority],
            load_balancing_weight=UInt32Value(value=sum(e.weight for e in members)),
        )
        for endpoint in members:
            group.lb_endpoints.append(
                LbEndpoint(
                    endpoint=EnvoyEndpoint(address=_address(endpoint), hostname=endpoint.hostname),
                    health_status=_ENVOY_HEALTH[endpoint.health],
                    load_balancing_weight=UInt32Value(value=endpoint.weight),
                )
            )
    return assignment


def _address(endpoint: Endpoint) -> Address:
    if endpoint.address.startswith("unix:"):
        return Address(pipe=Pipe(path=endpoint.address[len("unix:") :]))
    return Address(socket_address=SocketAddress(address=endpoint.address, port_value=endpoint.port))


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class CatalogWatcher:
    """The instances of one Consul service, in one or more datacenters, as Envoy endpoints.

    One blocking query per datacenter (``/v1/health/service/<name>?dc=``), each with the loop rules
    of ``BlockingLoop``; ``on_endpoints`` gets the merged, sorted list whenever it changed. A
    datacenter that cannot be reached keeps its last known endpoints (like Consul serving stale).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        service_name: str = "",
        *,
        local_datacenter: str | None = None,
        datacenters: Iterable[str] = (),
        token: str | None = None,
        tag: str | None = None,
        passing_only: bool = False,
        settings: LoopSettings = DEFAULT_SETTINGS,
    ) -> None:
        if not service_name:
            raise ValueError("service_name is required")
        parse_duration(settings.wait)
        self.address = address
        self.service_name = service_name
        self.local_datacenter = local_datacenter
        self.datacenters = tuple(datacenters)
        self.token = token
        self.tag = tag
        self.passing_only = passing_only  # False: Envoy also learns about unhealthy instances
        self.settings = settings
        self.endpoints: list[Endpoint] = []
        self._by_dc: dict[str, list[Endpoint]] = {}
        self._client: consul.aio.Consul | None = None

    def client(self) -> consul.aio.Consul:
        if self._client is None:
            self._client = make_client(self.address, self.token, None, blocking_timeout(self.settings.wait))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def resolve_datacenters(self) -> tuple[str, tuple[str, ...]]:
        """The local datacenter (asked from the agent unless given) and the datacenters to watch."""
        if self.local_datacenter is None:
            info = await asyncio.wait_for(self.client().agent.self(), REQUEST_TIMEOUT)
            self.local_datacenter = str(info["Config"]["Datacenter"])
        watched = self.datacenters or (self.local_datacenter,)
        return self.local_datacenter, tuple(dict.fromkeys(watched))

    async def _fetch(self, datacenter: str, index: int, wait: str) -> tuple[int, list[Endpoint]]:
        query = self.client().health.service(
            self.service_name,
            index=index or None,
            wait=wait,
            passing=self.passing_only or None,
            tag=self.tag,
            dc=datacenter,
        )
        # py-consul takes no per-request timeout here: the session's covers the longest wait.
        returned, entries = await (query if index else asyncio.wait_for(query, REQUEST_TIMEOUT))
        return consul_index(returned), endpoints_from_health(entries, self.local_datacenter or "")

    async def fetch_once(self) -> list[Endpoint]:
        """One non-blocking read of every watched datacenter."""
        _, datacenters = await self.resolve_datacenters()
        for datacenter in datacenters:
            _, self._by_dc[datacenter] = await self._fetch(datacenter, 0, self.settings.wait)
        self.endpoints = sorted(e for found in self._by_dc.values() for e in found)
        return self.endpoints

    async def watch(self, on_endpoints: Callable[[list[Endpoint]], None]) -> None:
        """Runs until cancelled. The first call of ``on_endpoints`` comes with the first answer of
        any datacenter (the local one is asked first); later calls only when the list changed."""
        try:
            _, datacenters = await self._resolve_with_retry()
            published: list[Endpoint] | None = None

            def merge(datacenter: str, found: list[Endpoint]) -> None:
                nonlocal published
                self._by_dc[datacenter] = found
                merged = sorted(e for group in self._by_dc.values() for e in group)
                if merged != published:
                    published = self.endpoints = merged
                    on_endpoints(merged)

            async with asyncio.TaskGroup() as group:
                for datacenter in datacenters:
                    loop: BlockingLoop[list[Endpoint]] = BlockingLoop(
                        f"health:{self.service_name}@{datacenter}",
                        lambda index, wait, dc=datacenter: self._fetch(dc, index, wait),
                        self.settings,
                    )
                    group.create_task(loop.run(lambda _index, found, dc=datacenter: merge(dc, found)))
        finally:
            await self.close()

    async def _resolve_with_retry(self) -> tuple[str, tuple[str, ...]]:
        backoff = Backoff(self.settings.backoff_min, self.settings.backoff_max)
        while True:
            try:
                return await self.resolve_datacenters()
            except (*TRANSIENT_ERRORS, KeyError) as exc:
                delay = backoff.next()
                log.warning("cannot ask the Consul agent for its datacenter (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)


# --- registration of the gateway's own services ------------------------------------------------------


class ServiceRegistration:
    """Registers one of the gateway's own services with the local Consul agent, and removes it on
    shutdown (``async with ServiceRegistration(...)``). Health is an HTTP check the agent polls, or
    a TTL check this process keeps passing (``heartbeat()``).

    ``port_or_socket``: a TCP port, or a unix socket path (registered as SocketPath)."""

    def __init__(
        self,
        address: str,
        name: str,
        service_id: str,
        port_or_socket: int | str,
        check_http_url: str | None = None,
        ttl: str | None = None,
        *,
        service_address: str = "",
        tags: Iterable[str] = (),
        meta: dict[str, str] | None = None,
        weights: tuple[int, int] = (1, 1),
        interval: str = "10s",
        deregister_critical_after: str = "1m",
        token: str | None = None,
    ) -> None:
        if (check_http_url is None) == (ttl is None):
            raise ValueError("give exactly one of check_http_url and ttl")
        for duration in (ttl or "1s", interval, deregister_critical_after):
            parse_duration(duration)
        self.address = address
        self.name = name
        self.service_id = service_id
        self.port_or_socket = port_or_socket
        self.check_http_url = check_http_url
        self.ttl = ttl
        self.service_address = service_address
        self.tags = list(tags)
        self.meta = dict(meta or {})
        self.weights = weights
        self.interval = interval
        self.deregister_critical_after = deregister_critical_after
        self.token = token
        self.registered = False
        self._client: consul.aio.Consul | None = None

    @property
    def check_id(self) -> str:
        """The ID Consul gives the only check of a service registered with one."""
        return f"service:{self.service_id}"

    def definition(self) -> dict[str, Any]:
        check: dict[str, Any] = {"DeregisterCriticalServiceAfter": self.deregister_critical_after}
        if self.check_http_url is not None:
            check.update(HTTP=self.check_http_url, Interval=self.interval)
        else:
            check["TTL"] = self.ttl
        payload: dict[str, Any] = {
            "name": self.name,
            "service_id": self.service_id,
            "address": self.service_address or None,
            "tags": self.tags or None,
            "meta": self.meta or None,
            "weights": {"Passing": self.weights[0], "Warning": self.weights[1]},
            "check": check,
        }
        if isinstance(self.port_or_socket, str):
            payload["socket_path"] = self.port_or_socket
        else:
            payload["port"] = self.port_or_socket
        return payload

    def client(self) -> consul.aio.Consul:
        if self._client is None:
            self._client = make_client(self.address, self.token)
        return self._client

    async def register(self) -> None:
        ok = await asyncio.wait_for(self.client().agent.service.register(**self.definition()), REQUEST_TIMEOUT)
        if not ok:
            raise consul.ConsulException(f"the agent refused to register service {self.service_id!r}")
        self.registered = True
        log.info("registered service %s (%s) with the Consul agent", self.service_id, self.name)

    async def deregister(self) -> None:
        """Idempotent; a service the agent no longer knows counts as deregistered."""
        try:
            await asyncio.wait_for(self.client().agent.service.deregister(self.service_id), REQUEST_TIMEOUT)
        except consul.NotFound:
            pass
        finally:
            self.registered = False
        log.info("deregistered service %s from the Consul agent", self.service_id)

    async def set_ttl(self, status: Literal["pass", "warn", "fail"], note: str | None = None) -> None:
        agent_check = self.client().agent.check
        update = {"pass": agent_check.ttl_pass, "warn": agent_check.ttl_warn, "fail": agent_check.ttl_fail}[status]
        await asyncio.wait_for(update(self.check_id, notes=note), REQUEST_TIMEOUT)

    async def heartbeat(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Keep a TTL check passing (every TTL/3) while ``healthy()``; runs until cancelled."""
        if self.ttl is None:
            raise ValueError("heartbeat() needs a TTL check")
        period = max(parse_duration(self.ttl) / 3, 0.05)
        while True:
            try:
                await self.set_ttl("pass" if healthy() else "fail")
            except TRANSIENT_ERRORS as exc:
                log.warning("TTL heartbeat for %s failed: %s", self.service_id, exc)
            await asyncio.sleep(period)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> ServiceRegistration:
        await self.register()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.deregister()
        except TRANSIENT_ERRORS as exc:  # shutting down anyway
            log.warning("cannot deregister %s: %s", self.service_id, exc)
        finally:
            await self.close()
