"""`control-plane --metrics-address`: loopback by default, 0.0.0.0 in a container or a pod."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccr_gateway import cli
from control_plane import server
from control_plane.server import ControlPlane, ControlPlaneConfig

POLICY = Path(__file__).resolve().parents[2] / "examples" / "gateway.yaml"


def test_metrics_listen_on_loopback_unless_told() -> None:
    args = cli.build_parser().parse_args(["control-plane", "-c", str(POLICY)])
    assert args.metrics_address == "127.0.0.1"
    assert ControlPlaneConfig().metrics_address == "127.0.0.1"


def test_metrics_address_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ControlPlaneConfig] = []

    class Recorder:
        def __init__(self, config: ControlPlaneConfig, **_: object) -> None:  # admin_context: the Admin API's
            seen.append(config)

        async def run(self) -> None:
            return None

    monkeypatch.setattr(server, "ControlPlane", Recorder)
    args = cli.build_parser().parse_args(
        ["control-plane", "-c", str(POLICY), "--metrics-port", "9464", "--metrics-address", "0.0.0.0"]
    )
    assert cli.cmd_control_plane(args) == 0
    assert (seen[0].metrics_port, seen[0].metrics_address) == (9464, "0.0.0.0")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
async def test_the_metrics_server_binds_the_address_given(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    bound: list[tuple[int, str]] = []
    monkeypatch.setattr(server, "start_http_server", lambda port, addr: bound.append((port, addr)))
    plane = ControlPlane(
        ControlPlaneConfig(
            policy_path=str(POLICY), xds_address="127.0.0.1:0", metrics_port=9464, metrics_address=address
        )
    )
    await plane.start()
    try:
        assert bound == [(9464, address)]
    finally:
        await plane.stop()
