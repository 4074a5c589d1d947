"""Issue acceptance: `ccr-gateway up --consul URL` (against the Consul double), a `policy push`
changes routing live with zero failed requests, a broken policy in KV changes nothing but the
status key, and a KV edit reaches Envoy's config_dump quickly."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.gateway import FakeProvider, free_port, http, wait_until
from tests.e2e.test_hot_reload import Traffic


@pytest.fixture(scope="module")
def consul(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = open(workdir / "consul-double.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.consul_double", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http("GET", f"{url}/v1/kv/?recurse", timeout=1)[0] in (200, 404), 15, "the Consul double")
    yield url
    process.terminate()
    process.wait(timeout=10)


def _policy(port: int, fake: FakeProvider, extra_model: bool = False) -> dict:
    models = ["claude-sonnet-4-5"] + (["claude-extra"] if extra_model else [])
    return {
        "listener": {"address": "127.0.0.1", "port": port},
        "providers": [{"name": "fake", "api": "anthropic", "base_url": fake.url, "models": models}],
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccr_gateway.cli", *args], capture_output=True, text=True)


def _push(consul: str, path: Path, policy: dict) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return _cli("policy", "push", str(path), "--consul", consul)


class _Gateway:
    def __init__(self, url: str) -> None:
        self.url = url


def _ask(url: str, model: str) -> int:
    body = json.dumps({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode()
    return http("POST", f"{url}/v1/messages", body, {"content-type": "application/json"})[0]


def _status(consul: str) -> dict:
    return json.loads(http("GET", f"{consul}/v1/kv/ccr-gateway/status?raw")[2])


def test_up_with_consul_push_changes_routing_live_and_a_broken_policy_changes_only_the_status(
    workdir: Path, consul: str, fake: FakeProvider
):
    listener, admin = free_port(), free_port()
    local = workdir / "consul-policy.yaml"
    pushed = _push(consul, local, _policy(listener, fake))
    assert pushed.returncode == 0, pushed.stderr
    log = workdir / "up-consul.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "ccr_gateway.cli", "up", "--consul", consul, "--admin-port", str(admin)],
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{listener}"
    try:
        wait_until(lambda: "is ready on" in log.read_text() or process.poll() is not None, 60, "up --consul")
        assert process.poll() is None, log.read_text()
        assert _ask(url, "claude-sonnet-4-5") == 200
        assert _ask(url, "claude-extra") == 404
        # The gateway's own processes are in the catalog, healthy.
        for service in ("ccr-control-plane", "ccr-extproc"):  # TTL checks pass within a heartbeat (~3 s)
            wait_until(
                lambda s=service: json.loads(http("GET", f"{consul}/v1/health/service/{s}?passing")[2] or b"[]"),
                10,
                f"{service} to be registered and passing in Consul",
            )

        with Traffic(_Gateway(url), ["claude-sonnet-4-5"]) as traffic:  # type: ignore[arg-type]
            started = time.monotonic()
            pushed = _push(consul, local, _policy(listener, fake, extra_model=True))
            assert pushed.returncode == 0, pushed.stderr
            wait_until(lambda: _ask(url, "claude-extra") == 200, 10, "the pushed policy to route")
            elapsed = time.monotonic() - started
            assert _status(consul)["accepted"] is True

            # A broken policy written straight into KV (bypassing push's own validation).
            broken = yaml.safe_dump(_policy(listener, fake)).replace("api: anthropic", "api: antropic")
            assert http("PUT", f"{consul}/v1/kv/ccr-gateway/policy", broken.encode())[0] == 200
            wait_until(lambda: _status(consul)["accepted"] is False, 10, "the status key to report the rejection")
            assert "antropic" in _status(consul)["error"]
            time.sleep(0.5)
            assert _ask(url, "claude-extra") == 200  # the last good policy is still in force
        assert set(traffic.statuses["claude-sonnet-4-5"]) == {200}, traffic.statuses
        assert elapsed < 5, f"a push took {elapsed:.1f}s to route"

        # A KV edit reaches Envoy's config_dump within 2 s.
        edited = copy.deepcopy(_policy(listener, fake, extra_model=True))
        edited["providers"].append(
            {"name": "second", "api": "openai", "base_url": f"{fake.url}/v1", "models": ["gpt-x"]}
        )
        started = time.monotonic()
        assert _push(consul, local, edited).returncode == 0
        dump_url = f"http://127.0.0.1:{admin}/config_dump?resource=dynamic_active_clusters"
        wait_until(lambda: b"provider_second" in http("GET", dump_url)[2], 5, "the new cluster in config_dump")
        assert time.monotonic() - started < 2.0

        # 20 edits under load (providers and models coming and going): no request fails.
        with Traffic(_Gateway(url), ["claude-sonnet-4-5"]) as traffic:  # type: ignore[arg-type]
            for round_ in range(20):
                policy = _policy(listener, fake, extra_model=round_ % 2 == 0)
                if round_ % 3 == 0:
                    policy["providers"].append(
                        {"name": f"p{round_}", "api": "openai", "base_url": f"{fake.url}/v1", "models": [f"m{round_}"]}
                    )
                assert _push(consul, local, policy).returncode == 0
                time.sleep(0.25)
            final = 19
            wait_until(lambda: _ask(url, "claude-extra") == 404, 10, f"edit {final} to be in force")
        assert set(traffic.statuses["claude-sonnet-4-5"]) == {200}, traffic.statuses
        assert sum(traffic.statuses["claude-sonnet-4-5"].values()) > 20
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert json.loads(http("GET", f"{consul}/v1/health/service/ccr-extproc")[2]) == []  # deregistered


def test_push_refuses_an_invalid_policy_and_a_stale_cas(workdir: Path, consul: str, fake: FakeProvider):
    local = workdir / "bad.yaml"
    local.write_text("providers: [ {name: x, api: nope} ]\n")
    result = _cli("policy", "push", str(local), "--consul", consul)
    assert result.returncode == 2 and "nope" in result.stderr
    good = workdir / "good.yaml"
    good.write_text(yaml.safe_dump(_policy(free_port(), fake)))
    result = _cli("policy", "push", str(good), "--consul", consul, "--cas", "1")
    assert result.returncode == 3, result.stderr + result.stdout


def _register(consul: str, service_id: str, port: int) -> None:
    body = {
        "ID": service_id,
        "Name": "llm-pool",
        "Address": "127.0.0.1",
        "Port": port,
        "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "10m"},
    }
    assert http("PUT", f"{consul}/v1/agent/service/register", json.dumps(body).encode())[0] == 200
    assert http("PUT", f"{consul}/v1/agent/check/pass/service:{service_id}")[0] == 200


def test_a_catalog_pool_gets_its_endpoints_and_health_from_consul(workdir: Path, consul: str):
    pool = [FakeProvider.start(workdir), FakeProvider.start(workdir)]
    listener, admin = free_port(), free_port()
    try:
        for index, member in enumerate(pool):
            _register(consul, f"pool-{index}", member.port)
        policy = {
            "listener": {"address": "127.0.0.1", "port": listener},
            "providers": [
                {
                    "name": "pool",
                    "api": "openai",
                    "base_url": "http://llm-pool/v1",
                    "consul_service": "llm-pool",
                    "models": ["llama-3"],
                }
            ],
        }
        assert _push(consul, workdir / "pool.yaml", policy).returncode == 0
        log = workdir / "up-pool.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "ccr_gateway.cli", "up", "--consul", consul, "--admin-port", str(admin)],
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{listener}"
        try:
            wait_until(lambda: "is ready on" in log.read_text() or process.poll() is not None, 60, "up --consul")
            assert process.poll() is None, log.read_text()
            body = json.dumps({"model": "llama-3", "messages": [{"role": "user", "content": "x"}]}).encode()
            ok = lambda: http("POST", f"{url}/v1/chat/completions", body, {"content-type": "application/json"})[0]  # noqa: E731
            wait_until(lambda: ok() == 200, 10, "the pool's endpoints to arrive from the catalog")
            for _ in range(8):
                assert ok() == 200
            assert pool[0].requests() and pool[1].requests()  # both instances serve
            # One instance fails its check: Envoy marks it unhealthy and stops sending to it.
            assert http("PUT", f"{consul}/v1/agent/check/fail/service:pool-1")[0] == 200
            clusters = f"http://127.0.0.1:{admin}/clusters"
            wait_until(lambda: b"/failed_eds_health" in http("GET", clusters)[2], 5, "Envoy to see the failed check")
            pool[1].clear()
            for _ in range(8):
                assert ok() == 200
            assert pool[1].requests() == []
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    finally:
        for member in pool:
            member.stop()
