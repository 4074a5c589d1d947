"""Pure builders: GatewayPolicy -> Envoy resources (clusters, endpoints, listener, routes).

Resources are written as dicts in the same shape as Envoy's YAML docs (easier to read and compare
with them than nested proto constructors) and parsed into typed protos once, here. Nothing in this
module does I/O.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# Importing the proto modules registers their types so that "@type" in typed_config resolves.
import envoy.extensions.access_loggers.filters.cel.v3.cel_pb2
import envoy.extensions.access_loggers.stream.v3.stream_pb2
import envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2
import envoy.extensions.transport_sockets.tls.v3.tls_pb2
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf import json_format
from google.protobuf.message import Message

from ccr.v1.contract import (
    BATCH_HEADERS,
    CLUSTER_HEADER,
    EXTPROC_CLUSTER,
    HOP_DETAILS_KEY,
    MCP_CLIENT_API,
    METADATA_NAMESPACE,
    REWRITE_HEADER,
    USAGE_NAMESPACE,
)
from control_plane.policy import GatewayPolicy, ProviderSpec
from control_plane.policy.cors import CorsSpec
from control_plane.policy.resilience import TlsSettings
from control_plane.resources import (
    aws_signing,
    edge,
    edge_limits,
    localities,
    provider_keys,
    resilience,
    tracing,
    usage_capture,
)
from control_plane.resources import decision_hop as decision_hop_resources
from control_plane.resources import hardening as hardening_resources
from control_plane.resources import jwt as jwt_resources
from control_plane.resources import tls as tls_resources

LISTENER_NAME = "ccr_listener"
ROUTE_CONFIG_NAME = "ccr_routes"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CLIENT_CERT_HEADER = "x-forwarded-client-cert"

# LLM calls are long: a non-streaming completion of a big model can take minutes. The listener's
# own timeouts (stream idle, whole request: off for SSE) are policy knobs (listener.hardening).
ROUTE_TIMEOUT = "600s"
# ext_proc answers in well under a millisecond; this bound only matters when it is wedged.
EXTPROC_MESSAGE_TIMEOUT = "5s"
# A worker that is stopping or was killed refuses the stream (`up` replaces it within a second, and
# outlier detection takes it out of rotation at once): open it again on another worker.
EXTPROC_STREAM_RETRY = {
    "retry_on": "connect-failure,refused-stream,reset,unavailable,cancelled",
    "num_retries": 2,
    "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": resilience.TYPE_PREFIX + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    # LEAST_REQUEST over two workers picks the gone one again about half the time: with 3 tries, one
    # stream in a few thousand still went back to a drained worker's removed socket (a CI run, SIGTERM
    # under load). Ten make that ~1 in 1000 of the retries, which are themselves rare.
    "host_selection_retry_max_attempts": 10,
}

_ADS = {"ads": {}, "resource_api_version": "V3"}
MCP_ENVOY_ERROR_CODE = -32603  # JSON-RPC's internal error, for Envoy's own errors on the MCP endpoint
TYPE_PREFIX = resilience.TYPE_PREFIX


def parse_resource(message: Message, data: dict[str, Any]) -> Message:
    json_format.ParseDict(data, message)
    return message


def provider_cluster(provider: ProviderSpec, inject_key: bool = False) -> Cluster:
    """One cluster per provider. IP hosts come through EDS (like Consul catalog pools, later); DNS
    hosts (SaaS APIs) use LOGICAL_DNS, since EDS endpoints must be IP addresses.

    The provider's resilience settings become the cluster's circuit breakers, outlier detection and
    (when asked for) active health checks. The panic threshold stays at Envoy's default (50 %): a
    single-host provider whose host is ejected still gets its requests (there is nothing else to
    send them to, and the client is better served by the provider's own answer than by a 503
    "no healthy upstream"), while a pool of several hosts sheds its ejected ones until half are out.

    ``inject_key``: Envoy adds the provider's key (its SDS secret) in the cluster's upstream filter
    chain (control_plane.resources.provider_keys)."""
    settings = provider.resilience
    options = resilience.protocol_options(settings, provider.scheme)
    if aws_signing.is_signed(provider):
        # Bedrock: Envoy signs each attempt with SigV4 (control_plane.resources.aws_signing). The
        # role and token file of web identity are read from this process's environment (IRSA sets
        # them in every container of the pod); the rest of the credentials stay Envoy's.
        options["http_filters"] = [aws_signing.signing_filter(provider, os.environ), provider_keys.codec_filter()]
    elif inject_key:
        options["http_filters"] = provider_keys.injector_filters(provider)
    cluster: dict[str, Any] = {
        "name": provider.cluster,
        "connect_timeout": resilience.duration(settings.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": resilience.circuit_breakers(settings),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options,
        },
    }
    if settings.outlier_detection is not None:
        cluster["outlier_detection"] = resilience.outlier_detection(settings.outlier_detection)
    if settings.health_check is not None:
        cluster["health_checks"] = resilience.health_checks(settings.health_check, host=provider.host)
    if provider.endpoints:  # locality weights within a priority (control_plane.resources.localities)
        cluster["common_lb_config"] = {"locality_weighted_lb_config": {}}
    if provider.uses_eds:
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {"eds_config": _ADS, "service_name": provider.cluster}
    else:
        cluster["type"] = "LOGICAL_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
        cluster["load_assignment"] = _load_assignment(provider)
    if provider.scheme == "https":
        cluster["transport_socket"] = tls_socket(provider, resilience.alpn(settings))
    return parse_resource(Cluster(), cluster)


def tls_socket(provider: ProviderSpec, alpn: tuple[str, ...]) -> dict[str, Any]:
    """TLS to the provider: SNI and certificate checked against its host name (or the SNI the policy
    names) and the system CAs (or the policy's CA file), unless the policy says not to verify."""
    return upstream_tls_socket(provider.resilience.tls, provider.host, alpn)


def upstream_tls_socket(tls: TlsSettings, host: str, alpn: tuple[str, ...]) -> dict[str, Any]:
    """TLS to an upstream named ``host`` (a provider, an MCP server: control_plane.resources.mcp)."""
    name = tls.sni or host
    common: dict[str, Any] = {"alpn_protocols": list(alpn)}
    if not tls.insecure_skip_verify:
        common["validation_context"] = {
            "trusted_ca": {"filename": tls.ca_file or SYSTEM_CA_BUNDLE},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": name}}],
        }
    if tls.client_cert:  # Envoy reads the files (policy paths are absolute)
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": tls.client_cert}, "private_key": {"filename": tls.client_key}}
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": name,
            "common_tls_context": common,
        },
    }


