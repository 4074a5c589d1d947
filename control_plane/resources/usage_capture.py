"""Token usage taken by Envoy itself, for every provider response, translated or not.

A response that ext_proc does not rewrite (same API on both sides) never shows its body to Python:
streaming it through ext_proc would cost a gRPC round trip per chunk. Envoy reads the usage instead:

  sse_to_metadata  (text/event-stream)  and  json_to_metadata  (application/json responses)
      -> the provider's own usage fields as numbers in the ``ccr.usage`` dynamic metadata
  http_grpc access log  -> one entry per request, batched, to ext_proc's AccessLogService
      (extproc.usage_log), which normalises them, counts ``ccr_tokens_total`` and makes each
      client request's usage record

Both filters sit after ext_proc in the chain, so on the response path they see the provider's raw
bytes, before any translation. Each key is named after the field it comes from, which tells the
reader the provider's API: Anthropic ``input_tokens``, OpenAI ``prompt_tokens``, Gemini
``promptTokenCount``. The Responses API also says ``input_tokens`` (cached tokens included, unlike
Anthropic's), always beside ``input_tokens_details.cached_tokens``: that key (``cached_tokens``,
which Anthropic never sends) tells the two apart. Later events overwrite earlier ones, so a stream
leaves its final counts (a Responses stream's usage is in its terminal ``response.completed`` /
``response.incomplete`` event, which repeats the whole output: over MAX_SSE_EVENT_BYTES it is
skipped).
"""

from __future__ import annotations

from typing import Any

# Imported for their side effect: registering the types named in "@type" below.
import envoy.extensions.access_loggers.filters.cel.v3.cel_pb2
import envoy.extensions.access_loggers.grpc.v3.als_pb2
import envoy.extensions.filters.http.json_to_metadata.v3.json_to_metadata_pb2  # noqa: F401
import xds.type.v3.typed_struct_pb2  # noqa: F401

from ccr.v1.contract import (
    ANSWERED_BY_TAG,
    ENDPOINT_LABEL,
    KEY_ID_LABEL,
    SESSION_LOG_NAME,
    USAGE_LOG_NAME,
    USAGE_NAMESPACE,
)
from control_plane.resources.resilience import TYPE_PREFIX

# Small batches, flushed often: the next turn of a session reads the last turn's prompt size.
USAGE_LOG_FLUSH = "0.1s"
USAGE_LOG_BUFFER_BYTES = 16384
# An SSE event over this is skipped, usage and all; Gemini's last chunk carries text beside its usage.
MAX_SSE_EVENT_BYTES = 1 << 20

# metadata key -> JSON paths in the provider's events or body that carry it
USAGE_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    # Anthropic: message_start.message.usage, then message_delta.usage; non-streaming body.usage.
    # OpenAI Responses: body.usage; streams: the terminal event's response.usage.
    "input_tokens": (
        ("message", "usage", "input_tokens"),
        ("usage", "input_tokens"),
        ("response", "usage", "input_tokens"),
    ),
    "output_tokens": (
        ("message", "usage", "output_tokens"),
        ("usage", "output_tokens"),
        ("response", "usage", "output_tokens"),
    ),
    "cache_read_input_tokens": (
        ("message", "usage", "cache_read_input_tokens"),
        ("usage", "cache_read_input_tokens"),
    ),
    "cache_creation_input_tokens": (
        ("message", "usage", "cache_creation_input_tokens"),
        ("usage", "cache_creation_input_tokens"),
    ),
    # OpenAI Chat Completions (streams: the final chunk, when the client asked for include_usage)
    "prompt_tokens": (("usage", "prompt_tokens"),),
    "completion_tokens": (("usage", "completion_tokens"),),
    # ... and the Responses API's cached part of input_tokens (the same key: the same meaning)
    "cached_tokens": (
        ("usage", "prompt_tokens_details", "cached_tokens"),
        ("usage", "input_tokens_details", "cached_tokens"),
        ("response", "usage", "input_tokens_details", "cached_tokens"),
    ),
    "prompt_cache_hit_tokens": (("usage", "prompt_cache_hit_tokens"),),
    # Gemini: usageMetadata on every chunk, cumulative
    "promptTokenCount": (("usageMetadata", "promptTokenCount"),),
    "candidatesTokenCount": (("usageMetadata", "candidatesTokenCount"),),
    "cachedContentTokenCount": (("usageMetadata", "cachedContentTokenCount"),),
    "thoughtsTokenCount": (("usageMetadata", "thoughtsTokenCount"),),
    "toolUsePromptTokenCount": (("usageMetadata", "toolUsePromptTokenCount"),),
    # Bedrock's Converse, a buffered answer (a ConverseStream's frames are binary: ext_proc hands
    # their usage to Envoy itself, extproc.processor)
    "inputTokens": (("usage", "inputTokens"),),
    "outputTokens": (("usage", "outputTokens"),),
    "cacheReadInputTokens": (("usage", "cacheReadInputTokens"),),
    "cacheWriteInputTokens": (("usage", "cacheWriteInputTokens"),),
}
# One of these is in every usage report of its API: an access log entry without any has no usage.
PROMPT_KEYS = ("input_tokens", "prompt_tokens", "promptTokenCount", "inputTokens")


