"""The MCP endpoint, control-plane side: the ccr_mcp cluster and route on the gateway's listener, the
egress listener with one route and one cluster per url server (parsed by Envoy's own protos), the
hop's Lua filter, the snapshot's consistency and the rollout's make-before-break."""

from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.route.v3.route_components_pb2 import Route
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

from ccr.v1.contract import (
    CLUSTER_HEADER,
    EXTPROC_GROUP,
    MCP_CLUSTER,
    MCP_DECISION_IGNORED_HEADERS,
    MCP_SERVER_HEADER,
)
from control_plane.policy.mcp import McpServerSpec, McpSpec
from control_plane.resources import gateway as resources
from control_plane.resources import mcp as mcp_resources
from control_plane.resources.decision_hop import lua_source
from control_plane.xds.envoy_snapshot import envoy_snapshot
from control_plane.xds.snapshot import CLUSTER, LISTENER, POLICY, ROUTE, consistency_errors
from tests.unit.cp_helpers import policy, provider
from tests.unit.test_rollout import fake_clock, h, live  # noqa: F401 (fixtures)

GITHUB = McpServerSpec("github", url="https://api.githubcopilot.com/mcp/")
LOCAL = McpServerSpec("local-http", url="http://127.0.0.1:9555/mcp?x=${Q}")
FILES = McpServerSpec("files", command=("python3", "-m", "fake_provider.mcp_servers", "stdio"))
SPEC = McpSpec(servers=(GITHUB, FILES, LOCAL))
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


# --- the MCP service behind the listener -----------------------------------------------------------


def test_the_mcp_service_cluster_is_static_for_an_ip_dns_for_a_name_and_a_pipe_for_a_socket():
    by_ip = mcp_resources.mcp_service_cluster(SPEC)
    assert isinstance(by_ip, Cluster) and by_ip.name == MCP_CLUSTER
    assert by_ip.type == Cluster.STATIC
    address = by_ip.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 9192)
    named = mcp_resources.mcp_service_cluster(dataclasses.replace(SPEC, api_host="mcp.ccr.svc", api_port=80))
    assert named.type == Cluster.STRICT_DNS
    piped = mcp_resources.mcp_service_cluster(
        dataclasses.replace(SPEC, api_host="", api_port=0, api_socket_path="/run/m")
    )
    assert piped.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path == "/run/m"


def test_the_mcp_route_has_no_overall_timeout_a_long_idle_bound_and_no_ext_proc_with_the_hop():
    route = resources.parse_resource(Route(), mcp_resources.mcp_service_route(decision_hop=True))
    assert isinstance(route, Route)
    assert (route.match.headers[0].name, route.match.headers[0].string_match.exact) == (CLUSTER_HEADER, MCP_CLUSTER)
    assert route.route.cluster == MCP_CLUSTER
    assert route.route.timeout.seconds == 0  # a GET stream lives as long as the session
    assert route.route.idle_timeout.seconds == 3600
    assert "envoy.filters.http.ext_proc" in route.typed_per_filter_config  # no response phase sees a stream
    without_hop = resources.parse_resource(Route(), mcp_resources.mcp_service_route(decision_hop=False))
    assert "envoy.filters.http.ext_proc" not in without_hop.typed_per_filter_config  # the decision runs there


# --- the upstream servers --------------------------------------------------------------------------


def test_an_https_server_gets_a_dns_cluster_with_tls_sni_circuit_breakers_and_a_connect_timeout():
    cluster = mcp_resources.server_cluster(GITHUB)
    assert cluster.name == "ccr_mcp_github"
    assert cluster.type == Cluster.LOGICAL_DNS
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("api.githubcopilot.com", 443)
    assert cluster.connect_timeout.seconds == 5
    assert cluster.circuit_breakers.thresholds[0].max_requests.value == 1024  # the provider clusters' defaults
    tls = UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "api.githubcopilot.com"
    assert tls.common_tls_context.validation_context.match_typed_subject_alt_names[0].matcher.exact == (
        "api.githubcopilot.com"
    )
    assert list(tls.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]


def test_an_http_server_gets_plain_http_1_on_its_port():
    cluster = mcp_resources.server_cluster(LOCAL)
    assert not cluster.HasField("transport_socket")
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 9555)
    options = HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
    assert options.explicit_http_config.HasField("http_protocol_options")