def _load_assignment(provider: ProviderSpec) -> dict[str, Any]:
    return {
        "cluster_name": provider.cluster,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": provider.host, "port_value": provider.port}},
                            # auto_host_rewrite sends this as :authority (the provider's own host name).
                            "hostname": provider.host,
                        }
                    }
                ]
            }
        ],
    }


def provider_endpoints(provider: ProviderSpec, local_region: str = "") -> ClusterLoadAssignment:
    """A pool's hosts, local region first (localities); else base_url's one host."""
    if provider.endpoints:
        return parse_resource(ClusterLoadAssignment(), localities.pool_load_assignment(provider, local_region))
    return parse_resource(ClusterLoadAssignment(), _load_assignment(provider))


def provider_routes(provider: ProviderSpec, decision_hop: bool = False) -> list[dict[str, Any]]:
    """The routes of requests sent to this provider. With the decision hop: ext_proc off
    (decision_hop.extproc_off), but for the translated streams the hop marks (REWRITE_HEADER),
    where it runs on the response only (decision_hop.extproc_response_only)."""
    route = provider_route(provider, decision_hop)
    if not decision_hop:
        return [route]
    return [decision_hop_resources.response_only_variant(route), route]


def provider_route(provider: ProviderSpec, decision_hop: bool = False) -> dict[str, Any]:
    """The route of requests sent to this provider: its own timeouts (resilience)."""
    settings = provider.resilience
    route: dict[str, Any] = {
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER_HEADER, "string_match": {"exact": provider.cluster}}],
        },
        "route": {
            "cluster": provider.cluster,
            "timeout": resilience.duration(settings.request_timeout_ms),
            "idle_timeout": resilience.duration(settings.stream_idle_timeout_ms),
            "auto_host_rewrite": True,
        },
        # The client's verified certificate (mTLS on the listener) is the gateway's business only.
        "request_headers_to_remove": [CLIENT_CERT_HEADER, *BATCH_HEADERS],
    }
    if len(provider.endpoints) > 1:  # a pool: an attempt that failed unanswered goes to another host
        route["route"]["retry_policy"] = localities.pool_retry_policy()
    if decision_hop:
        route["typed_per_filter_config"] = decision_hop_resources.extproc_off()
    return route


