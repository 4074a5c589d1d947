"""Per-provider resilience: pure builders turning the settings a policy gives a provider
(control_plane.policy.resilience) into the parts of an Envoy cluster that carry them.

=========================  =============================================================
setting                    Envoy field
=========================  =============================================================
max_connections ...        ``circuit_breakers.thresholds[DEFAULT]`` (+ ``retry_budget``)
outlier_detection          ``outlier_detection`` (passive health: consecutive 5xx/gateway)
health_check               ``health_checks[0].http_health_check`` (active, off by default)
connect_timeout            ``connect_timeout``
idle_timeout               ``HttpProtocolOptions.common_http_protocol_options.idle_timeout``
request_timeout            the provider's route: ``timeout``
stream_idle_timeout        the provider's route: ``idle_timeout``
http2                      ``HttpProtocolOptions`` auto/explicit config + the TLS ALPN list
tls                        ``UpstreamTlsContext`` (built in gateway.tls_socket)
=========================  =============================================================

The builders return dicts in Envoy's JSON shape (gateway.parse_resource turns them into protos,
which is where a wrong field name fails). They are deterministic: the same settings always give the
same dict, so an unchanged provider never changes its cluster's serialized form (a changed cluster
is rebuilt by Envoy and its connection pools drained).
"""

from __future__ import annotations

import math
from typing import Any

from control_plane.policy.resilience import HealthCheck, Http2, OutlierDetection, Resilience

TYPE_PREFIX = "type.googleapis.com/"


def duration(ms: int) -> str:
    """Milliseconds as a protobuf JSON duration: 5000 -> "5s", 500 -> "0.5s"."""
    seconds, rest = divmod(ms, 1000)
    return f"{seconds}.{rest:03d}".rstrip("0").rstrip(".") + "s"


def circuit_breakers(settings: Resilience) -> dict[str, Any]:
    threshold: dict[str, Any] = {
        "priority": "DEFAULT",
        "max_connections": settings.max_connections,
        "max_pending_requests": settings.max_pending_requests,
        "max_requests": settings.max_requests,
        "max_retries": settings.max_retries,
        # circuit_breakers.default.remaining_* gauges: how close the cluster is to opening.
        "track_remaining": True,
    }
    if settings.retry_budget is not None:
        threshold["retry_budget"] = {
            "budget_percent": {"value": settings.retry_budget.budget_percent},
            "min_retry_concurrency": settings.retry_budget.min_retry_concurrency,
        }
    return {"thresholds": [threshold]}


def outlier_detection(settings: OutlierDetection, max_ejection_percent: int | None = None) -> dict[str, Any]:
    """``max_ejection_percent`` overrides the setting (chain clusters cap it, see chain_ejection_cap)."""
    return {
        "consecutive_5xx": settings.consecutive_5xx,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": settings.consecutive_gateway_failure,
        # Envoy detects gateway failures by default but enforces none of them (0 %).
        "enforcing_consecutive_gateway_failure": 100,
        "interval": duration(settings.interval_ms),
        "base_ejection_time": duration(settings.base_ejection_time_ms),
        "max_ejection_percent": settings.max_ejection_percent if max_ejection_percent is None else max_ejection_percent,
    }


def chain_ejection_cap(hosts: int, setting: int) -> int:
    """The highest max_ejection_percent that still leaves one of ``hosts`` un-ejected.

    Envoy ejects a host when (ejected + 1) / hosts * 100 <= max_ejection_percent, so allowing
    hosts - 1 ejections takes ceil(100 * (hosts - 1) / hosts). A chain cluster has no panic mode
    (healthy_panic_threshold 0): with every provider ejected it would answer 503 "no healthy
    upstream" at once and stop trying any of them until an ejection expires. A host name that
    resolves to several addresses adds hosts; any cap under 100 still leaves at least one."""
    return min(setting, math.ceil(100 * (hosts - 1) / hosts)) if hosts > 0 else 0


def health_checks(settings: HealthCheck, host: str = "") -> list[dict[str, Any]]:
    """``host`` is the Host header of the checks (default: the cluster's name, which no provider
    answers to); chain clusters leave it empty and set it per endpoint instead."""
    http_check: dict[str, Any] = {"path": settings.path}
    if host:
        http_check["host"] = host
    # Int64Range is half-open: one [status, status + 1) range per expected status.
    http_check["expected_statuses"] = [{"start": s, "end": s + 1} for s in sorted(set(settings.expected_statuses))]
    return [
        {
            "timeout": duration(settings.timeout_ms),
            "interval": duration(settings.interval_ms),
            "unhealthy_threshold": settings.unhealthy_threshold,
            "healthy_threshold": settings.healthy_threshold,
            "http_health_check": http_check,
        }
    ]


def alpn(settings: Resilience) -> tuple[str, ...]:
    """What the TLS handshake offers; it must agree with protocol_options."""
    return {Http2.AUTO: ("h2", "http/1.1"), Http2.ALWAYS: ("h2",), Http2.NEVER: ("http/1.1",)}[settings.http2]


def protocol_options(settings: Resilience, scheme: str) -> dict[str, Any]:
    """The cluster's HttpProtocolOptions (typed_extension_protocol_options)."""
    options: dict[str, Any] = {
        "@type": TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": duration(settings.idle_timeout_ms)},
    }
    if settings.http2 is Http2.ALWAYS:
        options["explicit_http_config"] = {"http2_protocol_options": {}}
    elif settings.http2 is Http2.AUTO and scheme == "https":  # ALPN picks h2 where the provider offers it
        options["auto_config"] = {"http_protocol_options": {}, "http2_protocol_options": {}}
    else:
        options["explicit_http_config"] = {"http_protocol_options": {}}
    return options


def no_panic() -> dict[str, Any]:
    """common_lb_config for clusters whose unhealthy hosts must never get traffic (fallback chains):
    with Envoy's default 50 % panic threshold, a priority whose one host is ejected is "in panic"
    and still receives every request."""
    return {"healthy_panic_threshold": {"value": 0.0}}
