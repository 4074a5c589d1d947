"""The pieces of `ccr-gateway up`'s supervision that need no gateway: restart backoff, exit
descriptions, the orphan guard, Envoy's log filter, the state file and the checks made before start."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccr_gateway import state_file
from ccr_gateway.children import Backoff, Child, describe_exit
from ccr_gateway.envoy_log import EnvoyLogFilter, work_in_progress_extension
from ccr_gateway.preflight import first_busy_port, positive_int

ROOT = Path(__file__).resolve().parents[2]
WIP_LINE = (
    "[2026-01-01 00:00:00.000][envoy][warning] message 'envoy.extensions.filters.http.sse_to_metadata.v3."
    "SseToMetadata' is contained in proto file 'envoy/extensions/filters/http/sse_to_metadata/v3/"
    "sse_to_metadata.proto' marked as work-in-progress. API features marked as work-in-progress are not "
    "considered stable, are not covered by the threat model, are not supported by the security team, and "
    "are subject to breaking changes. Do not use this feature without understanding each of the previous points.\n"
)
JSON_PARSER_LINE = WIP_LINE.replace("filters/http/sse_to_metadata", "content_parsers/json").replace(
    "sse_to_metadata.proto", "json_content_parser.proto"
)


def test_backoff_doubles_up_to_its_ceiling_and_resets_after_a_long_run():
    backoff = Backoff(initial=0.1, ceiling=0.5, reset_after=10)
    assert [backoff.delay(ran_for=0.2) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff.delay(ran_for=60) == 0.1
    assert backoff.delay(ran_for=1) == 0.2


def test_an_exit_is_described_by_its_code_or_its_signal():
    assert describe_exit(1) == "code 1"
    assert describe_exit(0) == "code 0"
    assert describe_exit(-9) == "signal 9"


def test_a_child_is_reported_exited_once_and_restarts_with_the_same_command(tmp_path: Path):
    marker = tmp_path / "runs"
    child = Child("job", [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"])
    child.start()
    assert child.process is not None
    child.process.wait(timeout=10)
    assert child.exited() == "code 0"
    assert child.exited() is None  # reported already
    assert child.schedule_restart() == pytest.approx(0.1)
    child.restart()
    child.process.wait(timeout=10)
    assert child.exited() == "code 0"
    assert marker.read_text() == "xx"
    state = child.state()
    assert state["restarts"] == 1 and state["alive"] is False and state["last_exit"] == "code 0"
    assert state["last_restart"].endswith("Z")


def test_a_guarded_child_dies_with_its_parent(tmp_path: Path):
    """The parent here is a short-lived Python that starts a guarded `sleep` and is SIGKILLed."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import sys, time; from ccr_gateway.children import Child\n"
        "child = Child('sleeper', ['sleep', '60']); child.start()\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    sleeper = int(pid_file.read_text())
    time.sleep(0.2)  # the guard has exec'd sleep by now
    assert Path(f"/proc/{sleeper}/cmdline").read_bytes().startswith(b"sleep")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while _running(sleeper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(sleeper)


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_work_in_progress_warnings_are_named_by_extension():
    assert work_in_progress_extension(WIP_LINE) == "sse_to_metadata"
    assert work_in_progress_extension(JSON_PARSER_LINE) == "content_parsers.json"
    assert work_in_progress_extension("[envoy][warning] something else\n") is None


def test_envoy_log_filter_drops_expected_warnings_and_sums_them_up_once():
    other = "[2026-01-01 00:00:00.000][envoy][warning] lds: listener 'ccr_listener' config rejected\n"
    lines = [WIP_LINE, WIP_LINE, JSON_PARSER_LINE, other]
    out = io.BytesIO()
    source = io.BytesIO("".join(lines).encode())
    envoy_log = EnvoyLogFilter(source, out)
    envoy_log.start()
    envoy_log.join(timeout=5)
    assert out.getvalue().decode() == other
    assert envoy_log.summary() == (
        "envoy: 2 work-in-progress extensions in use (sse_to_metadata, content_parsers.json): expected, "
        "warnings hidden (--log-level debug shows them)"
    )


def test_envoy_log_filter_keeps_everything_in_debug():
    out = io.BytesIO()
    envoy_log = EnvoyLogFilter(io.BytesIO(WIP_LINE.encode()), out, keep_everything=True)
    envoy_log.start()
    envoy_log.join(timeout=5)
    assert out.getvalue().decode() == WIP_LINE


def test_state_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CCR_GATEWAY_STATE_DIR", str(tmp_path / "explicit"))
    assert state_file.state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CCR_GATEWAY_STATE_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert state_file.state_dir() == tmp_path / f"ccr-gateway-{os.getuid()}"


def test_state_is_replaced_whole(tmp_path: Path):
    path = tmp_path / "state" / "123.json"
    state_file.write_state(path, {"pid": 123, "children": []})
    state_file.write_state(path, {"pid": 123, "children": [{"name": "envoy"}]})
    assert json.loads(path.read_text()) == {"pid": 123, "children": [{"name": "envoy"}]}
    assert [p.name for p in path.parent.iterdir()] == ["123.json"]


def test_stale_state_and_run_dir_of_a_dead_up_are_removed(tmp_path: Path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    run_dir = tmp_path / f"{state_file.RUN_DIR_PREFIX}dead"
    run_dir.mkdir()
    (run_dir / "hop-0.sock").write_text("")
    state_file.write_state(tmp_path / f"{dead.pid}.json", {"pid": dead.pid, "run_dir": str(run_dir)})
    foreign = tmp_path / "not-ours"
    foreign.mkdir()
    state_file.write_state(tmp_path / "1.json", {"pid": 1, "run_dir": str(foreign)})  # pid 1: no `up`
    removed = state_file.remove_stale(tmp_path)
    assert str(run_dir) in removed and not run_dir.exists()
    assert not (tmp_path / f"{dead.pid}.json").exists()
    assert foreign.exists(), "a directory `up` did not make is never deleted"


def test_workers_must_be_at_least_one():
    assert positive_int("2") == 2
    with pytest.raises(Exception, match="must be at least 1"):
        positive_int("0")


def test_the_first_busy_port_is_named_with_its_purpose():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        problem = first_busy_port([("127.0.0.1", port, "the metrics port of extproc-0 (--metrics-port 9)")])
    assert problem == f"127.0.0.1:{port} is already in use: it is the metrics port of extproc-0 (--metrics-port 9)"
    assert "wanted twice" in (first_busy_port([("127.0.0.1", 1, "a"), ("127.0.0.1", 1, "b")]) or "")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccr_gateway.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_up_refuses_zero_workers_before_anything_starts():
    result = run_cli("up", "-c", "examples/gateway.yaml", "--workers", "0")
    assert result.returncode == 2
    assert "argument --workers: must be at least 1, got 0" in result.stderr


def test_up_names_a_busy_metrics_port_in_one_line(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        policy = tmp_path / "p.yaml"
        listener = _free_port()
        policy.write_text(
            f"listener: {{port: {listener}}}\n"
            "providers:\n  - {name: a, api: openai, base_url: 'http://127.0.0.1:1/v1', models: [m]}\n"
        )
        metrics = ("--metrics-port", str(taken))
        result = run_cli("up", "-c", str(policy), "--workers", "1", "--admin-port", str(_free_port()), *metrics)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ccr-gateway up: 127.0.0.1:{taken} is already in use: it is the metrics port (--metrics-port)"
    ]
    assert result.stdout == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_free_port_never_hands_out_one_port_twice_in_a_process(monkeypatch) -> None:
    """The kernel may offer a port it has just offered again: `up` asks for xDS and metrics ports,
    the bench for two gateways' ports, before binding any of them."""
    from ccr_gateway import preflight

    offered = iter([41001, 41001, 41002])

    class OneSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(preflight, "_HANDED_OUT", set())
    monkeypatch.setattr(preflight.socket, "socket", OneSocket)
    assert [preflight.free_port(), preflight.free_port()] == [41001, 41002]
