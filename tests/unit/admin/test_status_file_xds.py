"""The control plane's status file additions the Admin API reads: the accepted policy's sha256,
the rejection's source, and each xDS client's ACKed versions and caught-up generation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from control_plane.server import ControlPlane, ControlPlaneConfig
from control_plane.xds.cache import Ack

EXAMPLE = (Path(__file__).resolve().parents[3] / "examples" / "gateway.yaml").read_text()


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    monkeypatch.setenv("CCR_AUDIT", "off")
    (tmp_path / "p.yaml").write_text(EXAMPLE)
    config = ControlPlaneConfig(policy_path=str(tmp_path / "p.yaml"), status_file=str(tmp_path / "s.json"))
    return ControlPlane(config)


async def test_the_status_file_holds_the_policy_sha256_and_the_clients_acks(
    plane: ControlPlane, tmp_path: Path
) -> None:
    await plane.load_initial()
    status = json.loads((tmp_path / "s.json").read_text())
    assert status["policy_sha256"] == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert status["xds_clients"] == []
    snapshot = plane.cache.get("ccr-gateway")
    assert snapshot is not None
    plane.cache.connect_node("ccr-gateway", "envoy-0")
    acked = [type_url for type_url, typed in snapshot.resources.items() if typed.by_name]
    for type_url in acked[:-1]:
        plane.cache.record_ack(Ack("ccr-gateway", "envoy-0", type_url, snapshot.get(type_url).version))
    partial = json.loads((tmp_path / "s.json").read_text())["xds_clients"]
    assert partial[0]["node"] == "envoy-0" and partial[0]["generation"] is None
    last = acked[-1]
    plane.cache.record_ack(Ack("ccr-gateway", "envoy-0", last, snapshot.get(last).version))
    clients = json.loads((tmp_path / "s.json").read_text())["xds_clients"]
    assert clients[0]["generation"] == snapshot.version == "1"
    assert clients[0]["acked"][last.rsplit(".", 1)[-1]] == snapshot.get(last).version
    plane.cache.forget_node("ccr-gateway", "envoy-0")
    assert json.loads((tmp_path / "s.json").read_text())["xds_clients"] == []


def test_a_rejection_records_its_source(plane: ControlPlane, tmp_path: Path) -> None:
    from control_plane.policy import PolicyError

    plane._reject(PolicyError.single("p.yaml", "bad"))
    rejected = json.loads((tmp_path / "s.json").read_text())["last_rejected"]
    assert rejected["message"] == "p.yaml: bad" and rejected["source"] == str(tmp_path / "p.yaml")


async def test_a_nack_stands_in_the_status_file_until_that_type_is_acked_again(
    plane: ControlPlane, tmp_path: Path
) -> None:
    await plane.load_initial()
    snapshot = plane.cache.get("ccr-gateway")
    assert snapshot is not None
    cluster_type = next(type_url for type_url in snapshot.resources if type_url.endswith("Cluster"))
    plane.cache.connect_node("ccr-gateway", "envoy-0")
    plane.cache.record_nack(Ack("ccr-gateway", "envoy-0", cluster_type, "7"), "bad cluster x")
    clients = json.loads((tmp_path / "s.json").read_text())["xds_clients"]
    assert clients[0]["nacked"] == "Cluster 7: bad cluster x"
    plane.cache.record_ack(Ack("ccr-gateway", "envoy-0", cluster_type, snapshot.get(cluster_type).version))
    assert json.loads((tmp_path / "s.json").read_text())["xds_clients"][0]["nacked"] is None
