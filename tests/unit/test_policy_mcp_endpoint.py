"""The mcp: section's endpoint fields: where the MCP service listens (api), Envoy's egress listener
(egress), RFC 9728's authorization servers, and the anonymous tenant's grant; with their lines, in the
proto, and in ext_proc's settings."""

from __future__ import annotations

import textwrap

import pytest

from ccr.v1 import policy_pb2
from ccr.v1.contract import ANONYMOUS_TENANT_VALUE
from extproc.mcp import settings as mcp_settings_module
from extproc.routing_table import PolicyCompileError, compile_policy, mcp_settings
from tests.unit.test_policy_mcp import load, one_problem

SERVERS = """\
  servers:
    - {name: files, command: [x]}
    - {name: github, url: 'https://api.githubcopilot.com/mcp/'}
  grants: []
"""


def section(fields: str) -> str:
    """``mcp:`` with ``fields`` first: they start at line 7 of gw.yaml (PROVIDERS' five lines, mcp:)."""
    return "mcp:\n" + textwrap.indent(textwrap.dedent(fields), "  ") + SERVERS


def test_the_addresses_default_to_the_local_ports():
    spec = load(section("path: /mcp\n")).mcp
    assert spec is not None
    assert (spec.api, spec.egress, spec.authorization_servers) == ("127.0.0.1:9192", "127.0.0.1:9193", ())
    assert (spec.api_host, spec.api_port, spec.api_socket_path) == ("127.0.0.1", 9192, "")
    assert spec.api_host_is_ip
    assert [s.name for s in spec.http_servers] == ["github"]


def test_api_takes_host_port_a_dns_name_an_ipv6_address_or_a_unix_socket():
    assert load(section("api: mcp.ccr.svc:80\n")).mcp.api == "mcp.ccr.svc:80"
    assert not load(section("api: mcp.ccr.svc:80\n")).mcp.api_host_is_ip
    assert load(section("api: '[::1]:9192'\n")).mcp.api == "[::1]:9192"
    piped = load(section("api: unix:/run/ccr/mcp.sock\n")).mcp
    assert (piped.api, piped.api_socket_path, piped.api_host) == ("unix:/run/ccr/mcp.sock", "/run/ccr/mcp.sock", "")


def test_egress_and_authorization_servers_load_as_written():
    spec = load(
        section(
            """\
            egress: 127.0.0.2:7000
            authorization_servers: [https://auth.example.com, 'http://localhost:9000/realms/ccr']
            """
        )
    ).mcp
    assert (spec.egress_host, spec.egress_port) == ("127.0.0.2", 7000)
    assert spec.authorization_servers == ("https://auth.example.com", "http://localhost:9000/realms/ccr")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            "api: 127.0.0.1\n",
            "gw.yaml:7:8: mcp.api: must be host:port (like 127.0.0.1:9192) or unix:/path where "
            "`ccr-gateway mcp-gateway` listens, got '127.0.0.1'",
        ),
        (
            "api: 'unix:run/mcp.sock'\n",
            "gw.yaml:7:8: mcp.api: a unix socket must be an absolute path (unix:/path), got 'unix:run/mcp.sock'",
        ),
        (
            "egress: localhost:9193\n",
            "gw.yaml:7:11: mcp.egress: 'localhost' must be an IP address (Envoy listens there), like 127.0.0.1:9193",
        ),
        (
            "egress: unix:/run/egress.sock\n",
            "gw.yaml:7:11: mcp.egress: must be host:port (like 127.0.0.1:9193) where Envoy's MCP egress listener "
            "listens, got 'unix:/run/egress.sock'",
        ),
        ("egress: 127.0.0.1:8080\n", "gw.yaml:7:11: mcp.egress: port 8080 is the gateway listener's"),
        ("egress: 0.0.0.0:8080\n", "gw.yaml:7:11: mcp.egress: port 8080 is the gateway listener's"),
        ("egress: 127.0.0.1:9192\n", "gw.yaml:7:11: mcp.egress: is the MCP service's own address (mcp.api)"),
        (
            "authorization_servers: [http://auth.example.com]\n",
            "gw.yaml:7:27: mcp.authorization_servers[0]: 'http://auth.example.com' must be an https:// URL "
            "(http:// for localhost only)",
        ),
        (
            "authorization_servers: ['https://auth.example.com?x=1']\n",
            "gw.yaml:7:27: mcp.authorization_servers[0]: 'https://auth.example.com?x=1': an issuer URL has no "
            "query, fragment or credentials",
        ),
        (
            "authorization_servers:\n  - https://a.example\n  - https://a.example\n",
            "gw.yaml:9:7: mcp.authorization_servers[1]: 'https://a.example' is listed twice",
        ),
        (
            "authorization_servers: https://a.example\n",
            "gw.yaml:7:26: mcp.authorization_servers: must be a list, got a string",
        ),
    ],
)
def test_address_and_issuer_problems_are_reported_at_their_line(fields, expected):
    # The listener is the default one, 127.0.0.1:8080: the egress listener cannot take its port.
    assert one_problem(section(fields)) == expected


def test_an_anonymous_tenant_grant_is_accepted_and_reaches_callers_without_a_key():
    text = section("path: /mcp\n").replace("  grants: []\n", '  grants:\n    - tenant: "-"\n      allow: [files]\n')
    policy = load(text)
    assert policy.mcp.grants[0].tenant == ANONYMOUS_TENANT_VALUE == mcp_settings_module.ANONYMOUS_TENANT
    settings = compile_policy(policy.to_proto("1"), environ={}).mcp
    for anonymous in (settings.access(None, None), settings.access("-", "-"), settings.access("", None)):
        assert anonymous.may_use_tool("files", "read") and not anonymous.may_reach("github")
    assert not settings.access("acme", None).may_reach("files")  # a keyed tenant without a grant: nothing


def test_without_an_anonymous_grant_a_caller_without_a_key_gets_nothing():
    settings = compile_policy(load(section("path: /mcp\n")).to_proto("1"), environ={}).mcp
    assert not settings.access(None, None).may_reach("files")


def test_the_proto_and_ext_proc_carry_the_endpoint_fields():
    text = section(
        """\
        api: unix:/run/ccr/mcp.sock
        egress: 127.0.0.1:7001
        authorization_servers: [https://auth.example.com]
        """
    )
    message = load(text).to_proto("1").mcp
    assert (message.api, message.egress, list(message.authorization_servers)) == (
        "unix:/run/ccr/mcp.sock",
        "127.0.0.1:7001",
        ["https://auth.example.com"],
    )
    settings = mcp_settings(message)
    assert (settings.api, settings.egress, settings.authorization_servers) == (
        "unix:/run/ccr/mcp.sock",
        "127.0.0.1:7001",
        ("https://auth.example.com",),
    )


def test_ext_proc_fills_in_the_defaults_of_an_older_control_plane():
    settings = mcp_settings(policy_pb2.Mcp(path="/mcp"))
    assert (settings.api, settings.egress, settings.authorization_servers) == ("127.0.0.1:9192", "127.0.0.1:9193", ())


def test_ext_proc_refuses_an_authorization_server_that_is_no_url():
    with pytest.raises(PolicyCompileError, match="authorization server"):
        mcp_settings(policy_pb2.Mcp(authorization_servers=["auth.example.com"]))


def test_the_endpoint_cannot_sit_under_the_well_known_paths_the_metadata_takes():
    assert one_problem(section("path: /.well-known/mcp\n")) == (
        "gw.yaml:7:9: mcp.path: '/.well-known/mcp' is under /.well-known, which the gateway already serves"
    )