def test_stdio_servers_have_no_cluster():
    assert [c.name for c in mcp_resources.server_clusters(SPEC)] == ["ccr_mcp_github", "ccr_mcp_local-http"]


def test_the_egress_routes_pick_the_server_by_its_header_rewrite_the_host_and_end_in_a_404():
    table = mcp_resources.egress_routes(SPEC)
    assert table.name == mcp_resources.EGRESS_ROUTE_CONFIG_NAME
    (vhost,) = table.virtual_hosts
    assert list(vhost.request_headers_to_remove) == [MCP_SERVER_HEADER]  # the upstream never sees it
    github, local, unknown = vhost.routes
    assert (github.match.headers[0].name, github.match.headers[0].string_match.exact) == (MCP_SERVER_HEADER, "github")
    assert (github.route.cluster, github.route.host_rewrite_literal) == ("ccr_mcp_github", "api.githubcopilot.com")
    assert (local.route.cluster, local.route.host_rewrite_literal) == ("ccr_mcp_local-http", "127.0.0.1:9555")
    assert github.route.timeout.seconds == 0 and github.route.idle_timeout.seconds == 3600
    assert not unknown.match.headers and unknown.direct_response.status == 404


def test_the_egress_listener_is_local_with_the_router_only():
    listener = mcp_resources.egress_listener(SPEC)
    assert listener.name == mcp_resources.EGRESS_LISTENER_NAME
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == ("127.0.0.1", 9193)
    hcm = HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]  # no ext_proc, no Lua
    assert hcm.rds.route_config_name == mcp_resources.EGRESS_ROUTE_CONFIG_NAME
    assert not listener.filter_chains[0].HasField("transport_socket")


# --- the hop's Lua filter ----------------------------------------------------------------------------


def test_the_lua_filter_forwards_the_host_and_keeps_mcp_bodies_off_the_decision():
    source = lua_source(mcp_path="/tools/mcp")
    assert 'local MCP_PATH = "/tools/mcp"' in source
    assert 'forwarded["x-ccr-hop-authority"] = value' in source
    assert "local mcp = is_mcp_path(path)" in source and "not batch and not mcp" in source
    assert 'local MCP_PATH = ""' in lua_source()


def test_the_lua_filter_reuses_mcp_decisions_for_the_policys_window_ignoring_the_contracts_headers():
    source = lua_source(mcp_path="/tools/mcp", mcp_reuse_s=3)
    assert "local MCP_REUSE_S = 3\n" in source
    for name in MCP_DECISION_IGNORED_HEADERS:
        assert f'["{name}"] = true' in source
    assert "local MCP_REUSE_S = 0\n" in lua_source(mcp_path="/tools/mcp")  # off unless asked


def test_the_listeners_lua_filter_reuses_for_the_policys_window():
    _, snapshot = snapshot_with(dataclasses.replace(SPEC, decision_reuse_s=7))
    listener = snapshot.get(LISTENER).by_name[resources.LISTENER_NAME]
    assert b"local MCP_REUSE_S = 7\n" in listener.SerializeToString()
    _, without = snapshot_with(None)
    assert b"local MCP_REUSE_S = 0\n" in without.get(LISTENER).by_name[resources.LISTENER_NAME].SerializeToString()


def test_the_gateways_own_services_routes_parse_no_usage():
    route = mcp_resources.mcp_service_route()
    assert set(route["typed_per_filter_config"]) == {
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.sse_to_metadata",
        "envoy.filters.http.json_to_metadata",
    }
    assert route["typed_per_filter_config"]["envoy.filters.http.json_to_metadata"]["disabled"] is True


def test_the_lua_source_refuses_a_path_that_could_break_the_script():
    import pytest

    with pytest.raises(ValueError):
        lua_source(mcp_path='/mcp" .. os.exit() .. "')
    with pytest.raises(ValueError):
        lua_source(mcp_reuse_s=1.5)  # type: ignore[arg-type]


# --- the snapshot --------------------------------------------------------------------------------------


def snapshot_with(mcp: McpSpec | None):
    a = provider("a")
    desired = dataclasses.replace(policy(a), mcp=mcp)
    return desired, envoy_snapshot(
        "1", desired, [a], {}, resources.provider_endpoints, (resources.EXTPROC_CLUSTER,), mcp=mcp
    )


