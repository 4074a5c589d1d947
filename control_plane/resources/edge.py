"""The listener's HTTP edge: what Envoy answers or fixes before any decision is asked for.

- request ids: Envoy makes one per request (the access log's ``request_id``); every response,
  local replies included, carries it as ``x-request-id`` and as ``request-id`` (the name Anthropic's
  API and SDKs use);
- request bodies sent with ``Content-Encoding`` gzip, br or zstd are decoded before the decision
  filter reads them (any other encoding reaches the decision service, which answers 415);
- CORS, when the policy asks for it: preflights answered by Envoy, the headers added to answers;
- ``/health``: answered by Envoy itself, never reaching the decision service;
- the sentences of Envoy's own errors (body over the limit, provider unreachable, the decision
  service down, a client over its per-IP limit), formatted in the client's API by the local reply mappers (control_plane.resources.gateway).

Pure builders of dicts in Envoy's YAML shape, like the rest of this package.
"""

from __future__ import annotations

from typing import Any

import envoy.extensions.compression.brotli.decompressor.v3.brotli_pb2
import envoy.extensions.compression.gzip.decompressor.v3.gzip_pb2
import envoy.extensions.compression.zstd.decompressor.v3.zstd_pb2
import envoy.extensions.filters.http.cors.v3.cors_pb2
import envoy.extensions.filters.http.decompressor.v3.decompressor_pb2
import envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2  # noqa: F401

from ccr.v1.contract import ENCODING_HEADER, METADATA_NAMESPACE, REQUEST_ID_HEADERS
from control_plane.policy.cors import CorsSpec
from control_plane.resources.decision_hop import EXTPROC_FILTER, LUA_FILTER
from control_plane.resources.resilience import TYPE_PREFIX

# Envoy's largest allowed max_request_headers_kb. The listener's own is a policy knob
# (listener.hardening, default 128 KB): above the decision service's limit (extproc.request_steps,
# 60 KB), so that a client over that one gets its 431 in its own API's format. Past Envoy's limit
# the client gets no answer: the codec's 431 passes ext_proc's response phase, which holds it while
# the connection closes (measured on 1.40; without ext_proc Envoy answers it, in the shape both SDKs
# read: control_plane.resources.gateway).
CODEC_MAX_REQUEST_HEADERS_KB = 8192
HEALTH_PATH = "/health"
HEALTH_BODY = '{"status":"ok"}'
# What browsers may read from an answer besides the CORS-safelisted headers.
CORS_EXPOSED_HEADERS = ("request-id", "x-request-id", "x-ccr-route", "retry-after")
CORS_METHODS = "GET, POST, OPTIONS"
CORS_FILTER = "envoy.filters.http.cors"

# Content-Encoding name -> the decompressor library Envoy 1.40 ships for it. "deflate" has none
# (Envoy's zlib decompressor reads gzip framing only): it is refused with a 415 instead. The keys are
# ccr.v1.contract.DECODED_CONTENT_ENCODINGS, which the decision service names to clients (a test holds them equal).
_DECOMPRESSORS = {
    "gzip": ("envoy.compression.gzip.decompressor", "envoy.extensions.compression.gzip.decompressor.v3.Gzip"),
    "br": ("envoy.compression.brotli.decompressor", "envoy.extensions.compression.brotli.decompressor.v3.Brotli"),
    "zstd": ("envoy.compression.zstd.decompressor", "envoy.extensions.compression.zstd.decompressor.v3.Zstd"),
}


