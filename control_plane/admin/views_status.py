"""GET /admin/v1/status without I/O: the control plane's status file, Envoy admin documents and
the ledger's newest record in; the answer out.

Also the home of the Envoy-admin parsing `ccr-gateway status` uses (``cluster_health``,
``host_is_healthy``, ``rejection_pending``: moved here from ccr_gateway.status, which imports them,
because the control plane may not import the composition root).

A cluster is red, amber or green by the signals of the Prometheus alerts
(deploy/observability/prometheus/rules/alerts.yml):
- red: no host, or no healthy host (CCRProviderDown: the provider is unreachable);
- amber: a host ejected by outlier detection (CCRProviderEjected), a circuit breaker open
  (CCRCircuitBreakerOpen: ``*_open`` gauges, or no headroom left), or less than LOW_HEADROOM of a
  breaker's maximum left (about to open);
- green otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LOW_HEADROOM = 0.1  # amber below 10 % of a circuit breaker's maximum left
CACHE_WINDOW_SECONDS = 3600  # the hit ratio is the ledger's over the last hour
# Stats /status asks Envoy for: circuit breaker gauges and active ejections (Envoy's filter is a regex).
STATS_FILTER = r"circuit_breakers\.default\.|outlier_detection\.ejections_active"

# Envoy's circuit breaker limits (DEFAULT priority) and the gauge of what is left under each.
_LIMITS = {
    "requests": ("max_requests", "rq"),
    "pending": ("max_pending_requests", "pending"),
    "connections": ("max_connections", "cx"),
}
_REMAINING = re.compile(r"^cluster\.(.+)\.circuit_breakers\.default\.remaining_(rq|pending|cx)$")
_OPEN = re.compile(r"^cluster\.(.+)\.circuit_breakers\.default\.(rq|rq_pending|cx)_open$")
_EJECTED = re.compile(r"^cluster\.(.+)\.outlier_detection\.ejections_active$")
_UNHEALTHY_EDS = {"UNHEALTHY", "DRAINING", "TIMEOUT"}


# --- Envoy's admin documents (shared with `ccr-gateway status`) ------------------------------------


@dataclass(frozen=True, slots=True)
class Headroom:
    remaining: int
    maximum: int


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    name: str
    hosts: int
    healthy: int
    headroom: dict[str, Headroom] = field(default_factory=dict)  # "requests" | "pending" | "connections"

    def problems(self) -> list[str]:
        out = []
        if not self.hosts:
            out.append(f"cluster {self.name}: no hosts")
        elif not self.healthy:
            out.append(f"cluster {self.name}: none of its {self.hosts} hosts is healthy")
        for kind, room in self.headroom.items():
            if room.maximum and room.remaining <= 0:
                out.append(f"cluster {self.name}: circuit breaker open ({kind}: all {room.maximum} in use)")
        return out


def _stats(stats: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(name, value) of the integer stats of a ``/stats?format=json`` document."""
    items = stats.get("stats")
    if not isinstance(items, list):
        return []
    return [
        (str(stat.get("name", "")), stat["value"])
        for stat in items
        if isinstance(stat, Mapping) and isinstance(stat.get("value"), int) and not isinstance(stat["value"], bool)
    ]


def cluster_health(clusters: Mapping[str, Any], stats: Mapping[str, Any]) -> list[ClusterHealth]:
    """``clusters``: Envoy's ``/clusters?format=json``; ``stats``: ``/stats?format=json`` (filtered
    to the remaining_* gauges, or not)."""
    remaining: dict[str, dict[str, int]] = {}
    for name, value in _stats(stats):
        match = _REMAINING.match(name)
        if match:
            remaining.setdefault(match[1], {})[match[2]] = value
    out = []
    for cluster in clusters.get("cluster_statuses", []):
        name = cluster.get("name", "?")
        hosts = cluster.get("host_statuses", [])
        thresholds = cluster.get("circuit_breakers", {}).get("thresholds", [])
        default = next((t for t in thresholds if t.get("priority", "DEFAULT") == "DEFAULT"), {})
        headroom = {
            kind: Headroom(remaining[name][gauge], int(default.get(limit, 0)))
            for kind, (limit, gauge) in _LIMITS.items()
            if gauge in remaining.get(name, {})
        }
        healthy = sum(1 for host in hosts if host_is_healthy(host.get("health_status", {})))
        out.append(ClusterHealth(name, len(hosts), healthy, headroom))
    return sorted(out, key=lambda c: (_cluster_rank(c.name), c.name))


def host_is_healthy(status: Mapping[str, Any]) -> bool:
    """Envoy's per-host flags: any failed_* check, or an EDS/DNS status saying so, makes it unhealthy."""
    if any(value is True for key, value in status.items() if key.startswith("failed_")):
        return False
    return status.get("eds_health_status", "HEALTHY") not in _UNHEALTHY_EDS


def _cluster_rank(name: str) -> int:
    """Providers first, then fallback chains, then the gateway's own plumbing."""
    return 0 if name.startswith("provider_") else 1 if name.startswith("chain_") else 2


