"""`ccr-gateway status` from sample documents, and the control plane's status file it reads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ccr_gateway import state_file, status
from ccr_gateway.status import ClusterHealth, GatewayReport, GatewayState, Headroom, StateFiles
from control_plane.policy import load_policy
from control_plane.server import ControlPlane, ControlPlaneConfig, PolicyStatusFile

NOW = datetime(2026, 5, 1, 12, 30, 0, tzinfo=UTC)


def host(**health: object) -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9100}}, "health_status": health}


def envoy_cluster(name: str, hosts: list[dict], max_requests: int = 1024) -> dict:
    return {
        "name": name,
        "host_statuses": hosts,
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": max_requests, "max_retries": 3},
                {"priority": "HIGH", "max_connections": 1, "max_pending_requests": 1, "max_requests": 1},
            ]
        },
    }


def remaining(cluster: str, rq: int, pending: int = 1024, cx: int = 1024) -> list[dict]:
    prefix = f"cluster.{cluster}.circuit_breakers.default.remaining_"
    return [
        {"name": prefix + "rq", "value": rq},
        {"name": prefix + "pending", "value": pending},
        {"name": prefix + "cx", "value": cx},
        {"name": prefix + "retries", "value": 0},
        {"name": prefix + "cx_pools", "value": 18446744073709551615},
    ]


CLUSTERS = {
    "cluster_statuses": [
        envoy_cluster("ccr_xds", [host(eds_health_status="HEALTHY")]),
        envoy_cluster("provider_b", [host(eds_health_status="HEALTHY", failed_outlier_check=True)], max_requests=10),
        envoy_cluster("chain_abc", [host(eds_health_status="HEALTHY"), host(eds_health_status="UNHEALTHY")]),
        envoy_cluster("provider_a", [host(eds_health_status="HEALTHY")]),
    ]
}
STATS = {"stats": [*remaining("provider_a", 1000), *remaining("provider_b", 0), *remaining("chain_abc", 1024)]}

STATE = {
    "pid": 4242,
    "started": "2026-05-01T12:00:00.000Z",
    "listener": "http://127.0.0.1:8080",
    "admin": "http://127.0.0.1:9901",
    "xds": "127.0.0.1:18000",
    "run_dir": "/tmp/ccr-gateway-abc",
    "policy_source": "gw.yaml",
    "control_plane_status": "/tmp/ccr-gateway-abc/control-plane.json",
    "metrics": {"gateway": "http://127.0.0.1:9464/metrics"},
    "children": [
        {"name": "control-plane", "pid": 4243, "restarts": 0, "alive": True, "last_exit": None, "last_restart": None},
        {
            "name": "extproc-0",
            "pid": 4250,
            "restarts": 2,
            "alive": True,
            "last_exit": 1,
            "last_restart": "2026-05-01T12:20:00Z",
        },
    ],
}
POLICY = {
    "version": "3",
    "source": "gw.yaml",
    "accepted_at": "2026-05-01T12:10:00+00:00",
    "providers": ["a", "b"],
    "last_rejected": None,
}


# --- clusters from Envoy's admin documents -------------------------------------------------------


def test_clusters_are_read_with_health_and_default_priority_headroom_providers_first():
    clusters = status.cluster_health(CLUSTERS, STATS)
    assert [c.name for c in clusters] == ["provider_a", "provider_b", "chain_abc", "ccr_xds"]
    a, b, chain, xds = clusters
    assert (a.hosts, a.healthy) == (1, 1)
    assert a.headroom == {
        "requests": Headroom(1000, 1024),
        "pending": Headroom(1024, 1024),
        "connections": Headroom(1024, 1024),
    }
    assert (b.healthy, b.headroom["requests"]) == (0, Headroom(0, 10))
    assert (chain.hosts, chain.healthy) == (2, 1)
    assert xds.headroom == {}  # no track_remaining on the gateway's own clusters


@pytest.mark.parametrize(
    ("health", "healthy"),
    [
        ({"eds_health_status": "HEALTHY"}, True),
        ({}, True),
        ({"eds_health_status": "DEGRADED"}, True),
        ({"eds_health_status": "UNHEALTHY"}, False),
        ({"eds_health_status": "DRAINING"}, False),
        ({"eds_health_status": "TIMEOUT"}, False),
        ({"eds_health_status": "HEALTHY", "failed_active_health_check": True}, False),
        ({"eds_health_status": "HEALTHY", "failed_outlier_check": True}, False),
        ({"eds_health_status": "HEALTHY", "failed_outlier_check": False}, True),
    ],
)
def test_host_health_follows_envoys_flags(health, healthy):
    assert status.host_is_healthy(health) is healthy


def test_cluster_problems_name_missing_hosts_no_healthy_host_and_open_breakers():
    assert ClusterHealth("provider_x", 0, 0).problems() == ["cluster provider_x: no hosts"]
    assert ClusterHealth("provider_x", 2, 0).problems() == ["cluster provider_x: none of its 2 hosts is healthy"]
    full = ClusterHealth("provider_x", 1, 1, {"requests": Headroom(0, 10), "pending": Headroom(5, 10)})
    assert full.problems() == ["cluster provider_x: circuit breaker open (requests: all 10 in use)"]
    assert ClusterHealth("provider_x", 1, 1, {"requests": Headroom(1, 10)}).problems() == []


# --- health verdicts -----------------------------------------------------------------------------


def test_a_gateway_with_live_children_healthy_clusters_and_its_policy_live_is_healthy():
    clusters = [ClusterHealth("provider_a", 1, 1, {"requests": Headroom(10, 10)})]
    assert status.gateway_problems(STATE, POLICY, clusters) == []


def test_a_dead_child_an_unanswering_admin_and_a_pending_rejection_are_problems():
    state = {**STATE, "children": [{**STATE["children"][0], "alive": False, "last_exit": "signal 9"}]}
    policy = {**POLICY, "last_rejected": {"at": "2026-05-01T12:15:00+00:00", "message": "gw.yaml:3:10: bad"}}
    assert status.gateway_problems(state, policy, None) == [
        "worker control-plane is not running (last exit signal 9)",
        "Envoy's admin at http://127.0.0.1:9901 does not answer",
        "the last policy edit was rejected; the gateway runs the previous one",
    ]


@pytest.mark.parametrize(
    ("accepted_at", "rejected_at", "pending"),
    [
        ("2026-05-01T12:10:00+00:00", "2026-05-01T12:15:00+00:00", True),
        ("2026-05-01T12:20:00+00:00", "2026-05-01T12:15:00+00:00", False),
        ("2026-05-01T12:10:00Z", "2026-05-01T12:10:00+00:00", True),
        (None, "2026-05-01T12:15:00+00:00", True),
    ],
)
def test_a_rejection_is_pending_until_a_later_policy_is_accepted(accepted_at, rejected_at, pending):
    policy = {**POLICY, "accepted_at": accepted_at, "last_rejected": {"at": rejected_at, "message": "x"}}
    assert status.rejection_pending(policy) is pending
    assert status.rejection_pending(POLICY) is False


def test_exit_status_is_0_all_healthy_1_any_unhealthy_3_none():
    healthy = GatewayReport(STATE, POLICY, [], [])
    sick = GatewayReport(STATE, POLICY, None, ["Envoy's admin does not answer"])
    assert status.exit_status([healthy, healthy]) == 0
    assert status.exit_status([healthy, sick]) == 1
    assert status.exit_status([]) == 3


# --- rendering -----------------------------------------------------------------------------------


def test_the_text_shows_policy_processes_clusters_and_problems():
    rejected = {
        **POLICY,
        "last_rejected": {"at": "2026-05-01T12:15:00+00:00", "message": "gw.yaml:3:10: a\ngw.yaml:4:1: b"},
    }
    clusters = status.cluster_health(CLUSTERS, STATS)
    report = GatewayReport(STATE, rejected, clusters, status.gateway_problems(STATE, rejected, clusters))
    text = status.render([report], StateFiles([], ["/run/ccr-gateway-0/17.json"], []), now=NOW)
    lines = text.splitlines()
    assert lines[0] == "stale: /run/ccr-gateway-0/17.json belonged to a gateway that is no longer running; removed"
    assert lines[2] == "gateway pid 4242: UNHEALTHY, started 2026-05-01T12:00:00.000Z, up 30m"
    assert "  policy     generation 3 from gw.yaml, accepted 2026-05-01T12:10:00+00:00 (providers: a, b)" in lines
    assert "  rejected   2026-05-01T12:15:00+00:00 (still pending: the previous policy stays live):" in lines
    assert "               gw.yaml:4:1: b" in lines
    assert any(line.startswith("  processes  control-plane  pid 4243") for line in lines)
    assert any("extproc-0" in line and "restarts 2 (last 2026-05-01T12:20:00Z, exit 1)" in line for line in lines)
    assert any(
        line.startswith("  clusters   provider_a")
        and "1/1 healthy  requests 1000/1024 free  pending 1024/1024 free  connections 1024/1024 free" in line
        for line in lines
    )
    assert "  metrics    gateway        http://127.0.0.1:9464/metrics" in lines
    assert "  problem    cluster provider_b: circuit breaker open (requests: all 10 in use)" in lines
    assert "  problem    cluster chain_abc: none of its 2 hosts is healthy" not in lines  # one of two is enough


def test_without_the_control_plane_status_the_policy_source_is_still_shown():
    text = status.render([GatewayReport(STATE, None, None, ["x"])], StateFiles([], [], []), now=NOW)
    assert "  policy     gw.yaml (control plane status unavailable)" in text.splitlines()


def test_no_gateway_says_so():
    assert status.render([], StateFiles([], [], []), now=NOW) == "no gateway running"


def test_the_json_carries_the_state_the_verdict_and_the_clusters():
    clusters = [ClusterHealth("provider_a", 1, 1, {"requests": Headroom(3, 4)})]
    document = status.to_json([GatewayReport(STATE, POLICY, clusters, [])], StateFiles([], ["s"], ["u"]))
    json.dumps(document)  # serialisable
    (gateway,) = document["gateways"]
    assert gateway["pid"] == 4242 and gateway["healthy"] is True and gateway["problems"] == []
    assert gateway["policy"]["version"] == "3"
    assert gateway["clusters"] == [
        {"name": "provider_a", "hosts": 1, "healthy": 1, "headroom": {"requests": {"remaining": 3, "maximum": 4}}}
    ]
    assert (document["stale"], document["unreadable"]) == (["s"], ["u"])


# --- reading state files and documents -----------------------------------------------------------


def test_report_on_reads_the_admin_api_and_the_control_plane_status(tmp_path):
    status_path = tmp_path / "control-plane.json"
    status_path.write_text(json.dumps(POLICY))
    asked: list[str] = []

    def fetch(url: str) -> dict | None:
        asked.append(url)
        return CLUSTERS if "/clusters" in url else STATS

    state = GatewayState(4242, "x.json", {**STATE, "control_plane_status": str(status_path)})
    report = status.report_on(state, fetch)
    assert asked[0] == "http://127.0.0.1:9901/clusters?format=json"
    assert asked[1].startswith("http://127.0.0.1:9901/stats?format=json&filter=")
    assert report.policy == POLICY
    assert [c.name for c in report.clusters or []][:2] == ["provider_a", "provider_b"]
    assert not report.healthy


def test_read_states_keeps_running_gateways_and_removes_dead_ones(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ccr_gateway"])
    try:
        # Until it has exec'd, the child's command line is still pytest's.
        deadline = time.monotonic() + 10
        while not state_file.is_running_gateway(alive.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / f"{alive.pid}.json").write_text(json.dumps({**STATE, "pid": alive.pid}))
        dead_run_dir = tmp_path / "ccr-gateway-dead"
        dead_run_dir.mkdir()
        (tmp_path / "999999999.json").write_text(json.dumps({**STATE, "pid": 999999999, "run_dir": str(dead_run_dir)}))
        (tmp_path / "notes.json").write_text("not json")
        looked = status.read_states(tmp_path)
        assert [s.pid for s in looked.running] == [alive.pid]
        assert looked.stale == [str(tmp_path / "999999999.json")]
        assert (tmp_path / "999999999.json").exists()  # only looked at
        cleaned = status.read_states(tmp_path, remove_stale=True)
        assert [s.pid for s in cleaned.running] == [alive.pid]
        assert str(tmp_path / "999999999.json") in cleaned.stale
        assert not (tmp_path / "999999999.json").exists() and not dead_run_dir.exists()
        assert cleaned.unreadable == [str(tmp_path / "notes.json")]
    finally:
        alive.kill()
        alive.wait()


def test_a_missing_state_directory_means_no_gateway(tmp_path):
    assert status.read_states(tmp_path / "nothing-here", remove_stale=True) == StateFiles([], [], [])


# --- the control plane's status file (control_plane/server.py) -----------------------------------


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_status_file_records_acceptance_then_rejection_and_keeps_it_after_a_fix(tmp_path):
    path = tmp_path / "cp.json"
    writer = PolicyStatusFile(str(path))
    writer.accepted("1", "gw.yaml", ["a", "b"])
    first = read(path)
    assert {k: first[k] for k in ("version", "source", "providers", "last_rejected")} == {
        "version": "1",
        "source": "gw.yaml",
        "providers": ["a", "b"],
        "last_rejected": None,
    }
    assert datetime.fromisoformat(first["accepted_at"]).tzinfo is not None
    writer.rejected("gw.yaml:3:10: providers[0].api: bad")
    second = read(path)
    assert second["version"] == "1" and second["last_rejected"]["message"] == "gw.yaml:3:10: providers[0].api: bad"
    assert status.rejection_pending(second)
    writer.accepted("2", "gw.yaml", ["a"])
    third = read(path)
    assert third["version"] == "2" and third["last_rejected"] == second["last_rejected"]
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed, not left behind


def test_an_unwritable_status_file_never_stops_the_control_plane(tmp_path, caplog):
    writer = PolicyStatusFile(str(tmp_path / "missing-dir" / "cp.json"))
    writer.accepted("1", "gw.yaml", ["a"])
    assert "cannot write the status file" in caplog.text
    PolicyStatusFile("").accepted("1", "gw.yaml", ["a"])  # no path: nothing written, nothing raised


def test_the_control_plane_writes_its_status_on_accept_and_on_a_distinct_rejection(tmp_path):
    policy_file = tmp_path / "gw.yaml"
    text = "providers:\n  - {name: a, api: anthropic, base_url: 'http://127.0.0.1:9100', models: [m]}\n"
    policy_file.write_text(text)
    path = tmp_path / "cp.json"
    plane = ControlPlane(ControlPlaneConfig(policy_path=str(policy_file), status_file=str(path)))
    plane._apply(load_policy(text, source=str(policy_file)))
    assert read(path)["providers"] == ["a"] and read(path)["source"] == str(policy_file)
    from control_plane.policy import PolicyError

    error = PolicyError.single(str(policy_file), "broken")
    plane._reject(error)
    written = path.stat().st_mtime_ns
    assert read(path)["last_rejected"]["message"] == f"{policy_file}: broken"
    path.unlink()
    plane._reject(error)  # the same error on the next poll: not written again
    assert not path.exists()
    plane._reject(PolicyError.single(str(policy_file), "broken differently"))
    assert read(path)["last_rejected"]["message"] == f"{policy_file}: broken differently"
    assert path.stat().st_mtime_ns >= written
