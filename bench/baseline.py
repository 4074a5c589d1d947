"""The plain-Envoy baseline: the denominator of every ratio the benchmark reports.

One static Envoy config: a listener whose only filter is the router, and one cluster pointing at
the same fake provider the gateway uses. No ext_proc, no access log, no local-reply rewriting, no
xDS: what "just proxy it with Envoy" costs. It receives the request the gateway would send
upstream (the OpenAI body on /v1/chat/completions for translated cases, the Anthropic body on
/v1/messages for passthrough), so both sides move the same bytes to the same upstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_TYPE = "type.googleapis.com/"


def baseline_config(
    *, listen_port: int, admin_port: int, upstream_port: int, max_request_bytes: int, address: str = "127.0.0.1"
) -> dict[str, Any]:
    hcm = {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "baseline",
        "codec_type": "AUTO",
        "route_config": {
            "name": "baseline",
            "virtual_hosts": [
                {
                    "name": "upstream",
                    "domains": ["*"],
                    # The gateway's route timeouts, so a slow stream is treated alike on both sides.
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "fake_provider", "timeout": "600s"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
        "stream_idle_timeout": "300s",
        "request_timeout": "0s",
    }
    return {
        "node": {"id": "ccr-bench-baseline", "cluster": "ccr-bench"},
        "admin": {"address": {"socket_address": {"address": address, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "baseline",
                    "address": {"socket_address": {"address": address, "port_value": listen_port}},
                    "per_connection_buffer_limit_bytes": max_request_bytes,
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "fake_provider",
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
                        "cluster_name": "fake_provider",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": address, "port_value": upstream_port}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def write_baseline_config(path: Path, **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(baseline_config(**kwargs), sort_keys=False))
    return path