def test_a_snapshot_with_mcp_has_the_clusters_the_egress_listener_and_the_route_before_the_catch_all():
    desired, snapshot = snapshot_with(SPEC)
    assert consistency_errors(snapshot, desired.to_proto("1")) == []
    assert {MCP_CLUSTER, "ccr_mcp_github", "ccr_mcp_local-http"} <= set(snapshot.get(CLUSTER).by_name)
    assert set(snapshot.get(LISTENER).by_name) == {resources.LISTENER_NAME, mcp_resources.EGRESS_LISTENER_NAME}
    assert set(snapshot.get(ROUTE).by_name) == {resources.ROUTE_CONFIG_NAME, mcp_resources.EGRESS_ROUTE_CONFIG_NAME}
    routes = snapshot.get(ROUTE).by_name[resources.ROUTE_CONFIG_NAME].virtual_hosts[0].routes
    targets = [r.route.cluster or r.route.cluster_header or r.name for r in routes]
    # Nothing before the decision swallows the endpoint: /health is exact, the rest need a cluster header.
    assert targets.index(MCP_CLUSTER) < targets.index(CLUSTER_HEADER)
    assert all(r.match.path == "/health" or r.match.headers or r.direct_response.status == 404 for r in routes)


def test_the_listeners_lua_filter_knows_the_policys_mcp_path():
    _, snapshot = snapshot_with(dataclasses.replace(SPEC, path="/tools/mcp"))
    listener = snapshot.get(LISTENER).by_name[resources.LISTENER_NAME]
    assert b'local MCP_PATH = "/tools/mcp"' in listener.SerializeToString()


def test_a_policy_with_mcp_beside_a_snapshot_without_its_clusters_is_inconsistent():
    desired, _ = snapshot_with(SPEC)
    _, without = snapshot_with(None)
    assert consistency_errors(without, desired.to_proto("1")) == [
        f"policy sends the MCP endpoint to cluster {MCP_CLUSTER!r}, which is missing",
        "policy reaches MCP server 'github' through cluster 'ccr_mcp_github', which is missing",
        "policy reaches MCP server 'local-http' through cluster 'ccr_mcp_local-http', which is missing",
    ]


# --- make-before-break ---------------------------------------------------------------------------------


def with_mcp(spec: McpSpec | None = SPEC):
    return dataclasses.replace(policy(provider("a")), mcp=spec)


def _offered_mcp(h) -> bool:  # noqa: F811
    return h.cache.get(EXTPROC_GROUP).get(POLICY).by_name["policy"].HasField("mcp")


def test_envoy_gets_the_mcp_clusters_before_ext_proc_hears_of_them(h):  # noqa: F811
    live(h, provider("a"))
    h.rollout.update(with_mcp())
    assert {MCP_CLUSTER, "ccr_mcp_github"} <= h.envoy()
    assert _offered_mcp(h) is False  # Envoy has not ACKed the clusters yet
    h.envoy_acks()
    assert _offered_mcp(h) is True


def test_a_removed_server_keeps_its_cluster_until_ext_proc_acks_the_policy_without_it(h):  # noqa: F811
    h.rollout.update(with_mcp())
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks()
    h.extproc_acks()
    h.rollout.update(with_mcp(dataclasses.replace(SPEC, servers=(FILES,))))
    assert "ccr_mcp_github" in h.envoy()  # the MCP service may still call it
    h.envoy_acks()
    h.extproc_acks()
    assert "ccr_mcp_github" not in h.envoy() and MCP_CLUSTER in h.envoy()


def test_envoy_keeps_the_mcp_cluster_until_ext_proc_acks_a_policy_without_mcp(h):  # noqa: F811
    h.rollout.update(with_mcp())
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks()
    h.extproc_acks()
    h.rollout.update(with_mcp(None))
    assert MCP_CLUSTER in h.envoy()  # ext_proc may still forward there
    h.envoy_acks()
    assert _offered_mcp(h) is False
    assert MCP_CLUSTER in h.envoy() and "ccr_mcp_github" in h.envoy()
    h.extproc_acks()  # grace 0: dropped at once
    assert MCP_CLUSTER not in h.envoy() and "ccr_mcp_github" not in h.envoy()
