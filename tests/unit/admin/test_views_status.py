"""views_status: Envoy's admin documents -> clusters red/amber/green by the alerts' signals, the
status file -> policy and xDS clients, the ledger's figures -> lag and hit ratio."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from control_plane.admin import views_status
from control_plane.admin.views_status import ClusterHealth, EnvoyAdmin, Headroom

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def clusters_doc(*clusters: tuple[str, list[dict[str, Any]], int]) -> dict[str, Any]:
    """(name, host health statuses, max_requests)."""
    return {
        "cluster_statuses": [
            {
                "name": name,
                "host_statuses": [{"health_status": status} for status in hosts],
                "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_requests": limit}]},
            }
            for name, hosts, limit in clusters
        ]
    }


def stats_doc(**values: int) -> dict[str, Any]:
    return {"stats": [{"name": name.replace("__", "."), "value": value} for name, value in values.items()]}


HEALTHY = {"eds_health_status": "HEALTHY"}


def test_a_cluster_with_no_healthy_host_is_red() -> None:
    assert views_status.cluster_state(ClusterHealth("provider_a", 2, 0), 0, set()) == "red"
    assert views_status.cluster_state(ClusterHealth("provider_a", 0, 0), 0, set()) == "red"


def test_an_ejection_an_open_breaker_or_low_headroom_is_amber() -> None:
    healthy = ClusterHealth("provider_a", 2, 2, {"requests": Headroom(50, 100)})
    assert views_status.cluster_state(healthy, 0, set()) == "green"
    assert views_status.cluster_state(healthy, 1, set()) == "amber"
    assert views_status.cluster_state(healthy, 0, {"rq"}) == "amber"
    low = ClusterHealth("provider_a", 2, 2, {"requests": Headroom(9, 100)})
    assert views_status.cluster_state(low, 0, set()) == "amber"
    unlimited = ClusterHealth("provider_a", 2, 2, {"requests": Headroom(0, 0)})
    assert views_status.cluster_state(unlimited, 0, set()) == "green"


@given(hosts=st.integers(0, 5), healthy=st.integers(0, 5), ejected=st.integers(0, 3), remaining=st.integers(0, 100))
def test_red_means_no_healthy_host_and_green_means_no_warning_signal(
    hosts: int, healthy: int, ejected: int, remaining: int
) -> None:
    healthy = min(healthy, hosts)
    state = views_status.cluster_state(
        ClusterHealth("c", hosts, healthy, {"requests": Headroom(remaining, 100)}), ejected, set()
    )
    assert (state == "red") == (healthy == 0)
    if state == "green":
        assert ejected == 0 and remaining >= 10


def test_clusters_of_an_admin_read_hosts_breakers_and_ejections() -> None:
    admin = EnvoyAdmin(
        "http://127.0.0.1:9901",
        clusters_doc(
            ("provider_a", [HEALTHY, {"failed_outlier_check": True}], 100),
            ("provider_b", [HEALTHY], 10),
            ("ccr_extproc", [{"eds_health_status": "UNHEALTHY"}], 0),
        ),
        stats_doc(
            cluster__provider_a__circuit_breakers__default__remaining_rq=80,
            cluster__provider_a__outlier_detection__ejections_active=1,
            cluster__provider_b__circuit_breakers__default__remaining_rq=0,
            cluster__provider_b__circuit_breakers__default__rq_open=1,
        ),
    )
    clusters = {cluster["name"]: cluster for cluster in views_status.clusters_of(admin)}
    assert list(clusters) == ["provider_a", "provider_b", "ccr_extproc"]
    assert clusters["provider_a"] == {
        "name": "provider_a",
        "gateway": "http://127.0.0.1:9901",
        "hosts": 2,
        "healthy": 1,
        "ejected": 1,
        "circuit_breaker": {"requests": {"remaining": 80, "maximum": 100}},
        "circuit_breaker_open": [],
        "state": "amber",
    }
    assert clusters["provider_b"]["state"] == "amber" and clusters["provider_b"]["circuit_breaker_open"] == ["rq"]
    assert clusters["ccr_extproc"]["state"] == "red"
    assert views_status.clusters_of(EnvoyAdmin("http://x", None, None, "refused")) == []


def test_odd_stats_documents_are_ignored_not_fatal() -> None:
    for stats in (
        {},
        {"stats": "nope"},
        {"stats": [1, {"name": "x"}, {"name": "cluster.a.outlier_detection.ejections_active", "value": True}]},
    ):
        assert views_status.ejections(stats) == {}
        assert views_status.open_breakers(stats) == {}


def test_the_status_body_reads_the_status_file_and_marks_unreachable_admins() -> None:
    status = {
        "version": "4",
        "source": "/etc/ccr/policy.yaml",
        "accepted_at": "2026-12-05T11:00:00+00:00",
        "policy_sha256": "ab" * 32,
        "last_rejected": None,
        "xds_clients": [
            {"group": "ccr-gateway", "node": "envoy-1", "generation": "4", "acked": {"Cluster": "ff"}},
            {"group": "ccr-extproc", "node": "w0", "generation": None, "acked": {}, "nacked": "bad"},
            "junk",
        ],
    }
    admins = [
        EnvoyAdmin("http://a:9901", clusters_doc(("provider_a", [HEALTHY], 100)), {}),
        EnvoyAdmin("http://b:9901", None, None, "ClientConnectorError: refused"),
    ]
    body = views_status.status_body(
        status, admins, now=NOW, newest_record=NOW - timedelta(seconds=30), cache_requests=8, cache_hits=2
    )
    assert body["policy"] == {
        "version": "ab" * 32,
        "generation": "4",
        "accepted_at": "2026-12-05T11:00:00+00:00",
        "source": "/etc/ccr/policy.yaml",
        "rejection_pending": False,
    }
    assert body["gateways"] == [
        {"node": "envoy-1", "group": "ccr-gateway", "acked_version": "4", "acked": {"Cluster": "ff"}, "nacked": None},
        {"node": "w0", "group": "ccr-extproc", "acked_version": None, "acked": {}, "nacked": "bad"},
    ]
    assert body["envoy"] == [
        {"admin": "http://a:9901", "reachable": True, "error": None},
        {"admin": "http://b:9901", "reachable": False, "error": "ClientConnectorError: refused"},
    ]
    assert [cluster["state"] for cluster in body["clusters"]] == ["green"]
    assert body["cache"]["hit_ratio"] == 0.25
    assert body["ledger"] == {"lag_seconds": 30.0, "newest_record_at": "2026-12-05T11:59:30Z"}


def test_unknown_figures_are_null() -> None:
    body = views_status.status_body(None, [], now=NOW)
    assert body["policy"]["generation"] is None and body["policy"]["version"] is None
    assert body["gateways"] == [] and body["clusters"] == []
    assert body["cache"]["hit_ratio"] is None and body["ledger"]["lag_seconds"] is None
    assert views_status.status_body(None, [], now=NOW, cache_requests=0, cache_hits=0)["cache"]["hit_ratio"] is None
    future = views_status.status_body(None, [], now=NOW, newest_record=NOW + timedelta(seconds=5))
    assert future["ledger"]["lag_seconds"] == 0.0  # a clock ahead of ours is no negative lag


def test_a_rejection_after_the_acceptance_is_pending() -> None:
    base = {"accepted_at": "2026-12-05T10:00:00+00:00"}
    assert not views_status.rejection_pending(base)
    assert views_status.rejection_pending({**base, "last_rejected": {"at": "2026-12-05T10:00:01+00:00"}})
    assert not views_status.rejection_pending({**base, "last_rejected": {"at": "2026-12-05T09:00:00+00:00"}})
    assert views_status.rejection_pending({"last_rejected": {"at": "garbage"}})