def edge_headers_filter() -> dict[str, Any]:
    """First in the chain. Request: the client's Content-Encoding copied to ENCODING_HEADER before
    the decompressors drop it (a client's own value of that header removed first). Response: the
    request id as ``request-id``, on every answer, local replies of the filters after it included
    (Envoy's ``always_set_request_id_in_response`` sets x-request-id)."""
    request = [
        {"remove": ENCODING_HEADER},
        {
            "append": {
                "header": {"key": ENCODING_HEADER, "value": "%REQ(content-encoding)%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        },
    ]
    response = [
        {
            "append": {
                "header": {"key": name, "value": "%REQ(x-request-id)%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        }
        for name in REQUEST_ID_HEADERS
        if name != "x-request-id"
    ]
    return {
        "name": "ccr.edge_headers",
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": request, "response_mutations": response},
        },
    }


def decompressor_filters() -> list[dict[str, Any]]:
    """One decompressor per encoding, request direction only (a provider's compressed answer goes
    to the client as the provider sent it). A body that does not decode is cut short by Envoy;
    the decision service then finds it is not JSON and says the encoding was the likely cause."""
    filters = []
    for encoding, (library, type_name) in _DECOMPRESSORS.items():
        filters.append(
            {
                "name": f"ccr.decompress_{encoding}",
                "typed_config": {
                    "@type": TYPE_PREFIX + "envoy.extensions.filters.http.decompressor.v3.Decompressor",
                    "decompressor_library": {"name": library, "typed_config": {"@type": TYPE_PREFIX + type_name}},
                    "request_direction_config": {
                        "common_config": {"enabled": {"default_value": True, "runtime_key": "ccr.decompress"}},
                        "advertise_accept_encoding": False,
                    },
                    "response_direction_config": {
                        "common_config": {"enabled": {"default_value": False, "runtime_key": "ccr.decompress_rsp"}}
                    },
                },
            }
        )
    return filters


def cors_filter() -> dict[str, Any]:
    """Inert without a CorsPolicy on the virtual host (``cors_policy``)."""
    return {"name": CORS_FILTER, "typed_config": {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.cors.v3.Cors"}}


def cors_policy(cors: CorsSpec) -> dict[str, Any]:
    """The virtual host's typed_per_filter_config for the CORS filter."""
    origins = [{"prefix": ""} if origin == "*" else {"exact": origin} for origin in cors.allow_origins]
    policy: dict[str, Any] = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "allow_methods": CORS_METHODS,
        "allow_headers": ", ".join(cors.allow_headers),
        "expose_headers": ", ".join(CORS_EXPOSED_HEADERS),
        "max_age": str(cors.max_age_seconds),
        "allow_credentials": cors.allow_credentials,
        # Unset, Envoy 1.40's filter leaves preflights to the routes: on here, always.
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        # A preflight from an origin not listed is answered here too (without the allow headers,
        # so the browser refuses): it never reaches the decision service.
        "forward_not_matching_preflights": False,
    }
    return {CORS_FILTER: policy}


def cors_route(cluster_header: str) -> dict[str, Any]:
    """With CORS on, requests that carry an Origin start on this route instead of the catch-all
    direct response: Envoy's CORS filter acts only on a route that forwards (it reads the policy
    from the route entry and the virtual host). A decision filter answers or re-routes them before
    the router; one that got through undecided has no cluster header and fails closed (503)."""
    return {
        "name": "cors",
        "match": {"prefix": "/", "headers": [{"name": "origin", "present_match": True}]},
        "route": {"cluster_header": cluster_header},
    }


def health_route() -> dict[str, Any]:
    """``GET``/``HEAD /health``: Envoy answers; the decision filters are off on this route, so the
    decision service never sees it (and never counts it as a rejected request)."""
    return {
        "name": "health",
        "match": {
            "path": HEALTH_PATH,
            "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}],
        },
        "direct_response": {"status": 200, "body": {"inline_string": HEALTH_BODY}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": {
            LUA_FILTER: {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.lua.v3.LuaPerRoute", "disabled": True},
            EXTPROC_FILTER: {
                "@type": TYPE_PREFIX + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            },
        },
    }


def local_reply_messages(max_request_bytes: int) -> tuple[str, str]:
    """The errors Envoy generates itself, as sentences naming what failed (the provider, by its
    routing label else its cluster, for upstream failures): (a CEL condition true when one of them
    is known, a message format for those). Only the response's details say what happened; the
    other errors keep Envoy's own text (%LOCAL_REPLY_BODY%).

    Envoy's CEL has no string concatenation: a message is three %CEL% parts side by side (what
    comes before the provider's name, the name, what comes after), each choosing by the same cases."""
    details = "response.code_details"
    upstream = "provider '"  # followed by its name
    cases = [
        (
            f"{details} == 'local_rate_limited'",  # listener.per_ip_limits (control_plane.resources.edge_limits)
            "too many requests from this client address: the gateway's per-IP limit was reached; "
            "retry after the number of seconds in retry-after",
            "",
        ),
        ("response.code == 413", f"request body is larger than the gateway limit of {max_request_bytes} bytes", ""),
        ("response.code == 431", "request headers are larger than the gateway accepts", ""),
        # Edge hardening (listener.hardening, control_plane.resources.hardening): Envoy's refusals.
        (
            f"{details} == 'http1.unexpected_underscore'",
            "header names with an underscore are refused by the gateway: use hyphens",
            "",
        ),
        (
            f"{details} == 'request_header_timeout'",
            "the request headers did not arrive within the gateway's time limit",
            "",
        ),
        (
            f"{details} == 'path_normalization_failed'",
            "the request path holds an escaped slash or backslash, or cannot be normalized: the gateway refuses it",
            "",
        ),
        (
            f"{details}.startsWith('ext_proc')",
            "the gateway decision service (ext_proc) is unavailable; the request was not sent to any provider",
            "",
        ),
        (
            f"{details} == 'no_healthy_upstream'",
            upstream,
            "' has no healthy host: every one failed its health checks or was ejected",
        ),
        (f"{details}.contains('overflow')", upstream, "' is at its concurrency limit (circuit breaker); retry shortly"),
        (
            f"{details}.contains('connection_failure') || {details}.contains('connect_error')",
            upstream,
            "' could not be reached: the connection failed",
        ),
        (f"{details}.contains('timeout')", upstream, "' did not answer in time"),
        (
            f"{details}.contains('reset') || {details}.contains('termination')",
            upstream,
            "' closed the connection before answering",
        ),
    ]
    ccr = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
    provider = (
        f"('{METADATA_NAMESPACE}' in metadata.filter_metadata && 'provider' in {ccr}) ? {ccr}.provider : "
        "(has(xds.cluster_name) ? xds.cluster_name : 'unknown')"
    )

    def choose(parts: list[tuple[str, str]]) -> str:
        expression = "''"
        for condition, value in reversed(parts):
            expression = f"({condition}) ? {value} : {expression}"
        return f"%CEL({expression})%"

    before = choose([(condition, _quoted(text)) for condition, text, _ in cases])
    name = choose([(condition, f"({provider})" if text == upstream else "''") for condition, text, _ in cases])
    after = choose([(condition, _quoted(text)) for condition, _, text in cases])
    known = " || ".join(f"({condition})" for condition, _, _ in cases)
    return known, before + name + after


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