def route_configuration(
    chain_routes: list[dict[str, Any]] | None = None,
    provider_routes: list[dict[str, Any]] | None = None,
    decision_hop: bool = False,
    cors: CorsSpec | None = None,
) -> RouteConfiguration:
    """Routing is decided by ext_proc: it names the cluster in x-ccr-cluster and clears the route
    cache. A request that reaches the router without that header was not routed (fail closed).
    Requests with a fallback chain take the chain route first (it adds the retry policy).
    ``/health`` comes before all of them: Envoy answers it."""
    return parse_resource(
        RouteConfiguration(),
        {
            "name": ROUTE_CONFIG_NAME,
            "virtual_hosts": [
                {
                    "name": "gateway",
                    "domains": ["*"],
                    "include_attempt_count_in_response": True,
                    **({"typed_per_filter_config": edge.cors_policy(cors)} if cors is not None else {}),
                    "routes": [
                        edge_limits.exempt(edge.health_route()),
                        *(chain_routes or []),
                        *(provider_routes or []),
                        {
                            "match": {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]},
                            "route": {
                                "cluster_header": CLUSTER_HEADER,
                                "timeout": ROUTE_TIMEOUT,
                                "auto_host_rewrite": True,
                            },
                            **(
                                {"typed_per_filter_config": decision_hop_resources.extproc_off()}
                                if decision_hop
                                else {}
                            ),
                        },
                        *([edge.cors_route(CLUSTER_HEADER)] if cors is not None else []),
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 404, "body": {"inline_string": "no route for this request"}},
                        },
                    ],
                    # Internal headers never leave the gateway (the route was already chosen).
                    "request_headers_to_remove": [CLUSTER_HEADER, REWRITE_HEADER, *edge_limits.CLIENT_ADDRESS_HEADERS],
                }
            ],
        },
    )


def _access_log() -> dict[str, Any]:
    fields = {
        "time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "cluster": "%UPSTREAM_CLUSTER%",
        "upstream": "%UPSTREAM_HOST%",
        "duration_ms": "%DURATION%",
        "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "client_api": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:client_api)%",
        "provider": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:provider)%",
        "model": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:model)%",
        "scenario": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:scenario)%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "answered_by": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:provider)%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "reason": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{HOP_DETAILS_KEY})%",
    }
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": fields},
        },
    }


