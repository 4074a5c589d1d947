"""The operator's commands against real processes: `doctor` before `up` (the fake provider as the
upstream), `status` while a gateway runs, after a rejected edit, and once it has stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.gateway import PROVIDER_KEYS, FakeProvider, Gateway, base_policy, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def ccr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccr_gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_doctor_passes_against_the_fake_provider_and_fails_on_a_provider_that_is_down(tmp_path, fake: FakeProvider):
    policy = base_policy(free_port(), fake)
    down = next(p for p in policy["providers"] if p["name"] == "unreachable")
    policy["providers"].remove(down)
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    result = ccr("doctor", "-c", str(path), "--admin-port", str(free_port()), env=PROVIDER_KEYS)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"PASS  provider  fake-anthropic: {fake.url} answered" in "\n".join(lines)
    assert any(line.startswith("PASS  envoy ") for line in lines)
    assert not any("sk-ant-provider-key" in line for line in lines)  # lengths only, never the key

    policy["providers"].append(down)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    result = ccr("doctor", "-c", str(path), "--admin-port", str(free_port()), "--timeout", "2", env=PROVIDER_KEYS)
    assert result.returncode == 1
    assert f"FAIL  provider  unreachable: {down['base_url']} unreachable: connection refused" in result.stdout
    assert result.stdout.splitlines()[-1].endswith("1 failed: not ready: fix the FAIL lines")


def test_status_follows_a_running_gateway_a_rejected_edit_and_its_stop(tmp_path, fake: FakeProvider, monkeypatch):
    state_dir = tmp_path / "state"
    monkeypatch.setenv("CCR_GATEWAY_STATE_DIR", str(state_dir))  # Gateway.start passes os.environ on
    gateway = Gateway.start(tmp_path, base_policy(free_port(), fake), name="status", workers=1)
    try:
        # Right after `up` is ready, Envoy may not have run the first health check of a hop socket yet.
        wait_until(lambda: ccr("status").returncode == 0, 15, "status to report a healthy gateway")
        result = ccr("status")
        assert f"gateway pid {gateway.process.pid}: healthy" in result.stdout
        assert "provider_fake-anthropic" in result.stdout and "requests 1024/1024 free" in result.stdout

        document = json.loads(ccr("status", "--json").stdout)
        (only,) = document["gateways"]
        assert only["healthy"] is True and only["listener"] == gateway.url
        assert only["policy"]["version"] == "1" and "fake-anthropic" in only["policy"]["providers"]
        assert {c["name"] for c in only["clusters"]} >= {"provider_fake-anthropic", "provider_fake-openai"}

        gateway.write_policy(gateway.policy_path.read_text().replace("api: openai", "api: openia"))
        wait_until(lambda: ccr("status").returncode == 1, 15, "status to see the rejected edit")
        text = ccr("status").stdout
        assert "(still pending: the previous policy stays live)" in text
        assert "providers[1].api: must be one of anthropic, openai, gemini, responses, vertex, bedrock (got 'openia')" in text
    finally:
        gateway.stop()
    result = ccr("status")
    assert (result.returncode, result.stdout) == (3, "no gateway running\n")
