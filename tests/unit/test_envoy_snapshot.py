"""control_plane.xds.envoy_snapshot (pure) and the rollout's check before anything reaches Envoy."""

from __future__ import annotations

import logging

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from ccr.v1.contract import ENVOY_GROUP
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
