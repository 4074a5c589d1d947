"""Fallback chains in Envoy: one cluster per chain, one priority level per provider, retried by
Envoy's router, each attempt rewritten for its provider by an ext_proc in the cluster's upstream
filter chain (it runs after the load balancer picked the endpoint, once per attempt).

Why Envoy and not Python: the retry happens where the connection state is (connect refused,
reset, 429/5xx before any byte reached the client), open circuit breakers and ejected hosts are
skipped by Envoy's own load balancer, and Python never re-sends a body.

The attempt's provider is read from the endpoint's metadata (``ccr.provider``): the upstream
ext_proc asks for it as the ``xds.upstream_host_metadata`` attribute, and the router copies it to
the response as ``x-ccr-provider`` so the downstream ext_proc translates the answer from the
provider that actually produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import envoy.extensions.filters.http.upstream_codec.v3.upstream_codec_pb2
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2
import envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2  # noqa: F401
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from ccr.v1.contract import (
    BATCH_HEADERS,
    CLUSTER_HEADER,
    METADATA_NAMESPACE,
    PROVIDER_RESPONSE_HEADER,
    UPSTREAM_PHASE_METADATA,
)
from control_plane.policy import ProviderSpec
from control_plane.policy.routes import FallbackSpec
from control_plane.resources import attempt_credentials
from control_plane.resources.gateway import (
    CLIENT_CERT_HEADER,
    EXTPROC_CLUSTER,
    EXTPROC_MESSAGE_TIMEOUT,
    EXTPROC_STREAM_RETRY,
    TYPE_PREFIX,
    parse_resource,
    resilience,
    tls_socket,
)

# Conditions under which the next provider of the chain is tried.
CHAIN_CLUSTER_PREFIX = "chain_"
ATTEMPT_FILTER = "ccr.attempt_ext_proc"  # the chain cluster's upstream ext_proc filter
RETRY_ON = "5xx,reset,connect-failure,refused-stream,retriable-status-codes"


def chain_cluster(
    chain: FallbackSpec, providers: dict[str, ProviderSpec], environ: Mapping[str, str] | None = None
) -> Cluster:
    """Envoy has one set of limits and one outlier detector per cluster, not per priority, so the
    chain cluster takes them from its primary (it carries the chain's traffic while all is well);
    each fallback's own settings govern its provider cluster. Per endpoint: the provider's TLS.

    An ejected host is skipped: with no panic threshold, a priority whose only host is ejected has
    no healthy host and its load moves to the next priority, so the next request goes straight to
    the fallback instead of failing on the primary first. At most all providers but one are ejected
    (chain_ejection_cap): with none left, Envoy would answer 503 without trying anyone.

    Bedrock and Vertex members get their signature or token from Envoy per attempt
    (control_plane.resources.attempt_credentials); ``environ``: where web identity's role is read."""
    specs = [providers[name] for name in chain.providers]
    primary = specs[0].resilience
    tls_matches = [
        {
            "name": f"tls-{p.name}",
            "match": {"provider": p.name},
            # HTTP/1.1 only: protocol options are per cluster, and the chain mixes providers.
            "transport_socket": tls_socket(p, alpn=("http/1.1",)),
        }
        for p in specs
        if p.scheme == "https"
    ]
    # Active checks only when every provider of the chain is checked the same way (one path for
    # all hosts): a SaaS fallback has no /health to answer a self-hosted primary's check.
    checks = {p.resilience.health_check for p in specs}
    health_check = checks.pop() if len(checks) == 1 else None
    cluster: dict[str, Any] = {
        "name": chain.cluster,
        # STRICT_DNS resolves SaaS host names and IP literals alike; one priority per provider.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": resilience.duration(primary.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        "common_lb_config": resilience.no_panic(),
        "circuit_breakers": resilience.circuit_breakers(primary),
        "load_assignment": {
            "cluster_name": chain.cluster,
            "endpoints": [
                {
                    "priority": priority,
                    "lb_endpoints": [
                        {
                            "endpoint": _endpoint(p, health_check is not None),
                            "metadata": {"filter_metadata": {METADATA_NAMESPACE: {"provider": p.name}}},
                        }
                    ],
                }
                for priority, p in enumerate(specs)
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": resilience.duration(primary.idle_timeout_ms)},
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [_upstream_extproc(), *attempt_credentials.filters(specs, environ), _upstream_codec()],
            }
        },
    }
    if primary.outlier_detection is not None:
        cap = resilience.chain_ejection_cap(len(specs), primary.outlier_detection.max_ejection_percent)
        cluster["outlier_detection"] = resilience.outlier_detection(primary.outlier_detection, cap)
    if health_check is not None:
        cluster["health_checks"] = resilience.health_checks(health_check)
    if tls_matches:
        cluster["transport_socket_matches"] = tls_matches
    return parse_resource(Cluster(), cluster)


def _endpoint(provider: ProviderSpec, health_checked: bool) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "address": {"socket_address": {"address": provider.host, "port_value": provider.port}},
        "hostname": provider.host,
    }
    if health_checked:  # the checks' Host header, per endpoint (the cluster's name otherwise)
        endpoint["health_check_config"] = {"hostname": provider.host}
    return endpoint


