"""Envoy's half of tracing: its OpenTelemetry tracer on the listener, and the collector's cluster.

Envoy starts (or continues, from a client's ``traceparent``) each request's trace and samples it
(``random_sampling``: the policy's share). Its spans: the request on the listener, one per upstream
attempt (``spawn_upstream_span``: a fallback chain's attempts are told apart), and one per call a
filter makes (the decision hop's Lua ``httpCall``, the ext_proc and ext_authz gRPC streams), each
of which carries the trace on to the decision service: a ``traceparent`` header on the hop's HTTP
call, gRPC metadata on ext_proc and ext_authz. Spans go to the collector over OTLP/gRPC through
``OTLP_CLUSTER``, which CDS delivers before the listener that names it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import envoy.config.trace.v3.opentelemetry_pb2  # noqa: F401  (registers the type for "@type")
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf import json_format

from control_plane.policy.tracing import TracingSpec
from control_plane.resources.jwt import SYSTEM_CA_BUNDLE
from control_plane.resources.resilience import TYPE_PREFIX

OTLP_CLUSTER = "ccr_otlp"
EXPORT_TIMEOUT = "2s"  # one export call; Envoy batches spans (every 5 s, or sooner when its buffer fills)


def connection_manager_tracing(spec: TracingSpec) -> dict[str, Any]:
    """The HttpConnectionManager's ``tracing`` field."""
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": TYPE_PREFIX + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": EXPORT_TIMEOUT},
                "service_name": spec.service_name,
            },
        },
        "random_sampling": {"value": spec.sample * 100},
        "spawn_upstream_span": True,
    }


def otlp_cluster(spec: TracingSpec) -> Cluster:
    """The collector, over HTTP/2 (gRPC), TLS for an https:// endpoint (system CAs, SNI and the
    certificate's name checked against its host)."""
    static = _is_ip(spec.host)
    cluster: dict[str, Any] = {
        "name": OTLP_CLUSTER,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": _address(spec)}}}]},
            ],
        },
    }
    if spec.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": spec.host,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": spec.host}}],
                    },
                },
            },
        }
    message = Cluster()
    json_format.ParseDict(cluster, message)
    return message


def _address(spec: TracingSpec) -> dict[str, Any]:
    return {"address": spec.host, "port_value": spec.port}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
