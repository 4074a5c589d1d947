"""`ccr-gateway up` as a supervisor: whatever stops it, nothing it started survives it; a child
that dies is replaced while the rest serve; its state file says what happened."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.gateway import http, wait_until
from tests.e2e.supervision import Up, alive, start_up

MESSAGE = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})


def ask(up: Up) -> int:
    headers = {"content-type": "application/json", "x-api-key": "any"}
    status, _, body = http("POST", f"{up.url}/v1/messages", MESSAGE.encode(), headers)
    assert status == 200, body
    return status


@pytest.mark.parametrize("after_seconds", [0.3, 1.2, 2.0])
def test_sigterm_during_startup_stops_everything_started_so_far(tmp_path: Path, after_seconds: float):
    up = start_up(tmp_path)
    deadline = time.monotonic() + after_seconds
    while time.monotonic() < deadline:
        up.note_children()
        time.sleep(0.02)
    started = time.monotonic()
    code = up.stop(signal.SIGTERM)
    assert time.monotonic() - started < 15, up.log()
    # 1 only when a child it had started failed first; killed by the signal itself only when it
    # came before `up` installed its handlers (still importing, on a busy machine): nothing started.
    assert code in (0, 1) or (code == -signal.SIGTERM and not up.seen_children), up.log()
    assert "Traceback" not in up.log()
    up.assert_nothing_left()
    assert not list((tmp_path / "state").glob("*.json")), "the state file outlived `up`"


def test_sigterm_when_ready_stops_in_order_and_exits_0(tmp_path: Path):
    up = start_up(tmp_path)
    up.wait_ready()
    run_dir = up.state()["run_dir"]
    assert up.stop(signal.SIGTERM) == 0, up.log()
    up.assert_nothing_left()
    assert not os.path.exists(run_dir)
    log = up.log()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]


def test_a_sigkilled_up_takes_its_children_along_and_the_next_up_cleans_up(tmp_path: Path):
    up = start_up(tmp_path)
    up.wait_ready()
    stale = up.state()
    up.stop(signal.SIGKILL)
    up.assert_nothing_left(within=5)
    assert os.path.exists(stale["run_dir"]), "nothing could have removed it yet"
    successor = start_up(tmp_path)
    successor.wait_ready()
    try:
        assert not os.path.exists(stale["run_dir"])
        assert not (tmp_path / "state" / f"{stale['pid']}.json").exists()
    finally:
        assert successor.stop() == 0, successor.log()
    successor.assert_nothing_left()


def test_dead_workers_and_control_plane_are_replaced_while_the_rest_serve(tmp_path: Path):
    up = start_up(tmp_path)
    up.wait_ready()
    try:
        worker = up.child("extproc-0")
        killed = time.monotonic()
        os.kill(worker["pid"], signal.SIGKILL)

        def replaced() -> bool:
            child = up.child("extproc-0")
            return child["restarts"] == 1 and child["alive"] and child["pid"] != worker["pid"]

        wait_until(replaced, 2, "extproc-0 to be restarted")
        hop = os.path.join(up.state()["run_dir"], "hop-0.sock")
        wait_until(lambda: _hop_healthy(hop), 5, "the new extproc-0 to hold the policy")
        assert time.monotonic() - killed < 2.5
        assert up.child("extproc-0")["last_exit"] == "signal 9"

        # SIGTERM drains a worker: it exits 0 and is restarted all the same.
        os.kill(up.child("extproc-1")["pid"], signal.SIGTERM)
        wait_until(lambda: up.child("extproc-1")["restarts"] == 1, 15, "extproc-1 to be restarted")
        assert up.child("extproc-1")["last_exit"] == "code 0"
        hop = os.path.join(up.state()["run_dir"], "hop-1.sock")
        wait_until(lambda: _hop_healthy(hop), 5, "the new extproc-1 to hold the policy")

        # The control plane comes back on the same xDS address; Envoy and the workers reconnect.
        xds = up.state()["xds"]
        os.kill(up.child("control-plane")["pid"], signal.SIGKILL)
        assert ask(up) == 200  # served from the last config meanwhile
        wait_until(lambda: up.child("control-plane")["restarts"] == 1, 5, "the control plane to be restarted")
        assert up.state()["xds"] == xds
        wait_until(lambda: up.log().count("(ccr-gateway) connected") >= 2, 15, "Envoy to reconnect to xDS")

        assert all(ask(up) == 200 for _ in range(6))
        metrics = urllib.request.urlopen(up.state()["metrics"]["gateway"]).read().decode()
        for name in ("extproc-0", "extproc-1", "control-plane"):
            assert f'ccr_child_restarts_total{{child="{name}"}} 1.0' in metrics
        assert "restarting it in 0.1 s" in up.log()
    finally:
        assert up.stop() == 0, up.log()[-3000:]
    up.assert_nothing_left()


def test_envoy_dying_stops_the_gateway(tmp_path: Path):
    up = start_up(tmp_path, workers=1)
    up.wait_ready()
    envoy = up.child("envoy")["pid"]
    os.kill(envoy, signal.SIGKILL)
    assert up.process.wait(timeout=20) == 1
    assert "envoy exited (signal 9); it owns the listener: stopping the gateway" in up.log()
    up.note_children()
    assert not alive(envoy)
    up.assert_nothing_left()


def test_startup_is_quiet_and_counts_no_request(tmp_path: Path):
    up = start_up(tmp_path, workers=1)
    up.wait_ready()
    try:
        log = up.log()
        banner = log[: log.index("is ready on")]
        assert '"path"' not in banner, "an access-log line: something sent a request through the listener"
        assert "work-in-progress" not in banner.replace("work-in-progress extension", "")
        assert "envoy: 2 work-in-progress extensions in use (sse_to_metadata, content_parsers.json)" in banner
        metrics = urllib.request.urlopen(up.state()["metrics"]["gateway"]).read().decode()
        rejected = [line for line in metrics.splitlines() if line.startswith("ccr_rejected_requests_total{")]
        assert all(line.endswith(" 0.0") for line in rejected), rejected
        # One page for the whole gateway: `up`'s, the control plane's and the workers' metrics, each
        # family once (Prometheus refuses a page that names one twice).
        families = [line.split()[2] for line in metrics.splitlines() if line.startswith("# HELP")]
        assert len(families) == len(set(families))
        assert {"ccr_child_up", "ccr_xds_responses_total", "ccr_sessions_remembered"} <= set(families)
    finally:
        up.stop()
    up.assert_nothing_left()


def _hop_healthy(path: str) -> bool:
    from ccr_gateway.probes import unix_http_status

    return unix_http_status(path) == 200
