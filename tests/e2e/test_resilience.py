"""Per-provider resilience settings, observed in a real Envoy: an open circuit breaker, an ejected
provider, and a fallback chain that skips its ejected primary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from control_plane.policy import load_policy
from tests.e2e.gateway import FakeProvider, Gateway, free_port, http, wait_until


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    """Fake providers of this module's own: the tests below make them slow or failing."""
    with ThreadPoolExecutor(3) as pool:
        names = ("upstream", "primary", "backup")
        started = dict(zip(names, pool.map(lambda _: FakeProvider.start(workdir), names), strict=True))
    yield started
    for provider in started.values():
        provider.stop()


@pytest.fixture(autouse=True)
def _reset(fakes: dict[str, FakeProvider]) -> None:
    for provider in fakes.values():
        provider.configure(reset=True)
        provider.clear()


def resilience_policy(port: int, fakes: dict[str, FakeProvider]) -> dict:
    upstream = fakes["upstream"].url
    return {
        "listener": {"address": "127.0.0.1", "port": port},
        "providers": [
            {
                # One request at a time and one waiting for a connection (the minimum: every
                # request waits while its connection is set up): concurrent ones overflow.
                "name": "limited",
                "api": "anthropic",
                "base_url": upstream,
                "models": ["claude-limited"],
                "resilience": {"max_requests": 1, "max_pending_requests": 1},
            },
            {
                "name": "flaky",
                "api": "anthropic",
                "base_url": upstream,
                "models": ["claude-flaky"],
                "resilience": {"outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "60s"}},
            },
            {
                "name": "primary",
                "api": "anthropic",
                "base_url": fakes["primary"].url,
                "models": ["claude-primary"],
                "resilience": {"outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "60s"}},
            },
            {"name": "backup", "api": "openai", "base_url": f"{fakes['backup'].url}/v1", "models": ["gpt-backup"]},
            {
                "name": "hasty",
                "api": "anthropic",
                "base_url": upstream,
                "models": ["claude-hasty"],
                "resilience": {"request_timeout": "1s"},
            },
            # Active checks, on the provider clusters and on their chain (both checked alike).
            {
                "name": "checked",
                "api": "anthropic",
                "base_url": upstream,
                "models": ["claude-checked"],
                "resilience": {"health_check": HEALTH_CHECK, "http2": False},
            },
            {
                "name": "checked-too",
                "api": "openai",
                "base_url": f"{upstream}/v1",
                "models": ["gpt-checked"],
                "resilience": {"health_check": HEALTH_CHECK},
            },
            # Never called: Envoy must accept its cluster (TLS overrides, HTTP/2 only) for the
            # gateway to become ready.
            {
                "name": "tls-pool",
                "api": "openai",
                "base_url": f"https://127.0.0.1:{free_port()}/v1",
                "models": ["gpt-tls"],
                "resilience": {
                    "tls": {"sni": "pool.internal", "ca_file": "/etc/ssl/certs/ca-certificates.crt"},
                    "http2": True,
                    "connect_timeout": "1s",
                    "idle_timeout": "5m",
                    "retry_budget": False,
                },
            },
        ],
        "fallback": {
            "primary,claude-primary": ["backup,gpt-backup"],
            "checked,claude-checked": ["checked-too,gpt-checked"],
        },
    }


HEALTH_CHECK = {"path": "/healthz", "interval": "500ms", "timeout": "1s", "expected_statuses": [200, 204]}


@pytest.fixture(scope="module")
def gw(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Gateway]:
    gateway = Gateway.start(workdir, resilience_policy(free_port(), fakes), name="resilience")
    yield gateway
    gateway.stop()


def ask(gateway: Gateway, model: str) -> tuple[int, dict[str, str], dict]:
    body = json.dumps({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    status, headers, raw = http(
        "POST",
        f"{gateway.url}/v1/messages",
        body.encode(),
        {"content-type": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(raw)


def stat(gateway: Gateway, name: str) -> int:
    return gateway.envoy_stat(name)


def chain_cluster(gateway: Gateway, primary: str) -> str:
    chains = load_policy(yaml.safe_dump(gateway.policy)).routing.fallbacks
    return next(chain.cluster for chain in chains if chain.primary.provider == primary)


def route_of(headers: dict[str, str]) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in headers["x-ccr-route"].split(";"))


def test_requests_over_a_providers_limit_get_a_503_overflow_in_the_clients_format(gw, fakes):
    fakes["upstream"].configure(latency_ms=1500)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ask(gw, "claude-limited"), range(4)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for status, _, body in results:
        if status == 503:
            assert body["type"] == "error" and body["error"]["type"] == "api_error", body
            assert "concurrency limit" in body["error"]["message"], body
    # Which limit refused a request depends on timing: max_requests (active) or max_pending_requests.
    overflows = sum(stat(gw, f"cluster.provider_limited.upstream_rq_{kind}_overflow") for kind in ("active", "pending"))
    assert overflows == statuses.count(503)
    assert len(fakes["upstream"].requests()) == statuses.count(200)  # overflowed requests never left Envoy


def test_a_provider_failing_in_a_row_is_ejected_yet_still_answers_when_it_is_the_only_host(gw, fakes):
    fakes["upstream"].configure(status=500)
    for _ in range(2):
        assert ask(gw, "claude-flaky")[0] == 500
    wait_until(
        lambda: stat(gw, "cluster.provider_flaky.outlier_detection.ejections_enforced_total") >= 1, 5, "the ejection"
    )
    assert stat(gw, "cluster.provider_flaky.outlier_detection.ejections_active") == 1
    # Envoy's panic threshold (kept on provider clusters): the one host gets the request anyway, and
    # the client sees the provider's own error rather than "no healthy upstream".
    fakes["upstream"].configure(reset=True)
    status, _, body = ask(gw, "claude-flaky")
    assert status == 200, body


def test_a_chain_skips_its_ejected_primary_and_goes_straight_to_the_fallback(gw, fakes):
    chain = chain_cluster(gw, "primary")
    fakes["primary"].configure(status=500)
    for _ in range(2):  # each one fails on the primary, then the fallback answers
        status, headers, _ = ask(gw, "claude-primary")
        assert status == 200 and route_of(headers)["attempts"] == "2"
    wait_until(lambda: stat(gw, f"cluster.{chain}.outlier_detection.ejections_active") == 1, 5, "the ejection")
    fakes["primary"].clear()
    status, headers, body = ask(gw, "claude-primary")
    assert status == 200, body
    route = route_of(headers)
    assert (route["provider"], route["attempts"]) == ("backup", "1")
    assert fakes["primary"].requests() == []
    assert fakes["backup"].requests()[-1]["path"] == "/v1/chat/completions"


def test_active_health_checks_and_tls_settings_are_accepted_by_envoy(gw, fakes):
    assert {"provider_tls-pool", "provider_checked", chain_cluster(gw, "checked")} <= gw.dynamic_clusters()
    wait_until(lambda: stat(gw, "cluster.provider_checked.health_check.success") >= 1, 5, "a passed health check")
    # The chain checks each of its hosts (one per provider).
    chain = chain_cluster(gw, "checked")
    wait_until(lambda: stat(gw, f"cluster.{chain}.health_check.success") >= 2, 5, "both chain hosts checked")
    assert stat(gw, f"cluster.{chain}.membership_healthy") == 2
    status, headers, _ = ask(gw, "claude-checked")
    assert status == 200 and route_of(headers)["provider"] == "checked"


def test_a_providers_own_request_timeout_answers_504_in_the_clients_format(gw, fakes):
    fakes["upstream"].configure(latency_ms=3000)
    status, _, body = ask(gw, "claude-hasty")
    assert status == 504
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "did not answer in time" in body["error"]["message"], body
