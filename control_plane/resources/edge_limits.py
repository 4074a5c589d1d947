"""Per-client-IP limits (policy ``listener.per_ip_limits``) as Envoy's local rate limit filter.

Envoy counts and refuses by itself, before the decision filters: a refused request costs no Python.
One filter holds every bucket:

- each window (second, minute, hour) is one ``rate_limits`` entry making the descriptor
  ``(ccr_window, <window>), (masked_remote_address, <client>/<mask>)``, and one descriptor whose
  address value is empty: Envoy keeps a token bucket per distinct address for it ("dynamic"
  descriptors, an LRU of MAX_TRACKED_CLIENTS per window). A request takes a token from each of its
  windows' buckets and is refused (429) when one is empty;
- IPv4 clients count per address, IPv6 clients per /64 (what one subscriber is usually given: a
  client must not escape its limit by changing the low bits of its address);
- the client's address is the connection's peer, or with ``trusted_proxies: N`` the address N hops
  from the right of X-Forwarded-For (the connection manager's ``xff_num_trusted_hops``, see
  ``connection_manager_fields``);
- the refusal carries ``retry-after`` (the slowest bucket's time per token: the buckets refill
  continuously) and ``x-ratelimit-limit/-remaining/-reset`` of the bucket that refused; its body is
  written in the client's API by the listener's local reply mappers (control_plane.resources.gateway);
- ``/health`` is exempt (``exempt``); CORS preflights never reach the filter (the CORS filter before
  it answers them).

The buckets are this Envoy's own ("local"): each gateway instance enforces the limits by itself, and
a listener rebuilt by a policy change starts them full again.
"""

from __future__ import annotations

from typing import Any

import envoy.config.route.v3.route_components_pb2
import envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2  # noqa: F401

from control_plane.policy.edge_limits import PerIpLimits
from control_plane.resources.resilience import TYPE_PREFIX

RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
STAT_PREFIX = "ccr_per_ip"  # Envoy's counters: ccr_per_ip.http_local_rate_limit.{ok,rate_limited,...}
WINDOW_KEY = "ccr_window"
ADDRESS_KEY = "masked_remote_address"  # what Envoy's masked_remote_address action names its entry
IPV6_PREFIX = 64
# Addresses remembered per window (least recently seen forgotten first: it starts full when it comes
# back). Envoy's default is 20; each entry is a few hundred bytes.
MAX_TRACKED_CLIENTS = 16_384
_ALWAYS = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
# What the connection manager adds to a request once it reads the client's address
# (connection_manager_fields): removed before the provider, which has no business knowing it.
CLIENT_ADDRESS_HEADERS = ("x-envoy-external-address",)


def filters(limits: PerIpLimits | None) -> list[dict[str, Any]]:
    """The listener's filter, or none when the policy sets no per-IP limits."""
    return [] if limits is None else [rate_limit_filter(limits)]


def rate_limit_filter(limits: PerIpLimits) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": STAT_PREFIX,
        "filter_enabled": _ALWAYS,
        "filter_enforced": _ALWAYS,
        # No filter-wide bucket (no token_bucket): only the per-address ones count.
        "always_consume_default_token_bucket": False,
        "rate_limits": [
            {
                "actions": [
                    {"generic_key": {"descriptor_key": WINDOW_KEY, "descriptor_value": window.name}},
                    {"masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": IPV6_PREFIX}},
                ]
            }
            for window in limits.windows
        ],
        "descriptors": [
            {
                "entries": [{"key": WINDOW_KEY, "value": window.name}, {"key": ADDRESS_KEY}],  # no value: per address
                "token_bucket": {
                    "max_tokens": window.burst,
                    "tokens_per_fill": window.rate,
                    "fill_interval": f"{window.seconds}s",
                },
            }
            for window in limits.windows
        ],
        "max_dynamic_descriptors": MAX_TRACKED_CLIENTS,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "response_headers_to_add": [
            {
                "header": {"key": "retry-after", "value": str(limits.retry_after_seconds)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    return {"name": RATE_LIMIT_FILTER, "typed_config": config}


def connection_manager_fields(limits: PerIpLimits | None) -> dict[str, Any]:
    """What the connection manager needs for the client address the limits count.

    Left at Envoy's default (``use_remote_address: false``), Envoy takes the client's address from
    the last X-Forwarded-For entry, which the client writes itself: each request could claim a new
    address. With the limits on, the peer address is used, or the one ``trusted_proxies`` hops from
    the right of XFF. Nothing else changes: the client's address is not appended to XFF (nor sent
    as x-envoy-external-address, CLIENT_ADDRESS_HEADERS: it would reach the providers), and a
    client's own x-request-id is kept as before (Envoy would replace it for an "external" client)."""
    if limits is None:
        return {}
    return {
        "use_remote_address": True,
        "xff_num_trusted_hops": limits.trusted_proxies,
        "skip_xff_append": True,
        "preserve_external_request_id": True,
    }


def exempt(route: dict[str, Any]) -> dict[str, Any]:
    """``route`` with the rate limit filter off (``/health``: a load balancer's probes never count,
    nor are refused). Harmless when the listener has no such filter."""
    per_filter = {
        **route.get("typed_per_filter_config", {}),
        RATE_LIMIT_FILTER: {"@type": TYPE_PREFIX + "envoy.config.route.v3.FilterConfig", "disabled": True},
    }
    return {**route, "typed_per_filter_config": per_filter}
