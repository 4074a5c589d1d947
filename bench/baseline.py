"""Static Envoy configs of the bench: plain Envoy (the baseline) and the upstream Envoy.

Plain Envoy is the denominator of every ratio the benchmark reports: a listener whose only filter
is the router, no ext_proc, no access log, no local-reply rewriting, no xDS: what "just proxy it
with Envoy" costs. It receives the request the gateway would send upstream (the OpenAI body on
/v1/chat/completions for translated cases, the Anthropic body on /v1/messages for passthrough), so
both sides move the same bytes to the same upstream. It has two clusters, like the gateway's
generated policy has two pairs of providers:

- ``fake_provider``: the Python fake provider, for streams (it produces the SSE chunks and their
  pacing);
- ``upstream_envoy``: the upstream Envoy below, for non-streaming cases, chosen by the request
  header ``x-bench-upstream: direct`` that only the bench's plain-side requests carry (the gateway
  picks the same upstream by the model name instead, see ``bench.workloads``).

The upstream Envoy answers every non-streaming case with a canned, valid provider answer from a
``direct_response`` (an OpenAI chat.completion on /v1/chat/completions, an Anthropic message on
/v1/messages): a Python upstream caps plain Envoy at a few thousand req/s on a small machine, which
would make the gateway look closer to plain Envoy than it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

_TYPE = "type.googleapis.com/"

# Plain-side requests carrying this header (with value UPSTREAM_HEADER_DIRECT) go to the upstream Envoy.
UPSTREAM_HEADER = "x-bench-upstream"
UPSTREAM_HEADER_DIRECT = "direct"

# The upstream Envoy's canned answers: the same text in both APIs, so a check can tell that an answer
# came from it (and through the gateway's translation) and not from the fake provider.
DIRECT_ANSWER_TEXT = (
    "Both files look right: the handler parses the body, checks that it is a JSON object and returns the "
    "result, and the router keeps its table as given. Nothing to change here; I will run the tests next to "
    "confirm that every case still passes after the last edit."
)
DIRECT_PROMPT_TOKENS = 10_240
DIRECT_COMPLETION_TOKENS = 48
OPENAI_DIRECT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-bench-direct",
    "object": "chat.completion",
    "created": 1735689600,
    "model": "bench-openai-direct",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": DIRECT_ANSWER_TEXT},
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": DIRECT_PROMPT_TOKENS,
        "completion_tokens": DIRECT_COMPLETION_TOKENS,
        "total_tokens": DIRECT_PROMPT_TOKENS + DIRECT_COMPLETION_TOKENS,
    },
}
ANTHROPIC_DIRECT_ANSWER: dict[str, Any] = {
    "id": "msg_bench_direct",
    "type": "message",
    "role": "assistant",
    "model": "bench-anthropic-direct",
    "content": [{"type": "text", "text": DIRECT_ANSWER_TEXT}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": DIRECT_PROMPT_TOKENS, "output_tokens": DIRECT_COMPLETION_TOKENS},
}
# POST path -> answer body, as the upstream Envoy sends it.
DIRECT_ANSWERS: dict[str, bytes] = {
    "/v1/chat/completions": json.dumps(OPENAI_DIRECT_ANSWER, separators=(",", ":")).encode(),
    "/v1/messages": json.dumps(ANTHROPIC_DIRECT_ANSWER, separators=(",", ":")).encode(),
}


def _hcm(stat_prefix: str, virtual_host: dict[str, Any], http_filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {"name": stat_prefix, "virtual_hosts": [virtual_host]},
        "http_filters": [
            *http_filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
        "stream_idle_timeout": "300s",
        "request_timeout": "0s",
    }


def _bootstrap(
    node_id: str,
    *,
    address: str,
    listen_port: int,
    admin_port: int,
    max_request_bytes: int,
    hcm: dict[str, Any],
    clusters: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "node": {"id": node_id, "cluster": "ccr-bench"},
        "admin": {"address": {"socket_address": {"address": address, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": node_id,
                    "address": {"socket_address": {"address": address, "port_value": listen_port}},
                    "per_connection_buffer_limit_bytes": max_request_bytes,
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _cluster(name: str, address: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        # HTTP/1.1 upstream with a 60 s idle timeout, as the gateway's provider clusters.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "60s"},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}
                    ]
                }
            ],
        },
    }


def baseline_config(
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    direct_upstream_port: int,
    max_request_bytes: int,
    address: str = "127.0.0.1",
) -> dict[str, Any]:
    """Plain Envoy: ``upstream_port`` is the fake provider, ``direct_upstream_port`` the upstream Envoy."""
    direct = {"name": UPSTREAM_HEADER, "string_match": {"exact": UPSTREAM_HEADER_DIRECT}}
    # The gateway's route timeouts, so a slow stream is treated alike on both sides.
    routes = [
        {"match": {"prefix": "/", "headers": [direct]}, "route": {"cluster": "upstream_envoy", "timeout": "600s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "fake_provider", "timeout": "600s"}},
    ]
    return _bootstrap(
        "ccr-bench-baseline",
        address=address,
        listen_port=listen_port,
        admin_port=admin_port,
        max_request_bytes=max_request_bytes,
        hcm=_hcm("baseline", {"name": "upstream", "domains": ["*"], "routes": routes}, []),
        clusters=[
            _cluster("fake_provider", address, upstream_port),
            _cluster("upstream_envoy", address, direct_upstream_port),
        ],
    )


def upstream_config(
    *, listen_port: int, admin_port: int, max_request_bytes: int, address: str = "127.0.0.1"
) -> dict[str, Any]:
    """The upstream Envoy: ``DIRECT_ANSWERS`` by path for POST, a JSON 404 for anything else."""
    json_content = [
        {"header": {"key": "content-type", "value": "application/json"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    ]
    post = [{"name": ":method", "string_match": {"exact": "POST"}}]
    routes: list[dict[str, Any]] = [
        {
            "match": {"path": path, "headers": post},
            "direct_response": {"status": 200, "body": {"inline_string": answer.decode()}},
        }
        for path, answer in DIRECT_ANSWERS.items()
    ]
    not_found = {"error": {"type": "not_found_error", "message": "the bench's upstream Envoy answers only POST"}}
    routes.append(
        {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": json.dumps(not_found)}}}
    )
    # The buffer filter holds the request until its body is complete: answering before that would
    # make Envoy close the upstream connection after every request (HTTP/1.1 cannot reuse it).
    buffer = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": max_request_bytes,
        },
    }
    virtual_host = {"name": "answers", "domains": ["*"], "routes": routes, "response_headers_to_add": json_content}
    return _bootstrap(
        "ccr-bench-upstream",
        address=address,
        listen_port=listen_port,
        admin_port=admin_port,
        max_request_bytes=max_request_bytes,
        hcm=_hcm("upstream", virtual_host, [buffer]),
        clusters=[],
    )


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