def rejection_pending(policy: Mapping[str, Any]) -> bool:
    """Was a policy rejected after the one running was accepted (the file on disk is not live)?"""
    rejected = policy.get("last_rejected")
    if not rejected:
        return False
    accepted_at, rejected_at = moment(policy.get("accepted_at")), moment(rejected.get("at"))
    return accepted_at is None or (rejected_at is not None and rejected_at >= accepted_at)


def moment(text: Any) -> datetime | None:
    """An ISO time as the status file writes it (UTC when it names no offset); None if not one."""
    try:
        parsed = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- the status answer ------------------------------------------------------------------------------


def ejections(stats: Mapping[str, Any]) -> dict[str, int]:
    """cluster -> hosts ejected by outlier detection now."""
    out: dict[str, int] = {}
    for name, value in _stats(stats):
        if match := _EJECTED.match(name):
            out[match[1]] = value
    return out


def open_breakers(stats: Mapping[str, Any]) -> dict[str, set[str]]:
    """cluster -> the circuit breakers Envoy reports open (rq, rq_pending, cx)."""
    out: dict[str, set[str]] = {}
    for name, value in _stats(stats):
        if (match := _OPEN.match(name)) and value > 0:
            out.setdefault(match[1], set()).add(match[2])
    return out


def cluster_state(cluster: ClusterHealth, ejected: int, opened: set[str]) -> str:
    if not cluster.hosts or not cluster.healthy:
        return "red"
    if ejected > 0 or opened:
        return "amber"
    for room in cluster.headroom.values():
        if room.maximum and room.remaining < room.maximum * LOW_HEADROOM:
            return "amber"
    return "green"


@dataclass(frozen=True, slots=True)
class EnvoyAdmin:
    """What one Envoy admin answered: its documents, or why there are none."""

    url: str
    clusters: Mapping[str, Any] | None  # /clusters?format=json; None: unreachable
    stats: Mapping[str, Any] | None = None  # /stats?format=json&filter=STATS_FILTER
    error: str | None = None


def clusters_of(admin: EnvoyAdmin) -> list[dict[str, Any]]:
    if admin.clusters is None:
        return []
    stats = admin.stats or {}
    ejected, opened = ejections(stats), open_breakers(stats)
    return [
        {
            "name": cluster.name,
            "gateway": admin.url,
            "hosts": cluster.hosts,
            "healthy": cluster.healthy,
            "ejected": ejected.get(cluster.name, 0),
            "circuit_breaker": {
                kind: {"remaining": room.remaining, "maximum": room.maximum} for kind, room in cluster.headroom.items()
            },
            "circuit_breaker_open": sorted(opened.get(cluster.name, set())),
            "state": cluster_state(cluster, ejected.get(cluster.name, 0), opened.get(cluster.name, set())),
        }
        for cluster in cluster_health(admin.clusters, stats)
    ]


def policy_of(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The policy in force, from the control plane's status file (nulls when it is unreadable)."""
    status = status or {}
    return {
        "version": status.get("policy_sha256"),
        "generation": status.get("version") or None,
        "accepted_at": status.get("accepted_at"),
        "source": status.get("source") or None,
        "rejection_pending": rejection_pending(status),
    }


def gateways_of(status: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The xDS clients (Envoys and ext_proc workers) and the generation each ACKed. ``nacked`` is
    the status file's when it records one, else null (unknown is not "none")."""
    out = []
    for client in (status or {}).get("xds_clients") or []:
        if not isinstance(client, Mapping):
            continue
        out.append(
            {
                "node": client.get("node"),
                "group": client.get("group"),
                "acked_version": client.get("generation"),
                "acked": dict(client.get("acked") or {}),
                "nacked": client.get("nacked"),
            }
        )
    return out


def status_body(
    status: Mapping[str, Any] | None,
    admins: Sequence[EnvoyAdmin],
    *,
    now: datetime,
    newest_record: datetime | None = None,
    cache_requests: int | None = None,
    cache_hits: int | None = None,
) -> dict[str, Any]:
    """The whole answer. ``status``: the status file (None: unreadable); ``newest_record``: the
    ledger's newest usage record (None: unknown); ``cache_*``: the ledger's last hour."""
    clusters = [cluster for admin in admins for cluster in clusters_of(admin)]
    lag = max((now - newest_record).total_seconds(), 0.0) if newest_record is not None else None
    ratio = cache_hits / cache_requests if cache_requests and cache_hits is not None else None
    return {
        "policy": policy_of(status),
        "gateways": gateways_of(status),
        "envoy": [
            {"admin": admin.url, "reachable": admin.clusters is not None, "error": admin.error} for admin in admins
        ],
        "clusters": clusters,
        "cache": {"hit_ratio": ratio, "window_seconds": CACHE_WINDOW_SECONDS},
        "ledger": {
            "lag_seconds": lag,
            "newest_record_at": newest_record.astimezone(UTC).isoformat().replace("+00:00", "Z")
            if newest_record
            else None,
        },
    }