def _rules() -> list[dict[str, Any]]:
    return [
        {
            "selectors": [{"key": part} for part in path],
            "on_present": {"metadata_namespace": USAGE_NAMESPACE, "key": key, "type": "NUMBER"},
        }
        for key, paths in USAGE_FIELDS.items()
        for path in paths
    ]


SSE_USAGE_FILTER = "envoy.filters.http.sse_to_metadata"
JSON_USAGE_FILTER = "envoy.filters.http.json_to_metadata"


def usage_filters_off() -> dict[str, Any]:
    """typed_per_filter_config for a route whose answers carry no provider's usage (the gateway's
    own services: the MCP service, the batch API): nothing to parse, an MCP server's SSE stream
    included, which lives as long as its session."""
    off = {"@type": TYPE_PREFIX + "envoy.config.route.v3.FilterConfig", "disabled": True}
    return {SSE_USAGE_FILTER: dict(off), JSON_USAGE_FILTER: dict(off)}


def sse_usage_filter() -> dict[str, Any]:
    """sse_to_metadata has no Python proto in xds-protos: it goes as a TypedStruct, which Envoy
    converts with its own descriptors (and validates: a bad field is a NACK, not a silent no-op)."""
    return {
        "name": SSE_USAGE_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "xds.type.v3.TypedStruct",
            "type_url": TYPE_PREFIX + "envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata",
            "value": {
                "response_rules": {
                    "content_parser": {
                        "name": "envoy.content_parsers.json",
                        "typed_config": {
                            "@type": TYPE_PREFIX + "envoy.extensions.content_parsers.json.v3.JsonContentParser",
                            "rules": [{"rule": rule} for rule in _rules()],
                        },
                    },
                    "max_event_size": MAX_SSE_EVENT_BYTES,
                }
            },
        },
    }


def json_usage_filter() -> dict[str, Any]:
    return {
        "name": JSON_USAGE_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            "response_rules": {"rules": _rules()},
        },
    }


def usage_access_log(cluster: str, metadata_namespace: str, count_tokens: bool = True) -> dict[str, Any]:
    """Entries batched to ext_proc's AccessLogService; the routing labels (client API, endpoint,
    provider, model, session...) ride in ext_proc's own namespace.

    When every worker gets its own copy (for session memory), only one copy may count tokens and
    make the usage records: the log name tells the receiver which one it holds. That copy carries
    every client request (``client_requests``), the others only those with usage."""
    has_usage = [
        {
            "metadata_filter": {
                "matcher": {
                    "filter": USAGE_NAMESPACE,
                    "path": [{"key": key}],
                    "value": {"present_match": True},
                },
                "match_if_key_not_found": False,
            }
        }
        for key in PROMPT_KEYS
    ]
    return {
        "name": "envoy.access_loggers.http_grpc",
        # The other copies: usage for session memory, and every keyed request, whose limits the
        # worker that admitted it settles (extproc.auth.admission).
        "filter": client_requests(metadata_namespace)
        if count_tokens
        else {"or_filter": {"filters": [*has_usage, _label_present(metadata_namespace, KEY_ID_LABEL)]}},
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": USAGE_LOG_NAME if count_tokens else SESSION_LOG_NAME,
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "transport_api_version": "V3",
                "buffer_flush_interval": USAGE_LOG_FLUSH,
                "buffer_size_bytes": USAGE_LOG_BUFFER_BYTES,
                "custom_tags": [
                    {
                        "tag": ANSWERED_BY_TAG,
                        "metadata": {
                            "kind": {"host": {}},
                            "metadata_key": {"key": metadata_namespace, "path": [{"key": "provider"}]},
                        },
                    }
                ],
            },
        },
    }


# An answer Envoy (or the decision hop's Lua filter, failing closed) gave before any decision: a
# body over the limit, the decision service down or its stream failing, a client gone. Such a
# request carries no routing label; the decision service's own answers carry some (an unknown
# path's 404 too, which is no client call) or, on the ext_proc path, "ccr_" response details.
# GET /health (200, Envoy's) never matches, nor a per-IP refusal (listener.per_ip_limits): a flood
# refused at the edge must not become a flood of records (Envoy's own stats count it).
UNDECIDED_ANSWER = (
    "(response.code >= 400 || response.code == 0) && !response.code_details.startsWith('ccr_') "
    "&& response.code_details != 'local_rate_limited' && !('{namespace}' in metadata.filter_metadata)"
)


def _label_present(metadata_namespace: str, label: str) -> dict[str, Any]:
    return {
        "metadata_filter": {
            "matcher": {"filter": metadata_namespace, "path": [{"key": label}], "value": {"present_match": True}},
            "match_if_key_not_found": False,
        }
    }


def client_requests(metadata_namespace: str) -> dict[str, Any]:
    """The access log filter passing every client request: each one the decision service saw on one
    of its endpoints (ENDPOINT_LABEL, on both decision paths: forwarded or answered), and each one
    Envoy answered before a decision. Not /health, CORS preflights nor unknown paths."""
    decided = {
        "metadata_filter": {
            "matcher": {
                "filter": metadata_namespace,
                "path": [{"key": ENDPOINT_LABEL}],
                "value": {"present_match": True},
            },
            "match_if_key_not_found": False,
        }
    }
    undecided = {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": TYPE_PREFIX + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": UNDECIDED_ANSWER.format(namespace=metadata_namespace),
            },
        }
    }
    # The metadata check first: the usual request never reaches the expression.
    return {"or_filter": {"filters": [decided, undecided]}}
