"""The decision hop's Envoy half: the Lua filter (decision_hop.lua) and the per-route switch that
keeps the ext_proc filter off the requests the hop already decided.

The ext_proc filter reads its per-route config once, when it first sees the request: after the Lua
filter cleared the route cache. A request the hop forwarded is then on a provider route, where
ext_proc is off (no gRPC stream at all); a deferred one is still on the catch-all route, where
ext_proc runs as it always has, and keeps running after it picks the provider route itself.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import envoy.extensions.filters.http.lua.v3.lua_pb2  # noqa: F401  (registers the type for "@type")

from ccr.v1.contract import (
    CACHE_CAP_KEY,
    CACHE_CLUSTER_KEY,
    CACHE_STORE_KEY,
    CLUSTER_HEADER,
    ENCODING_HEADER,
    HOP_CLUSTER,
    HOP_CONTEXT_KEY,
    HOP_ROUTE_KEY,
    INTERNAL_HEADER_PREFIX,
    MCP_DECISION_IGNORED_HEADERS,
    METADATA_NAMESPACE,
    REQUEST_ID_HEADER,
    REWRITE_HEADER,
    REWRITE_RESPONSE,
    ROUTE_HEADER,
    TRACEPARENT_LABEL,
)
from control_plane.resources.resilience import TYPE_PREFIX

EXTPROC_FILTER = "envoy.filters.http.ext_proc"
LUA_FILTER = "envoy.filters.http.lua"
# A decision takes well under a millisecond; this bounds a wedged decision service (fail closed).
HOP_TIMEOUT_MS = 5000
_SCRIPT = Path(__file__).with_name("decision_hop.lua")
_MCP_PATH = re.compile(r"^((/[A-Za-z0-9._~-]+)+)?$")  # control_plane.policy.mcp's paths, or ""
# A request whose headers add up to more is always decided (the decision service's limit, 60 KB,
# answers 431 above it; this is well below, so that no request near it is let through unchecked).
MCP_REUSE_MAX_HEADER_BYTES = 16 * 1024


def lua_source(
    timeout_ms: int = HOP_TIMEOUT_MS, decide_timeout_ms: int | None = None, mcp_path: str = "", mcp_reuse_s: int = 0
) -> str:
    """``decide_timeout_ms``: /decide's own bound (default ``timeout_ms``), longer when a request
    may wait there for an identical one in flight (the response cache's deduplication);
    ``mcp_path``: the policy's MCP endpoint ("" without one), whose bodies are not copied to /decide;
    ``mcp_reuse_s``: how long a decision to forward an MCP request is reused (whole seconds, 0: never)."""
    if not _MCP_PATH.match(mcp_path):  # policy-checked already: the script is never broken by a path
        raise ValueError(f"not an MCP path: {mcp_path!r}")
    if not (isinstance(mcp_reuse_s, int) and mcp_reuse_s >= 0):
        raise ValueError(f"not a whole number of seconds: {mcp_reuse_s!r}")
    values = {
        "@HOP_CLUSTER@": HOP_CLUSTER,
        "@NAMESPACE@": METADATA_NAMESPACE,
        "@INTERNAL_PREFIX@": INTERNAL_HEADER_PREFIX,
        "@CONTEXT_LABEL@": HOP_CONTEXT_KEY,
        "@CLUSTER_HEADER@": CLUSTER_HEADER,
        "@ROUTE_HEADER@": ROUTE_HEADER,
        "@ROUTE_LABEL@": HOP_ROUTE_KEY,
        "@TRACEPARENT_LABEL@": TRACEPARENT_LABEL,
        "@ENCODING_HEADER@": ENCODING_HEADER,
        "@REQUEST_ID_HEADER@": REQUEST_ID_HEADER,
        "@TIMEOUT_MS@": str(timeout_ms),
        "@DECIDE_TIMEOUT_MS@": str(decide_timeout_ms or timeout_ms),
        "@CACHE_STORE_LABEL@": CACHE_STORE_KEY,
        "@CACHE_CAP_LABEL@": CACHE_CAP_KEY,
        "@CACHE_CLUSTER_LABEL@": CACHE_CLUSTER_KEY,
        "@MCP_PATH@": mcp_path,
        "@MCP_REUSE_S@": str(mcp_reuse_s),
        "@MCP_IGNORED@": ", ".join(f'["{name}"] = true' for name in MCP_DECISION_IGNORED_HEADERS),
        "@MCP_REUSE_MAX_HEADER_BYTES@": str(MCP_REUSE_MAX_HEADER_BYTES),
    }
    source = _SCRIPT.read_text()
    for name, value in values.items():
        source = source.replace(name, value)
    return source


def decide_timeout_ms(longest_dedup_wait_s: float) -> int:
    """/decide's bound: a decision's own, plus the longest a request may wait there for an
    identical one in flight (the hop gives up waiting first and decides; the Lua filter's bound is
    then only for a wedged worker, as before)."""
    return HOP_TIMEOUT_MS + round(longest_dedup_wait_s * 1000)


def lua_filter(longest_dedup_wait_s: float = 0.0, mcp_path: str = "", mcp_reuse_s: int = 0) -> dict[str, Any]:
    source = lua_source(
        decide_timeout_ms=decide_timeout_ms(longest_dedup_wait_s), mcp_path=mcp_path, mcp_reuse_s=mcp_reuse_s
    )
    return {
        "name": LUA_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def extproc_off() -> dict[str, Any]:
    """typed_per_filter_config for the routes a hop-decided request ends on."""
    return {
        EXTPROC_FILTER: {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        }
    }


def extproc_response_only() -> dict[str, Any]:
    """typed_per_filter_config for a translated stream the hop forwarded: no request phase (the
    hop did it), the response rewritten chunk by chunk."""
    mode = {
        "request_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }
    return {
        EXTPROC_FILTER: {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "overrides": {"processing_mode": mode},
        }
    }


def response_only_variant(route: dict[str, Any]) -> dict[str, Any]:
    """``route`` for the requests the hop marked with REWRITE_HEADER (a translated stream, a
    fallback chain): the same, with ext_proc on the response only. It goes first in the table."""
    variant = copy.deepcopy(route)
    variant["match"]["headers"].append({"name": REWRITE_HEADER, "string_match": {"exact": REWRITE_RESPONSE}})
    variant["typed_per_filter_config"] = extproc_response_only()
    return variant