def _error_mappers(max_request_bytes: int) -> list[dict[str, Any]]:
    """Errors Envoy itself generates (body over the limit, provider unreachable, ext_proc down) get
    the JSON shape ext_proc uses, in the client's format. ext_proc's own immediate responses are
    already in that shape: they carry response details starting with "ccr_" and are left alone.

    The client's API comes from ext_proc's dynamic metadata when it got that far (the path may have
    been rewritten for the provider by then), otherwise from the path the client called."""
    # The decision hop's own answers come from the Lua filter ("lua_response") and are formatted too.
    envoy_generated = _cel("!response.code_details.startsWith('ccr_') && response.code_details != 'lua_response'")
    # OpenAI's paths: chat completions, and the batch API's Files and Batches (a body over the limit
    # is refused before the decision hop labels the request).
    openai_paths = [
        {"header_filter": {"header": {"name": ":path", "string_match": match}}}
        for match in ({"contains": "/chat/completions"}, {"prefix": "/v1/files"}, {"prefix": "/v1/batches"})
    ]
    openai_path = {"or_filter": {"filters": openai_paths}}
    # Bedrock's InvokeModel paths (extproc.request_steps.bedrock_endpoint): answered in its shape.
    bedrock_path = {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/model/"}}}}
    no_path = {"header_filter": {"header": {"name": ":path", "present_match": False}}}
    by_metadata = {
        api: {
            "metadata_filter": {
                "matcher": {
                    "filter": METADATA_NAMESPACE,
                    "path": [{"key": "client_api"}],
                    "value": {"string_match": {"exact": api}},
                },
                "match_if_key_not_found": False,
            }
        }
        for api in ("openai", "anthropic", "bedrock", MCP_CLIENT_API)
    }
    # Envoy's own texts ("Payload Too Large", "no healthy upstream", nothing for a failed ext_proc
    # stream) say too little: the failures Envoy's details name get a sentence of their own.
    known, known_message = edge.local_reply_messages(max_request_bytes)
    anthropic_type = (
        "%CEL(response.code == 413 ? 'request_too_large' : response.code == 429 ? 'rate_limit_error' : "
        "response.code >= 500 ? 'api_error' : response.code == 404 ? 'not_found_error' : 'invalid_request_error')%"
    )
    # A 429 of Envoy's own (the per-IP limits) as OpenAI writes one: type "requests", code "rate_limit_exceeded".
    openai_type = (
        "%CEL(response.code == 429 ? 'requests' : response.code >= 500 ? 'server_error' : 'invalid_request_error')%"
    )
    openai_code = "%CEL(response.code == 429 ? 'rate_limit_exceeded' : response.code_details)%"

    def formats(message: str) -> dict[str, dict[str, Any]]:
        openai = {"error": {"message": message, "type": openai_type, "param": None, "code": openai_code}}
        anthropic = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        # Both shapes in one, for refusals made before the path was read (edge hardening: the
        # codec's 431, an underscore in a header name, headers that never finished): each SDK
        # finds its own fields and ignores the others.
        either = {"type": "error", "error": {**openai["error"], "type": anthropic_type}}
        # The MCP endpoint's (the MCP service unreachable, a stream cut by a timeout): JSON-RPC's
        # shape, as the decision's own refusals there (extproc.request_steps.mcp_reply); -32603:
        # nothing is wrong with the request itself.
        mcp = {"jsonrpc": "2.0", "id": None, "error": {"code": MCP_ENVOY_ERROR_CODE, "message": message}}
        return {
            "openai": _json_body(openai),
            "anthropic": _json_body(anthropic),
            "bedrock": _json_body({"message": message}),  # InvokeModel's error shape
            "either": _json_body(either),
            MCP_CLIENT_API: _json_body(mcp),
        }

    # First match wins: a known failure before Envoy's own text; metadata beats the path, the path
    # beats the Anthropic default.
    rules = [
        ([by_metadata["openai"]], "openai"),
        ([by_metadata["anthropic"]], "anthropic"),
        ([by_metadata["bedrock"]], "bedrock"),
        ([by_metadata[MCP_CLIENT_API]], MCP_CLIENT_API),
        ([openai_path], "openai"),
        ([bedrock_path], "bedrock"),
        ([no_path], "either"),
        ([], "anthropic"),
    ]
    # A provider key Envoy injects and does not have yet: its injector's 401 becomes the 503 ext_proc
    # gives for a missing key (control_plane.resources.provider_keys).
    missing_key = _cel(f"response.code_details == '{provider_keys.MISSING_KEY_DETAILS}'")
    bodies = provider_keys.missing_key_bodies()
    mappers: list[dict[str, Any]] = [
        {
            "filter": {"and_filter": {"filters": [envoy_generated, missing_key, *extra]}},
            "status_code": 503,
            "body_format_override": _json_body(bodies[api]),
        }
        for extra, api in rules
        if api != MCP_CLIENT_API  # no provider key is ever missing on the MCP endpoint
    ]
    for condition, message in ((_cel(known), known_message), (None, "%LOCAL_REPLY_BODY%")):
        for extra, api in rules:
            filters = [envoy_generated, _status_at_least(400), *([condition] if condition else []), *extra]
            mappers.append(
                {"filter": {"and_filter": {"filters": filters}}, "body_format_override": formats(message)[api]}
            )
    return mappers


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": TYPE_PREFIX + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _status_at_least(code: int) -> dict[str, Any]:
    return {
        "status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": code, "runtime_key": "ccr.x"}}}
    }