def _upstream_extproc() -> dict[str, Any]:
    return {
        # Not the listener filter's name: a route's per-filter config for "envoy.filters.http.ext_proc"
        # (the decision hop's response-only mode on the chain route) must not reach this one.
        "name": ATTEMPT_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
                "initial_metadata": [{"key": UPSTREAM_PHASE_METADATA[0], "value": UPSTREAM_PHASE_METADATA[1]}],
                "retry_policy": EXTPROC_STREAM_RETRY,
            },
            "failure_mode_allow": False,
            "message_timeout": EXTPROC_MESSAGE_TIMEOUT,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            "request_attributes": ["xds.upstream_host_metadata"],
            "metadata_options": {"forwarding_namespaces": {"untyped": [METADATA_NAMESPACE]}},
        },
    }


def _upstream_codec() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.upstream_codec",
        "typed_config": {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
    }


def chain_route(timeout: str, max_attempts: int, attempt_timeout_seconds: float = 0.0) -> dict[str, Any]:
    """The route for requests ext_proc sent to a chain cluster: the same, plus the retry policy.
    With an attempt timeout, a provider that sends no response headers in time is given up on and
    the next one tried (Envoy's per_try_timeout: it ends at the first byte of the response)."""
    route = {
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER_HEADER, "string_match": {"prefix": CHAIN_CLUSTER_PREFIX}}],
        },
        "route": {
            "cluster_header": CLUSTER_HEADER,
            "timeout": timeout,
            "auto_host_rewrite": True,
            "retry_policy": {
                "retry_on": RETRY_ON,
                "retriable_status_codes": [429],
                "num_retries": max_attempts - 1,
                # Each retry moves to the next priority (= the next provider of the chain).
                "retry_priority": {
                    "name": "envoy.retry_priorities.previous_priorities",
                    "typed_config": {
                        "@type": TYPE_PREFIX
                        + "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                        "update_frequency": 1,
                    },
                },
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": TYPE_PREFIX
                            + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        },
                    }
                ],
                "host_selection_retry_max_attempts": 5,
                "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
            },
        },
        # What only the gateway reads (as on a provider's own route).
        "request_headers_to_remove": [CLIENT_CERT_HEADER, *BATCH_HEADERS],
        "response_headers_to_add": [
            {
                "header": {
                    "key": PROVIDER_RESPONSE_HEADER,
                    "value": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:provider)%",
                },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    if attempt_timeout_seconds > 0:
        route["route"]["retry_policy"]["per_try_timeout"] = f"{attempt_timeout_seconds:g}s"
    return route
