"""`up` with the policy's mcp: section: the MCP service's command line, its environment, the ports
checked before anything starts, --no-mcp, and the example policy's bundled server."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from ccr.v1.contract import ANONYMOUS_TENANT_VALUE
from ccr_gateway.cli import build_parser
from ccr_gateway.supervisor import GatewayProcesses
from control_plane.policy import load_policy_file
from control_plane.policy.mcp import McpSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = load_policy_file(str(ROOT / "examples/gateway.yaml"))


def gateway(**options) -> GatewayProcesses:
    return GatewayProcesses("p.yaml", options.pop("policy", EXAMPLE), xds="127.0.0.1:18000", **options)


def test_the_example_serves_the_bundled_server_to_callers_without_a_key():
    spec = EXAMPLE.mcp
    assert spec is not None and (spec.path, spec.api, spec.egress) == ("/mcp", "127.0.0.1:9192", "127.0.0.1:9193")
    (server,) = spec.servers
    assert server.command == ("python3", "-m", "fake_provider.mcp_servers", "stdio")
    (grant,) = spec.grants
    assert (grant.tenant, grant.allow) == (ANONYMOUS_TENANT_VALUE, ("example",))


def test_up_runs_the_mcp_service_on_the_policys_addresses_with_the_workers_control_plane():
    up = gateway()
    argv = up.mcp_argv()
    assert argv[:3] == [sys.executable, "-m", "ccr_gateway.cli"]
    start = argv.index("mcp-gateway")
    value = {flag: argv[argv.index(flag) + 1] for flag in argv[start:] if flag.startswith("--")}
    assert value["--listen"] == "127.0.0.1:9192"
    assert value["--control-plane"] == up.xds == "127.0.0.1:18000"
    assert value["--egress"] == "127.0.0.1:9193"
    assert value["--ledger"] == "sqlite"  # the workers' ledger
    assert up.runs_mcp_service
    assert up.mcp_url == "http://127.0.0.1:8080/mcp"


def test_the_mcp_service_gets_a_spool_of_its_own_with_a_broker_ledger(monkeypatch):
    from ccr_gateway.ledger_wiring import LedgerPlan

    up = gateway()
    plan = LedgerPlan("rabbitmq", queue="usage", spool_dir="/var/spool/ccr")
    monkeypatch.setattr(GatewayProcesses, "ledger", property(lambda self: plan))
    argv = up.mcp_argv()
    assert argv[argv.index("--ledger-spool") + 1] == "/var/spool/ccr/mcp-gateway"
    assert plan.worker_arguments(0)[plan.worker_arguments(0).index("--ledger-spool") + 1].endswith("extproc-0")


def test_python3_in_the_policy_is_this_installations_interpreter():
    path = gateway().mcp_environment()["PATH"].split(os.pathsep)
    assert path[0] == os.path.dirname(sys.executable)


def test_no_mcp_or_an_address_elsewhere_runs_no_service_but_keeps_the_endpoint():
    assert not gateway(mcp_service=False).runs_mcp_service
    remote = dataclasses.replace(EXAMPLE, mcp=dataclasses.replace(EXAMPLE.mcp, api_host="mcp.ccr.svc", api_port=80))
    elsewhere = gateway(policy=remote)
    assert not elsewhere.runs_mcp_service and elsewhere.mcp_url.endswith("/mcp")
    piped = dataclasses.replace(EXAMPLE, mcp=McpSpec(api_host="", api_port=0, api_socket_path="/run/mcp.sock"))
    assert gateway(policy=piped).runs_mcp_service


def test_the_egress_and_service_ports_are_checked_before_anything_starts(monkeypatch):
    seen: list[tuple[str, int, str]] = []
    monkeypatch.setattr("ccr_gateway.supervisor.first_busy_port", lambda wanted: seen.extend(wanted) or None)
    gateway().check_ports()
    assert ("127.0.0.1", 9193, "Envoy's MCP egress listener (the policy's mcp.egress)") in seen
    assert any(port == 9192 for _, port, _ in seen)
    seen.clear()
    gateway(mcp_service=False).check_ports()
    assert any(port == 9193 for _, port, _ in seen) and not any(port == 9192 for _, port, _ in seen)


def test_up_takes_no_mcp():
    args = build_parser().parse_args(["up", "-c", "x.yaml", "--no-mcp"])
    assert args.no_mcp is True
    assert build_parser().parse_args(["up", "-c", "x.yaml"]).no_mcp is False


def test_up_says_why_it_runs_no_mcp_service():
    said: list[str] = []
    up = gateway(mcp_service=False)
    up.say = said.append  # type: ignore[method-assign]
    up._start_mcp(deadline=0.0)
    assert said == ["- MCP service on 127.0.0.1:9192: run by itself (--no-mcp); endpoint http://127.0.0.1:8080/mcp"]
    assert not up.children
