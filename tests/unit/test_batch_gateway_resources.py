"""The batch API behind the listener, control-plane side: the policy's ``batches:`` section, the
ccr_batch_api cluster and route (parsed by Envoy's own protos), the snapshot's consistency and the
rollout's make-before-break."""

from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.route.v3.route_components_pb2 import Route

from ccr.v1.contract import BATCH_API_CLUSTER, CLUSTER_HEADER, EXTPROC_GROUP
from control_plane.policy.batches import BatchesSpec
from control_plane.resources import gateway as resources
from control_plane.resources.batches import batch_api_cluster, batch_api_route
from control_plane.xds.envoy_snapshot import envoy_snapshot
from control_plane.xds.snapshot import CLUSTER, POLICY, ROUTE, consistency_errors
from tests.unit.cp_helpers import policy, provider
from tests.unit.test_policy import load, problems
from tests.unit.test_rollout import fake_clock, h, live  # noqa: F401 (fixtures)

PROVIDERS = """
providers:
  - {name: a, api: openai, base_url: "http://127.0.0.1:9100/v1", models: [m]}
"""


# --- the policy section ---------------------------------------------------------------------------


def test_batches_are_off_without_the_section():
    assert load(PROVIDERS).batches is None
    assert load(PROVIDERS).to_proto("1").batch_api is False


def test_batches_api_takes_host_port_a_dns_name_or_a_unix_socket():
    assert load(PROVIDERS + "batches: {api: 127.0.0.1:9180}").batches == BatchesSpec("127.0.0.1", 9180)
    assert load(PROVIDERS + "batches: {api: batch-api.ccr.svc:80}").batches == BatchesSpec("batch-api.ccr.svc", 80)
    assert load(PROVIDERS + "batches: {api: '[::1]:9180'}").batches == BatchesSpec("::1", 9180)
    assert load(PROVIDERS + "batches: {api: unix:/run/ccr/batch.sock}").batches == BatchesSpec(
        socket_path="/run/ccr/batch.sock"
    )
    assert load(PROVIDERS + "batches: {api: 127.0.0.1:9180}").to_proto("1").batch_api is True


def test_batches_problems_are_reported_with_their_line():
    text = PROVIDERS + "batches:\n  api: 127.0.0.1\n"
    assert problems(text) == [
        "5:8: batches.api: must be host:port (like 127.0.0.1:9180) or unix:/path where `ccr-gateway batch-api` "
        "listens, got '127.0.0.1'"
    ]
    assert problems(PROVIDERS + "batches: {api: 'unix:run/x.sock'}") == [
        "4:16: batches.api: a unix socket must be an absolute path (unix:/path), got 'unix:run/x.sock'"
    ]
    assert problems(PROVIDERS + "batches: {api: 'bad host:80'}") == [
        "4:16: batches.api: 'bad host' is not an IP address or a host name"
    ]
    assert problems(PROVIDERS + "batches: {port: 1}") == [
        "4:10: batches.api: is required",
        "4:11: batches.port: unknown field",
    ]


# --- the cluster and the route --------------------------------------------------------------------


def test_the_batch_api_cluster_is_static_for_an_ip_dns_for_a_name_and_a_pipe_for_a_socket():
    by_ip = batch_api_cluster(BatchesSpec("127.0.0.1", 9180))
    assert isinstance(by_ip, Cluster) and by_ip.name == BATCH_API_CLUSTER
    assert by_ip.type == Cluster.STATIC
    address = by_ip.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == ("127.0.0.1", 9180)
    assert batch_api_cluster(BatchesSpec("batch-api", 80)).type == Cluster.STRICT_DNS
    piped = batch_api_cluster(BatchesSpec(socket_path="/run/b.sock"))
    assert piped.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path == "/run/b.sock"


def test_the_batch_api_route_matches_its_cluster_header_with_long_transfers_and_no_ext_proc():
    route = resources.parse_resource(Route(), batch_api_route(decision_hop=True))
    assert isinstance(route, Route)
    assert route.match.headers[0].name == CLUSTER_HEADER
    assert route.match.headers[0].string_match.exact == BATCH_API_CLUSTER
    assert route.route.cluster == BATCH_API_CLUSTER
    assert route.route.timeout.seconds == 0  # a results download may stream for minutes
    assert route.route.idle_timeout.seconds >= 60
    assert "envoy.filters.http.ext_proc" in route.typed_per_filter_config
    without_hop = resources.parse_resource(Route(), batch_api_route(decision_hop=False)).typed_per_filter_config
    assert "envoy.filters.http.ext_proc" not in without_hop  # the decision runs there
    assert "envoy.filters.http.json_to_metadata" in without_hop  # no usage in the batch API's answers


def snapshot_with(batches: BatchesSpec | None):
    a = provider("a")
    desired = dataclasses.replace(policy(a), batches=batches)
    return desired, envoy_snapshot(
        "1", desired, [a], {}, resources.provider_endpoints, (resources.EXTPROC_CLUSTER,), batches=batches
    )


def test_a_snapshot_with_batches_has_the_cluster_and_its_route_before_the_catch_all():
    desired, snapshot = snapshot_with(BatchesSpec("127.0.0.1", 9180))
    assert consistency_errors(snapshot, desired.to_proto("1")) == []
    assert BATCH_API_CLUSTER in snapshot.get(CLUSTER).by_name
    routes = snapshot.get(ROUTE).by_name[resources.ROUTE_CONFIG_NAME].virtual_hosts[0].routes
    clusters = [r.route.cluster or r.route.cluster_header for r in routes]
    assert clusters.index(BATCH_API_CLUSTER) < clusters.index(CLUSTER_HEADER)


def test_a_policy_with_batches_beside_a_snapshot_without_the_cluster_is_inconsistent():
    desired, _ = snapshot_with(BatchesSpec("127.0.0.1", 9180))
    _, without = snapshot_with(None)
    assert consistency_errors(without, desired.to_proto("1")) == [
        f"policy sends the batch API to cluster {BATCH_API_CLUSTER!r}, which is missing"
    ]


# --- make-before-break ----------------------------------------------------------------------------


ADDRESS = BatchesSpec("127.0.0.1", 9180)


def with_batches(address: BatchesSpec | None = ADDRESS):
    return dataclasses.replace(policy(provider("a")), batches=address)


def test_envoy_gets_the_batch_cluster_before_ext_proc_hears_batches_are_on(h):  # noqa: F811
    live(h, provider("a"))
    h.rollout.update(with_batches())
    assert BATCH_API_CLUSTER in h.envoy()
    assert _offered_batch_api(h) is False  # Envoy has not ACKed the cluster yet
    h.envoy_acks()
    assert _offered_batch_api(h) is True


def test_envoy_keeps_the_batch_cluster_until_ext_proc_acks_a_policy_without_batches(h):  # noqa: F811
    h.rollout.update(with_batches())
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks()
    h.extproc_acks()
    h.rollout.update(with_batches(None))
    assert BATCH_API_CLUSTER in h.envoy()  # ext_proc may still forward there
    h.envoy_acks()
    assert _offered_batch_api(h) is False
    assert BATCH_API_CLUSTER in h.envoy()
    h.extproc_acks()  # grace 0: dropped at once
    assert BATCH_API_CLUSTER not in h.envoy()


def _offered_batch_api(h) -> bool:  # noqa: F811
    snapshot = h.cache.get(EXTPROC_GROUP)
    return bool(snapshot.get(POLICY).by_name["policy"].batch_api)
