"""control_plane.xds.envoy_snapshot (pure) and the rollout's check before anything reaches Envoy."""

from __future__ import annotations

import logging

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from ccr.v1.contract import ENVOY_GROUP, REWRITE_HEADER, REWRITE_RESPONSE
from control_plane.resources import gateway as resources
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.envoy_snapshot import envoy_snapshot
from control_plane.xds.rollout import Rollout
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot, consistency_errors
from tests.unit.cp_helpers import policy, provider


def test_the_same_inputs_build_the_same_consistent_snapshot():
    a, b = provider("a"), provider("b", host="api.example.com", scheme="https", port=443)
    desired = policy(a, b)

    def build() -> Snapshot:
        return envoy_snapshot("7", desired, [b, a], {}, resources.provider_endpoints, (resources.EXTPROC_CLUSTER,))

    first, second = build(), build()
    assert first == second and consistency_errors(first) == []
    assert set(first.get(CLUSTER).by_name) == {a.cluster, b.cluster}
    assert set(first.get(ENDPOINT).by_name) == {a.cluster}  # IP hosts use EDS; DNS names do not
    assert set(first.get(LISTENER).by_name) == {resources.LISTENER_NAME}
    assert set(first.get(ROUTE).by_name) == {resources.ROUTE_CONFIG_NAME}


def test_an_inconsistent_snapshot_is_never_served_to_envoy(monkeypatch, caplog):
    cache = SnapshotCache()
    rollout = Rollout(cache, grace_seconds=0)
    rollout.update(policy(provider("a")))
    served = cache.get(ENVOY_GROUP)
    assert served is not None

    def dangling(*args, **kwargs) -> Snapshot:  # an EDS cluster without its endpoints: a builder bug
        good = envoy_snapshot(*args, **kwargs)
        return Snapshot.build(
            "bad",
            clusters=list(good.get(CLUSTER).by_name.items()),
            endpoints=[("nobody", ClusterLoadAssignment(cluster_name="nobody"))],
            listeners=list(good.get(LISTENER).by_name.items()),
            routes=list(good.get(ROUTE).by_name.items()),
        )

    monkeypatch.setattr("control_plane.xds.rollout.envoy_snapshot", dangling)
    with caplog.at_level(logging.ERROR, logger="ccr.control_plane.xds.rollout"):
        rollout.update(policy(provider("a"), provider("b")))
    assert cache.get(ENVOY_GROUP) is served  # Envoy keeps what it had
    assert "refusing to serve Envoy snapshot" in caplog.text and "not named by any EDS cluster" in caplog.text


def test_with_the_decision_hop_ext_proc_runs_only_where_a_response_is_rewritten():
    """Provider routes turn ext_proc off; their REWRITE_HEADER variants (translated streams), and the
    chain route's (fallback chains), run it on the response only. The chain cluster's per-attempt
    filter has its own name, so the chain route's per-filter config never reaches it."""
    from control_plane.resources.chains import ATTEMPT_FILTER, _upstream_extproc, chain_route
    from control_plane.resources.decision_hop import EXTPROC_FILTER, response_only_variant

    a = provider("a")
    routes = resources.provider_routes(a, decision_hop=True)
    assert [r["match"]["headers"][-1]["name"] for r in routes] == [REWRITE_HEADER, resources.CLUSTER_HEADER]
    response_only = routes[0]["typed_per_filter_config"][EXTPROC_FILTER]["overrides"]["processing_mode"]
    assert (response_only["request_header_mode"], response_only["response_header_mode"]) == ("SKIP", "SEND")
    assert routes[1]["typed_per_filter_config"][EXTPROC_FILTER]["disabled"] is True
    assert resources.provider_routes(a, decision_hop=False) == [resources.provider_route(a)]
    chain = response_only_variant(chain_route(resources.ROUTE_TIMEOUT, 2))
    assert chain["route"]["retry_policy"] == chain_route(resources.ROUTE_TIMEOUT, 2)["route"]["retry_policy"]
    assert {"name": REWRITE_HEADER, "string_match": {"exact": REWRITE_RESPONSE}} in chain["match"]["headers"]
    assert EXTPROC_FILTER in chain["typed_per_filter_config"]
    assert _upstream_extproc()["name"] == ATTEMPT_FILTER != EXTPROC_FILTER
