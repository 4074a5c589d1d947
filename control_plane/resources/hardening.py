"""Envoy's half of the edge hardening knobs (policy ``listener.hardening``, docs/edge-hardening.md):
the connection manager's fields, pushed over xDS with the listener. The connection limit and the heap
limit are the overload manager's, bootstrap configuration read when Envoy starts
(ccr_gateway.envoy_bootstrap): the connection_limit network filter would do the same per listener,
but the bootstrap's global monitor refuses a connection at accept, before any filter runs.

Envoy's own refusals here (431 headers too large, 400 for an underscore in a header name, 408 when
the headers never finish) happen in the codec, before the request's path is known: the listener's
local reply mappers write them in a shape both clients' SDKs read (control_plane.resources.gateway).
"""

from __future__ import annotations

from typing import Any

from control_plane.policy.hardening import HardeningSpec

_UNDERSCORES = {"reject": "REJECT_REQUEST", "drop": "DROP_HEADER", "allow": "ALLOW"}


def connection_manager_fields(spec: HardeningSpec, trusted_proxies: int | None = None) -> dict[str, Any]:
    """The HttpConnectionManager's fields for ``spec``. ``trusted_proxies``: the per-IP limits'
    (None when they are off), the number of X-Forwarded-For hops trusted when the hardening knob
    does not name one; the limits need the peer address, so they keep ``use_remote_address`` on."""
    fields: dict[str, Any] = {
        "max_request_headers_kb": spec.max_request_headers_kb,
        "request_headers_timeout": _seconds(spec.request_headers_timeout_s),
        "stream_idle_timeout": _seconds(spec.stream_idle_timeout_s),
        # "0s" (the default): off. A streamed answer lasts as long as the model writes.
        "request_timeout": _seconds(spec.request_timeout_s),
        # Every path is normalized (RFC 3986 dot segments, repeated slashes) before any filter or
        # route reads it. Escaped slashes: the OpenAI SDK sends a model id holding '/' as %2F
        # (/v1/models/org%2Fmodel), so by default they are unescaped, then normalized, and the
        # decision service reads the id; reject_escaped_slashes answers 400 instead.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST" if spec.reject_escaped_slashes else "UNESCAPE_AND_FORWARD",
        "common_http_protocol_options": {
            "headers_with_underscores_action": _UNDERSCORES[spec.headers_with_underscores]
        },
        "http2_protocol_options": {
            "max_concurrent_streams": spec.http2.max_concurrent_streams,
            "initial_stream_window_size": spec.http2.initial_stream_window_size,
            "initial_connection_window_size": spec.http2.initial_connection_window_size,
        },
    }
    if spec.use_remote_address or trusted_proxies is not None:
        hops = spec.xff_num_trusted_hops
        if hops is None:
            hops = trusted_proxies or 0
        fields.update(
            {
                "use_remote_address": True,
                "xff_num_trusted_hops": hops,
                # As with the per-IP limits (edge_limits.connection_manager_fields): providers learn
                # nothing new about the client, and a client's own x-request-id is kept.
                "skip_xff_append": True,
                "preserve_external_request_id": True,
            }
        )
    else:
        fields["use_remote_address"] = False
    return fields


def _seconds(value: int) -> str:
    return f"{value}s"
