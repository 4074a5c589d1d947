"""Per-request metrics by the OpenTelemetry GenAI semantic conventions, in their Prometheus form,
plus what those conventions leave out: cost, the cost the response cache avoided, and the
gateway's own share of each request's time.

Counted once per client request, from its usage record (extproc.usage_log: the counting copy of
Envoy's usage access log), so every worker's requests are counted exactly once and nothing is
added to the request path:

- ``gen_ai_client_token_usage`` (histogram, tokens): input (the whole prompt, cached parts
  included) and output, per request; the gateway is the providers' client.
- ``gen_ai_server_request_duration_seconds``: first byte in to last byte out, with ``error_type``.
- ``gen_ai_server_time_to_first_token_seconds``: streams only, first byte in to the first byte
  the client got.
- ``gen_ai_server_time_per_output_token_seconds``: streams only, the rest of the stream over the
  output tokens after the first.
- ``ccr_cost_usd_total`` / ``ccr_cost_avoided_usd_total`` by provider, model and tenant.
- ``ccr_gateway_overhead_seconds``: the request's time minus the provider's (first byte sent
  upstream to last byte received), what the gateway adds; a reply of the gateway's own (a cache
  hit, a refusal) is all overhead.
- ``ccr_requests_total`` by client API and status class: the SLO's availability.

Labels are bounded: providers, response models and tenants come from the policy and the key
store; a requested model is kept only when the policy knows the name (a client may send any
string), else ``_OTHER`` (the conventions' own value for an unknown one). No request or user ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from ccr.v1.usage_record import USAGE_FROM_PROVIDER, UsageRecord
from extproc.metrics import labelled
from extproc.routing_table import RoutingTable

OTHER = "_OTHER"
CHAT = "chat"  # gen_ai.operation.name of a Messages or Chat Completions call
COUNT_TOKENS = "count_tokens"  # not named by the conventions: a provider's token counting endpoint
_OPERATIONS = {
    "/v1/messages": CHAT,
    "/v1/chat/completions": CHAT,
    "/chat/completions": CHAT,
    "/v1/messages/count_tokens": COUNT_TOKENS,
}
_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"]

# Buckets the conventions recommend for each instrument.
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per request, by token type (input: the whole prompt, cached parts included; output)",
    [*_GENAI, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Client requests from their first byte in to their last byte out, by outcome (error_type: empty on success)",
    [*_GENAI, "error_type"],
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Streamed requests: from their first byte in to the first byte of the stream out",
    _GENAI,
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Streamed requests: the time after the first byte out over the output tokens after the first",
    _GENAI,
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
COST = Counter(
    "ccr_cost_usd",
    "What requests cost at the policy's prices, in USD (an unpriced model counts 0)",
    ["provider", "model", "tenant"],
)
COST_AVOIDED = Counter(
    "ccr_cost_avoided_usd",
    "What the response cache's hits would have cost at the policy's prices, in USD",
    ["provider", "model", "tenant"],
)
OVERHEAD = Histogram(
    "ccr_gateway_overhead_seconds",
    "A request's time minus the provider's (first byte sent to it to last byte received from it): what "
    "the gateway adds; a reply of the gateway's own is all overhead",
    ["client_api"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5),
)
REQUESTS = Counter(
    "ccr_requests_total",
    "Client requests by API and the status class of their answer (0xx: the client went away first)",
    ["client_api", "status_class"],
)


def observe(
    record: UsageRecord, table: RoutingTable | None, first_byte_out_s: float | None, upstream_s: float | None
) -> None:
    """One finished client request. ``first_byte_out_s``: first byte in to the client's first
    byte (None: never sent); ``upstream_s``: the provider's part of its time (None: none asked)."""
    duration_s = record.duration_ms / 1000
    labelled(REQUESTS, record.client_api, f"{record.status // 100}xx").inc()
    labelled(OVERHEAD, record.client_api).observe(max(0.0, duration_s - (upstream_s or 0.0)))
    operation = _OPERATIONS.get(record.endpoint)
    if operation is None:  # the model list: no model call
        return
    genai = (operation, record.provider or "", _requested(record.requested_model, table), record.model or "")
    labelled(REQUEST_DURATION, *genai, record.error_type or "").observe(duration_s)
    tenant = record.tenant or ""
    if record.cost_usd:
        labelled(COST, record.provider or "", record.model or "", tenant).inc(record.cost_usd)
    if record.cost_avoided_usd:
        labelled(COST_AVOIDED, record.provider or "", record.model or "", tenant).inc(record.cost_avoided_usd)
    if record.stream and first_byte_out_s is not None and record.error_type is None:
        labelled(TIME_TO_FIRST_TOKEN, *genai).observe(first_byte_out_s)
    # Tokens as a provider counted them for this request: not an estimate (an error, a stream
    # without usage), not a hit's (spent by the request it was cached from).
    if record.usage_source != USAGE_FROM_PROVIDER or record.cache == "hit":
        return
    prompt = record.input_tokens + record.cache_read_tokens + record.cache_creation_tokens
    if prompt:
        labelled(TOKEN_USAGE, *genai, "input").observe(prompt)
    if record.output_tokens:
        labelled(TOKEN_USAGE, *genai, "output").observe(record.output_tokens)
    if record.stream and first_byte_out_s is not None and record.output_tokens > 1:
        per_token = max(0.0, duration_s - first_byte_out_s) / (record.output_tokens - 1)
        labelled(TIME_PER_OUTPUT_TOKEN, *genai).observe(per_token)


def _requested(model: str, table: RoutingTable | None) -> str:
    if not model:
        return ""
    if table is not None and (model in table.models or model in table.aliases or model.lower() in table.explicit):
        return model
    return OTHER
