"""control_plane.xds.snapshot (content-hash versions, consistency check) and the resource builders."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext

from ccr.v1.contract import ENVOY_GROUP, EXTPROC_GROUP, REWRITE_HEADER
from control_plane.policy import load_policy_file
from control_plane.resources import gateway as resources
from control_plane.xds.cache import Ack, SnapshotCache
from control_plane.xds.rollout import Rollout
from control_plane.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    POLICY,
    ROUTE,
    Resources,
    Snapshot,
    consistency_errors,
)
from tests.unit.cp_helpers import EXAMPLE_POLICY, policy, provider

A = provider("a", port=9001)
B = provider("b", port=9002)
DNS = provider("dns", host="api.example.com", scheme="https", port=443)


def envoy_snapshot(*specs, version="1", listeners=True, routes=True, endpoints=None):
    """An Envoy snapshot built the way rollout builds one (EDS endpoints for IP hosts)."""
    gateway = policy(*specs)
    if endpoints is None:
        endpoints = [p for p in specs if p.host_is_ip]
    return Snapshot.build(
        version,
        clusters=[(p.cluster, resources.provider_cluster(p)) for p in specs],
        endpoints=[(p.cluster, resources.provider_endpoints(p)) for p in endpoints],
        listeners=[(resources.LISTENER_NAME, resources.listener(gateway))] if listeners else [],
        routes=[(resources.ROUTE_CONFIG_NAME, resources.route_configuration())] if routes else [],
    )


# --- versions ------------------------------------------------------------------------------------


def test_identical_content_gets_identical_versions_per_type():
    first, second = envoy_snapshot(A, B, version="1"), envoy_snapshot(A, B, version="2")
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert first.get(type_url).version == second.get(type_url).version


def test_the_version_does_not_depend_on_the_order_resources_are_given_in():
    forward = Resources.of([(A.cluster, resources.provider_cluster(A)), (B.cluster, resources.provider_cluster(B))])
    backward = Resources.of([(B.cluster, resources.provider_cluster(B)), (A.cluster, resources.provider_cluster(A))])
    assert forward.version == backward.version
    assert list(forward.by_name) == list(backward.by_name) == [A.cluster, B.cluster]


def test_a_changed_cluster_gets_a_new_cds_version_while_unchanged_types_keep_theirs():
    before = envoy_snapshot(A, B)
    after = envoy_snapshot(A, provider("b", port=9002, scheme="https"))  # TLS: same endpoints, new cluster
    assert after.get(CLUSTER).version != before.get(CLUSTER).version
    assert after.get(ENDPOINT).version == before.get(ENDPOINT).version
    assert after.get(LISTENER).version == before.get(LISTENER).version
    assert after.get(ROUTE).version == before.get(ROUTE).version


def test_a_changed_endpoint_changes_only_the_eds_version():
    before = envoy_snapshot(A)
    after = Snapshot.build(
        "2",
        clusters=before.get(CLUSTER).by_name.items(),
        endpoints=[(A.cluster, resources.provider_endpoints(provider("a", port=9999)))],
        listeners=before.get(LISTENER).by_name.items(),
        routes=before.get(ROUTE).by_name.items(),
    )
    assert after.get(ENDPOINT).version != before.get(ENDPOINT).version
    assert after.get(CLUSTER).version == before.get(CLUSTER).version


def test_a_renamed_resource_with_the_same_content_gets_a_new_version():
    cluster = resources.provider_cluster(A)
    assert Resources.of([("x", cluster)]).version != Resources.of([("y", cluster)]).version


def test_a_type_absent_from_the_snapshot_is_empty_with_a_stable_version():
    snapshot = envoy_snapshot(A)
    assert dict(snapshot.get(POLICY).by_name) == {}
    assert snapshot.get(POLICY).version == Resources.of(()).version


def test_snapshots_with_equal_content_and_version_are_equal():
    assert envoy_snapshot(A, B) == envoy_snapshot(B, A)
    assert envoy_snapshot(A, version="1") != envoy_snapshot(A, version="2")


def test_resources_of_a_snapshot_cannot_be_modified():
    snapshot = envoy_snapshot(A)
    with pytest.raises(TypeError):
        snapshot.get(CLUSTER).by_name["x"] = Cluster()  # type: ignore[index]
    with pytest.raises(TypeError):
        snapshot.resources[CLUSTER] = Resources.of(())  # type: ignore[index]


# --- consistency ---------------------------------------------------------------------------------


def test_a_complete_snapshot_is_consistent():
    assert consistency_errors(envoy_snapshot(A, B, DNS)) == []


def test_cluster_with_missing_endpoints_is_inconsistent():
    assert consistency_errors(envoy_snapshot(A, B, endpoints=[A])) == [
        "cluster 'provider_b' has no endpoints (ClusterLoadAssignment 'provider_b' missing)"
    ]


def test_endpoints_not_named_by_any_eds_cluster_are_inconsistent():
    snapshot = envoy_snapshot(A, endpoints=[A, B])
    assert consistency_errors(snapshot) == ["endpoints 'provider_b' are not named by any EDS cluster"]


def test_endpoints_for_a_dns_cluster_are_orphans():
    # LOGICAL_DNS clusters carry their own load_assignment; an EDS resource for one is never used.
    assert consistency_errors(envoy_snapshot(DNS, endpoints=[DNS])) == [
        "endpoints 'provider_dns' are not named by any EDS cluster"
    ]


def test_a_listener_naming_a_missing_route_table_is_inconsistent():
    assert consistency_errors(envoy_snapshot(A, routes=False)) == [
        "listener 'ccr_listener' uses route table 'ccr_routes', which is missing"
    ]


def test_a_route_table_no_listener_uses_is_inconsistent():
    assert consistency_errors(envoy_snapshot(A, listeners=False)) == [
        "route table 'ccr_routes' is not used by any listener"
    ]


def test_a_route_to_an_unknown_cluster_is_inconsistent():
    table = RouteConfiguration(name=resources.ROUTE_CONFIG_NAME)
    route = table.virtual_hosts.add(name="v", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.route.cluster = "provider_gone"
    snapshot = Snapshot.build(
        "1",
        listeners=[(resources.LISTENER_NAME, resources.listener(policy(A)))],
        routes=[(resources.ROUTE_CONFIG_NAME, table)],
    )
    assert consistency_errors(snapshot) == ["route table 'ccr_routes' sends to unknown cluster 'provider_gone'"]


def test_a_policy_naming_a_missing_cluster_is_inconsistent():
    proto = policy(A, B).to_proto("1")
    assert consistency_errors(envoy_snapshot(A), proto) == [
        "policy sends provider 'b' to cluster 'provider_b', which is missing"
    ]
    assert consistency_errors(envoy_snapshot(A, B), proto) == []


def test_every_inconsistency_is_listed_at_once():
    snapshot = envoy_snapshot(A, B, routes=False, endpoints=[B, DNS])
    assert sorted(consistency_errors(snapshot, policy(A, B, DNS).to_proto("1"))) == sorted(
        [
            "cluster 'provider_a' has no endpoints (ClusterLoadAssignment 'provider_a' missing)",
            "endpoints 'provider_dns' are not named by any EDS cluster",
            "listener 'ccr_listener' uses route table 'ccr_routes', which is missing",
            "policy sends provider 'dns' to cluster 'provider_dns', which is missing",
        ]
    )


def test_a_snapshot_built_by_rollout_from_the_example_is_consistent():
    cache = SnapshotCache()
    rollout = Rollout(cache, grace_seconds=0)
    example = load_policy_file(str(EXAMPLE_POLICY))
    version = rollout.update(example)
    envoy = cache.get(ENVOY_GROUP)
    assert envoy is not None
    assert consistency_errors(envoy, example.to_proto(version)) == []
    chain = example.routing.fallbacks[0].cluster  # the example's fallback chain has a cluster of its own
    # The example's mcp: the MCP service's cluster (its one server is stdio: no server cluster) and
    # the egress listener with its route table.
    assert sorted(envoy.get(CLUSTER).by_name) == sorted(
        [chain, "ccr_mcp", "provider_fake-anthropic", "provider_fake-openai"]
    )
    assert sorted(envoy.get(ENDPOINT).by_name) == ["provider_fake-anthropic", "provider_fake-openai"]
    assert sorted(envoy.get(LISTENER).by_name) == sorted([resources.LISTENER_NAME, "ccr_mcp_egress"])
    assert sorted(envoy.get(ROUTE).by_name) == sorted([resources.ROUTE_CONFIG_NAME, "ccr_mcp_egress"])
    # ...and the policy ext_proc is offered once Envoy ACKed names only those clusters.
    cache.connect_node(ENVOY_GROUP, "envoy-1")
    for type_url in (CLUSTER, ENDPOINT):
        cache.record_ack(Ack(ENVOY_GROUP, "envoy-1", type_url, envoy.get(type_url).version))
    extproc = cache.get(EXTPROC_GROUP)
    assert extproc is not None
    assert consistency_errors(envoy, extproc.get(POLICY).by_name["policy"]) == []


# --- resource builders ---------------------------------------------------------------------------


def test_an_ip_provider_gets_an_eds_cluster_fed_over_ads():
    cluster = resources.provider_cluster(A)
    assert cluster.name == "provider_a"
    assert cluster.type == Cluster.EDS
    assert cluster.eds_cluster_config.service_name == "provider_a"
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert not cluster.HasField("transport_socket")
    endpoints = resources.provider_endpoints(A)
    address = endpoints.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoints.cluster_name, address.address, address.port_value) == ("provider_a", "127.0.0.1", 9001)


def test_a_dns_provider_gets_a_logical_dns_cluster_with_tls_to_its_host():
    cluster = resources.provider_cluster(DNS)
    assert cluster.type == Cluster.LOGICAL_DNS
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("api.example.com", 443)
    tls = UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "api.example.com"
    assert tls.common_tls_context.validation_context.match_typed_subject_alt_names[0].matcher.exact == (
        "api.example.com"
    )


def test_cluster_serialization_is_deterministic():
    first = resources.provider_cluster(DNS).SerializeToString(deterministic=True)
    assert all(resources.provider_cluster(DNS).SerializeToString(deterministic=True) == first for _ in range(5))


def test_the_listener_uses_the_policy_address_port_and_body_limit_and_routes_over_rds():
    gateway = policy(A)
    listener = resources.listener(gateway)
    assert isinstance(listener, Listener)
    address = listener.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 8080)
    assert listener.per_connection_buffer_limit_bytes.value == gateway.max_request_bytes
    hcm = HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == resources.ROUTE_CONFIG_NAME
    assert [f.name for f in hcm.http_filters] == [
        "ccr.edge_headers",  # request ids on every answer, the client's Content-Encoding noted
        "envoy.filters.http.cors",
        "ccr.decompress_gzip",
        "ccr.decompress_br",
        "ccr.decompress_zstd",
        "ccr.jwt_claims",  # without auth.jwt too: the client's x-ccr-jwt-* headers removed
        "envoy.filters.http.lua",  # the decision hop, the default decision path
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.sse_to_metadata",
        "envoy.filters.http.json_to_metadata",
        "envoy.filters.http.router",
    ]


def test_the_route_table_routes_by_the_cluster_header_and_fails_closed_without_it():
    table = resources.route_configuration()
    health, routed, fallback = table.virtual_hosts[0].routes  # /health: answered by Envoy itself
    assert health.match.path == "/health" and health.direct_response.status == 200
    assert routed.route.cluster_header == resources.CLUSTER_HEADER
    assert routed.match.headers[0].name == resources.CLUSTER_HEADER
    assert fallback.direct_response.status == 404
    # Internal routing headers never reach a provider.
    # ...and the client address Envoy notes for the per-IP limits never reaches a provider.
    assert list(table.virtual_hosts[0].request_headers_to_remove) == [
        resources.CLUSTER_HEADER,
        REWRITE_HEADER,
        "x-envoy-external-address",
    ]