def _json_body(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "json_format": body,
        "content_type": "application/json",
    }


def extproc_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}, "retry_policy": EXTPROC_STREAM_RETRY},
            # Routing depends on it: never let a request through undecided.
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            "message_timeout": EXTPROC_MESSAGE_TIMEOUT,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            # Per request, ext_proc turns response body processing on only when it rewrites it.
            "allow_mode_override": True,
            "metadata_options": {
                # ccr.usage: a Bedrock stream's usage, which only ext_proc can read (extproc.processor).
                "receiving_namespaces": {"untyped": [METADATA_NAMESPACE, USAGE_NAMESPACE]},
                # A stream the decision hop forwarded brings its stream context this way.
                "forwarding_namespaces": {"untyped": [METADATA_NAMESPACE]},
            },
        },
    }


def listener(policy: GatewayPolicy, usage_log_clusters: Sequence[str] = (EXTPROC_CLUSTER,)) -> Listener:
    """``usage_log_clusters``: where Envoy streams its usage access log; one cluster per ext_proc
    worker (as `up` runs them) gives every worker every session's usage, not a share of it. The
    first one's copy counts the tokens, the others only feed session memory."""
    hcm = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ccr",
        "codec_type": "AUTO",
        "rds": {"route_config_name": ROUTE_CONFIG_NAME, "config_source": _ADS},
        # Order matters: the request id's response half must see every local reply (first); CORS
        # preflights never reach a decision; the decision filters read decoded bodies.
        "http_filters": [
            edge.edge_headers_filter(),
            edge.cors_filter(),
            *edge_limits.filters(policy.per_ip_limits),  # before any decision: a refusal costs no Python
            *edge.decompressor_filters(),
            *jwt_resources.filters(policy.auth.jwt),  # verified claims as x-ccr-jwt-* headers, for both paths
            *(
                [
                    decision_hop_resources.lua_filter(
                        policy.longest_dedup_wait_s,
                        policy.mcp.path if policy.mcp else "",
                        policy.mcp.decision_reuse_s if policy.mcp else 0,
                    )
                ]
                if policy.decision_path == "hop"
                else []
            ),
            extproc_filter(),
            # After ext_proc: on the response path they read the provider's bytes, untranslated.
            usage_capture.sse_usage_filter(),
            usage_capture.json_usage_filter(),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
        # Timeouts, header limits, path normalization, HTTP/2 limits: hardening_resources, below.
        "always_set_request_id_in_response": True,
        **edge_limits.connection_manager_fields(policy.per_ip_limits),
        "access_log": [
            _access_log(),
            *(
                usage_capture.usage_access_log(cluster, METADATA_NAMESPACE, count_tokens=index == 0)
                for index, cluster in enumerate(usage_log_clusters)
            ),
        ],
        "local_reply_config": {"mappers": _error_mappers(policy.max_request_bytes)},
    }
    if policy.tracing is not None:
        hcm["tracing"] = tracing.connection_manager_tracing(policy.tracing)
    trusted_proxies = policy.per_ip_limits.trusted_proxies if policy.per_ip_limits is not None else None
    hcm.update(hardening_resources.connection_manager_fields(policy.hardening, trusted_proxies))
    hcm.update(tls_resources.connection_manager_fields(policy.tls))  # x-forwarded-client-cert with mTLS
    filter_chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if (transport_socket := tls_resources.listener_transport_socket(policy.tls)) is not None:
        filter_chain["transport_socket"] = transport_socket
    return parse_resource(
        Listener(),
        {
            "name": LISTENER_NAME,
            "address": {"socket_address": {"address": policy.listener_address, "port_value": policy.listener_port}},
            # ext_proc receives the whole body in one message (BUFFERED); above this Envoy answers 413.
            "per_connection_buffer_limit_bytes": policy.max_request_bytes,
            "filter_chains": [filter_chain],
        },
    )
