"""Prometheus metrics of the ext_proc service (served with --metrics-port)."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge

ROUTED = Counter(
    "ccr_routed_requests_total",
    "Requests routed, by the client's API and the router's decision",
    ["client_api", "scenario", "provider", "model"],
)
REJECTED = Counter(
    "ccr_rejected_requests_total",
    "Requests answered by the gateway itself with an error, by reason (response details)",
    ["client_api", "status", "reason"],
)
RESPONSES = Counter(
    "ccr_responses_total",
    "Provider responses seen by ext_proc, by the provider that answered, status class and attempts",
    ["provider", "status_class", "attempts"],
)
TOKENS = Counter(
    "ccr_tokens_total",
    "Tokens reported by providers (every response; read by Envoy, see control_plane.resources.usage_capture)",
    ["provider", "model", "kind"],
)
ADMISSIONS = Counter(
    "ccr_auth_admissions_total",
    "Keyed requests checked against their limits, by outcome (admitted, refused, degraded: decided by "
    "a failure policy while the limit store was unreachable) and the limit that decided",
    ["outcome", "limit"],
)
LIMIT_REMAINING = Gauge(
    "ccr_auth_limit_remaining",
    "What the tenant's last admitted request left of the tightest limit of its kind (requests, tokens, "
    "parallel slots; USD for budget)",
    ["tenant", "limit"],
    multiprocess_mode="livemostrecent",  # under `up`: the last worker to admit one of the tenant's requests
)
BUDGET_REMAINING = Gauge(
    "ccr_auth_budget_remaining_usd",
    "A key's budget left in its period (spent and reserved taken off), as of its last admitted request",
    ["tenant", "key_id"],
    multiprocess_mode="livemostrecent",
)
BUDGET_ALERTS = Counter(
    "ccr_auth_budget_alerts_total",
    "Keys that crossed their budget's alert fraction (auth.limits.budget_alert_at), once per period",
    ["tenant", "key_id"],
)
AUTHZ_DECISIONS = Counter(
    "ccr_authz_decisions_total",
    "ext_authz Check answers: allowed with a virtual key (key), allowed anonymously (anonymous), or "
    "denied, with the reason (the reply's details: ccr_*)",
    ["outcome", "reason"],
)
BUILD = Gauge(
    "ccr_build_info",
    "1, labelled with the running ext_proc's version (deploys show as a change of version)",
    ["version"],
    multiprocess_mode="livemax",
)
SESSIONS = Gauge(
    "ccr_sessions_remembered",
    "Sessions whose last prompt size a worker knows (CCR's long-context rule reads it; every worker "
    "hears every session's usage: the largest count)",
    multiprocess_mode="livemax",
)


@functools.lru_cache(maxsize=8192)
def labelled(metric: Counter, *labels: str) -> Counter:
    """``metric.labels(*labels)``, remembered: every request counts into a few of them, and
    ``labels()`` (a lock and a dict per call) would be paid each time."""
    return metric.labels(*labels)
