"""Multi-region failover on one machine: three "regions" of fake providers (each farther away than
the last: injected latency), two gateways, each in its own region (``up --region``), sharing one
policy whose provider pool spans the three regions (providers[].endpoints).

Under steady load on both gateways, region a's pool is killed (SIGKILL): gateway a's requests move
to the other regions and none fails (attempts that die unanswered are retried on another priority by
Envoy; dead hosts leave the rotation by outlier ejection and active health checks); gateway b never
notices. Region a's pool starts again on the same ports: gateway a's traffic comes back to it.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, free_port, http, wait_until

REGIONS = {"a": 2, "b": 20, "c": 40}  # region -> one-way "distance" (fake provider latency, ms)
HOSTS_PER_REGION = 2
CLIENTS_PER_GATEWAY = 4
BODY = b'{"model": "claude-pool", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}'
HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "client"}


def start_region(workdir: Path, region: str, ports: list[int]) -> list[FakeProvider]:
    latency = ["--latency-ms", str(REGIONS[region]), "--no-record"]
    with ThreadPoolExecutor(len(ports)) as pool:
        return list(pool.map(lambda port: FakeProvider.start(workdir, port, latency), ports))


def pool_policy(listener_port: int, ports: dict[str, list[int]]) -> dict:
    return {
        "listener": {"address": "127.0.0.1", "port": listener_port},
        "providers": [
            {
                "name": "pool",
                "api": "anthropic",
                # Scheme, path and Host header; the pool below is what Envoy dials.
                "base_url": "http://llm-pool.internal:8000",
                "models": ["claude-pool"],
                "endpoints": [
                    {"address": "127.0.0.1", "port": port, "region": region, "zone": f"{region}{index + 1}"}
                    for region, region_ports in ports.items()
                    for index, port in enumerate(region_ports)
                ],
                "resilience": {
                    # A dead host leaves at its first refused connection, and is tried again soon.
                    "outlier_detection": {
                        "consecutive_gateway_failure": 1,
                        "base_ejection_time": "1s",
                        "interval": "500ms",
                    },
                    "health_check": {
                        "path": "/healthz",
                        "interval": "250ms",
                        "timeout": "200ms",
                        "unhealthy_threshold": 1,
                        "healthy_threshold": 1,
                    },
                    # Every request in flight when a region dies may need its retry at once.
                    "retry_budget": {"budget_percent": 100, "min_retry_concurrency": 64},
                },
            }
        ],
    }


class Load:
    """Clients sending requests to one gateway, one after another, until stopped; every answer's
    status is kept with the time it came."""

    def __init__(self, gateway: Gateway, clients: int) -> None:
        self.gateway = gateway
        self.answers: list[tuple[float, int, bytes]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        url = f"{self.gateway.url}/v1/messages"
        while not self._stop.is_set():
            try:
                status, _, body = http("POST", url, BODY, HEADERS, timeout=10)
            except OSError as exc:  # a connection the gateway refused or dropped counts as a failure
                status, body = 0, repr(exc).encode()
            self.answers.append((time.monotonic(), status, body[:300]))

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=15)

    def failures(self) -> list[tuple[float, int, bytes]]:
        return [answer for answer in self.answers if answer[1] != 200]


def requests_per_region(gateway: Gateway, ports: dict[str, list[int]]) -> Counter[str]:
    """Requests each region's hosts answered for this gateway (Envoy's per-host counters)."""
    text = http("GET", f"{gateway.admin}/clusters")[2].decode()
    region_of = {port: region for region, region_ports in ports.items() for port in region_ports}
    counts: Counter[str] = Counter()
    for port_text, total in re.findall(r"^provider_pool::127\.0\.0\.1:(\d+)::rq_total::(\d+)$", text, re.MULTILINE):
        counts[region_of[int(port_text)]] += int(total)
    return counts


def since(before: Counter[str], after: Counter[str]) -> Counter[str]:
    return Counter({region: after[region] - before[region] for region in after})


@pytest.fixture(scope="module")
def regions(workdir: Path) -> Iterator[tuple[dict[str, list[int]], dict[str, list[FakeProvider]]]]:
    ports = {region: [free_port() for _ in range(HOSTS_PER_REGION)] for region in REGIONS}
    fakes = {region: start_region(workdir, region, ports[region]) for region in REGIONS}
    yield ports, fakes
    for providers in fakes.values():
        for provider in providers:
            if provider.process.poll() is None:
                provider.stop()


def test_a_region_killed_under_load_fails_over_with_no_failed_request_and_comes_back(
    workdir: Path, regions: tuple[dict[str, list[int]], dict[str, list[FakeProvider]]]
) -> None:
    ports, fakes = regions
    gateways = {
        region: Gateway.start(
            workdir,
            pool_policy(free_port(), ports),
            f"region-{region}",
            workers=1,
            args=["--region", region, "--no-ledger"],
        )
        for region in ("a", "b")
    }
    try:
        loads = {region: Load(gateway, CLIENTS_PER_GATEWAY) for region, gateway in gateways.items()}
        with loads["a"].running(), loads["b"].running():
            # Steady state: each gateway's traffic stays in its own region.
            time.sleep(1.0)
            steady = {region: requests_per_region(gateway, ports) for region, gateway in gateways.items()}
            time.sleep(2.0)
            before_kill = {region: requests_per_region(gateway, ports) for region, gateway in gateways.items()}
            for region, counts in before_kill.items():
                window = since(steady[region], counts)
                assert window[region] > 0 and sum(window.values()) == window[region], (region, window)

            # Region a's pool dies.
            killed = time.monotonic()
            for provider in fakes["a"]:
                provider.process.send_signal(signal.SIGKILL)
                provider.process.wait(timeout=10)
            time.sleep(3.0)
            after_kill = {region: requests_per_region(gateway, ports) for region, gateway in gateways.items()}
            outage_a = since(before_kill["a"], after_kill["a"])
            outage_b = since(before_kill["b"], after_kill["b"])
            assert outage_a["b"] + outage_a["c"] > 0, outage_a  # served from the other regions
            assert outage_b["a"] == 0 and outage_b["b"] > 0, outage_b  # region b never noticed

            # Region a comes back, on the same ports: gateway a's traffic returns to it.
            restarting = time.monotonic()
            fakes["a"] = start_region(workdir, "a", ports["a"])
            restarted = time.monotonic()

            def local_again() -> Counter[str] | None:
                """A half-second window in which region a answered all of gateway a's requests."""
                before = requests_per_region(gateways["a"], ports)
                time.sleep(0.5)
                window = since(before, requests_per_region(gateways["a"], ports))
                return window if window["a"] > 0 and window["a"] == sum(window.values()) else None

            back = wait_until(local_again, 60, "gateway a's traffic all back in region a", interval=0)
            recovered = time.monotonic()
        answered = {region: len(load.answers) for region, load in loads.items()}
        failed = {region: load.failures() for region, load in loads.items()}
        print(
            f"\nmulti-region failover: {answered} requests answered (gateway: count), failed"
            f" { ({region: len(f) for region, f in failed.items()}) }; while region a was down gateway a sent"
            f" {dict(outage_a)} (region: requests); region a restarted in {restarted - restarting:.2f} s,"
            f" {restarted - killed:.2f} s after the kill; gateway a back in region a"
            f" {recovered - restarted:.2f} s after it answered (a half-second window all local: {dict(back)})"
        )
        assert not failed["a"] and not failed["b"], failed
    finally:
        for gateway in gateways.values():
            gateway.stop()
