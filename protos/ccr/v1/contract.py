"""The names the control plane, Envoy's configuration and ext_proc must agree on, in one place.

policy.proto is the contract for the policy resource itself; this module is the rest of it: the
internal headers Envoy routes and logs by, the dynamic-metadata namespaces and keys, the fallback
chain's encoding, the xDS node groups and the policy's type URL, the usage log's names, and CCR's
scenario vocabulary. Both processes import it; it imports neither (nor anything but the standard
library), so either side can be read, tested and deployed without loading the other.
"""

from __future__ import annotations

# --- headers ------------------------------------------------------------------------------------
# Every internal header starts with this prefix: always overwritten, never trusted from a client,
# stripped before a request leaves for a provider.
INTERNAL_HEADER_PREFIX = "x-ccr-"
CLUSTER_HEADER = "x-ccr-cluster"  # set by ext_proc; the route's cluster_header: the provider's cluster
PROVIDER_RESPONSE_HEADER = "x-ccr-provider"  # which provider of a chain answered (endpoint metadata)
# A fallback attempt to a provider whose credentials Envoy holds (Bedrock's SigV4, Vertex's token):
# set by the attempt rewrite, read by the chain cluster's credential filters, dropped before egress.
ATTEMPT_PROVIDER_HEADER = "x-ccr-attempt-provider"
ROUTE_HEADER = "x-ccr-route"  # on every routed response: scenario, provider, model, attempts
# Set by the decision hop on a translated stream or a fallback chain: the route's variant runs
# ext_proc on the response only (extproc.processor reads the context from the dynamic metadata).
REWRITE_HEADER = "x-ccr-rewrite"
REWRITE_RESPONSE = "response"  # REWRITE_HEADER's value
# Envoy's request id (the access log's request_id), on every response under both names: x-request-id
# as Envoy sets it, request-id as Anthropic's API does (its SDKs read that one).
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_HEADERS = (REQUEST_ID_HEADER, "request-id")
# The request's Content-Encoding as the client sent it, copied by Envoy before its decompressors
# decode the body and drop the header: a body that did not decode can then be named as such.
ENCODING_HEADER = "x-ccr-content-encoding"
DECODED_CONTENT_ENCODINGS = ("gzip", "br", "zstd")  # what Envoy's decompressors decode
# Set by the batch worker on each item it sends through the gateway (``<batch_id>:<index>``); the
# provider routes remove it before a request leaves (batches.worker says why it is not x-ccr-).
BATCH_ITEM_HEADER = "x-batch-item"
# Sent with each item by a batch worker whose key the policy names (batches.workers): whom the item
# is sent for, the batch's owner. The gateway believes them from such a worker only, and then treats
# the request as the owner's (extproc.auth.batch_caller): the owner's key id ("-": none) and tenant.
BATCH_KEY_HEADER = "x-batch-key"
BATCH_TENANT_HEADER = "x-batch-tenant"
BATCH_HEADERS = (BATCH_ITEM_HEADER, BATCH_KEY_HEADER, BATCH_TENANT_HEADER)  # removed before a provider
# The batch API's caller (batches.api_http): set by the decision hop on every request it forwards to
# the batch API (BATCH_API_CLUSTER), the client's copy never passing (x-ccr- is never trusted).
# Always set: an anonymous caller gets ANONYMOUS_TENANT_VALUE, which no virtual key's tenant is.
TENANT_HEADER = "x-ccr-tenant"
ANONYMOUS_TENANT_VALUE = "-"
# Beside it, the caller's key id (ANONYMOUS_TENANT_VALUE for none): the batch API keeps it with the
# batch, and its workers send each item for that key (BATCH_KEY_HEADER), under its limits and budget.
KEY_HEADER = "x-ccr-key"
# gRPC metadata on the upstream (per-attempt) ext_proc filter's calls, telling ext_proc which filter calls.
UPSTREAM_PHASE_METADATA = ("x-ccr-phase", "upstream")

# --- dynamic metadata ---------------------------------------------------------------------------
METADATA_NAMESPACE = "ccr"  # ext_proc's routing labels (client_api, scenario, provider, model, session)
CHAIN_METADATA_KEY = "chain"  # ccr.chain: the client API and the model per provider of a fallback chain
USAGE_NAMESPACE = "ccr.usage"  # the provider's usage fields, copied by Envoy from the response body
# The decision hop's labels (ccr.*): the response context a translated answer is read with (Envoy's
# Lua filter hands it back with the provider's answer), and why the gateway answered itself.
HOP_CONTEXT_KEY = "response_context"
HOP_STREAM_KEY = "stream_context"  # the same for a translated stream, read by ext_proc instead
HOP_DETAILS_KEY = "details"
# The decision's span as a traceparent, for the Lua filter's /respond call: Envoy injects its own
# when it sampled the request, this one keeps an unsampled request's failure in one trace.
TRACEPARENT_LABEL = "traceparent"
HOP_ROUTE_KEY = "route"  # the x-ccr-route header's value but the attempts, which Envoy knows
# The labels a request's usage record is made from (extproc.usage_log), besides client_api,
# scenario, provider, model and session. Every request to one of the gateway's endpoints carries
# ENDPOINT_LABEL, on both decision paths: the usage log passes the entries that have it.
ENDPOINT_LABEL = "endpoint"  # the client's path, without the query
REQUESTED_MODEL_LABEL = "requested_model"  # the request's "model", as the client wrote it
STREAM_LABEL = "stream"  # "1" when the client asked for a stream
ESTIMATE_LABEL = "estimate"  # the gateway's count of the input tokens, on requests sent to a provider
TENANT_LABEL = "tenant"  # the virtual key's tenant, on requests that presented one
KEY_ID_LABEL = "key_id"  # the virtual key's id (never its secret)
BATCH_LABEL = "batch"  # the batch a trusted worker sent the request for (its usage record's batch_id)
ERROR_TYPE_LABEL = "error_type"  # on the gateway's own error answers: the type the client was told
CACHE_LABEL = "cache"  # the response cache's part in the answer: hit | miss (stored if it succeeds)
# On a cache hit: the usage the cached answer reported, which no provider was paid for this time,
# as "<input>,<output>,<cache read>,<cache creation>" tokens (Anthropic meaning: input excludes the
# cached tokens). The ledger prices it as the cost the hit avoided.
CACHE_SAVED_LABEL = "cache_saved"
# The response cache's store instruction for Envoy's Lua filter: where to store a 200 answer (an
# opaque token it hands back to /store) and the most bytes it may collect for it.
CACHE_STORE_KEY = "cache_store"
CACHE_CAP_KEY = "cache_cap"
CACHE_CLUSTER_KEY = "cache_cluster"  # the cluster /store is called through (the deciding worker's hop)
CACHE_HEADER = "x-ccr-cache"  # on every answer of a request the cache applies to: hit | miss | bypass


def encode_chain(client_api: str, chain: list[tuple[str, str]]) -> str:
    """ccr.chain: "<client api>;<provider>=<model name>;..." (names cannot hold ';' or '=')."""
    return ";".join([client_api, *(f"{provider}={model}" for provider, model in chain)])


def decode_chain(value: str) -> tuple[str, dict[str, str]]:
    """The inverse of ``encode_chain``: (client API, {provider: model name})."""
    client, *pairs = value.split(";")
    return client, dict(pair.split("=", 1) for pair in pairs if "=" in pair)


# --- Envoy's static clusters (envoy/bootstrap.yaml) ---------------------------------------------
EXTPROC_CLUSTER = "ccr_extproc"  # the ext_proc workers (and ccr_extproc_<i>: each alone, for the usage log)
HOP_CLUSTER = "ccr_hop"  # the workers' decision hop servers (extproc/hop_server.py)
# The batch API (`ccr-gateway batch-api`), a cluster the control plane serves when the policy has
# `batches:` (control_plane.resources.batches).
BATCH_API_CLUSTER = "ccr_batch_api"
# The MCP service (`ccr-gateway mcp-gateway`), a cluster the control plane serves when the policy has
# `mcp:` (control_plane.resources.mcp): the decision forwards the MCP endpoint's requests there, with
# TENANT_HEADER and KEY_HEADER set as for the batch API.
MCP_CLUSTER = "ccr_mcp"
# The MCP service reaches an upstream Streamable HTTP server through Envoy's MCP egress listener,
# naming the server (its policy name) in this header; the egress route sends it to the server's
# cluster, MCP_SERVER_CLUSTER_PREFIX + name, and removes the header.
MCP_SERVER_HEADER = "x-ccr-mcp-server"
MCP_SERVER_CLUSTER_PREFIX = "ccr_mcp_"
MCP_CLIENT_API = "mcp"  # the client_api label of the MCP endpoint's requests
# The decision hop's Lua filter reuses its decision on the MCP endpoint for a moment (policy
# ``mcp.decision_reuse``) for a request whose headers are the same but for these, which differ call
# by call and which that decision never reads (tests/unit/test_hop_mcp.py proves it against
# extproc.hop.decide): the session, the protocol revision, the trace, the request id.
MCP_DECISION_IGNORED_HEADERS = (
    "accept",
    "content-type",
    "last-event-id",
    "mcp-protocol-version",
    "mcp-session-id",
    "traceparent",
    "tracestate",
    "x-request-id",
)


# --- xDS ----------------------------------------------------------------------------------------
ENVOY_GROUP = "ccr-gateway"  # node.cluster of the Envoys the control plane serves
EXTPROC_GROUP = "ccr-extproc"  # node.cluster of the ext_proc workers
POLICY_TYPE_URL = "type.googleapis.com/ccr.v1.Policy"
POLICY_RESOURCE_NAME = "policy"

# --- the usage log (Envoy's gRPC access log to ext_proc) ------------------------------------------
USAGE_LOG_NAME = "ccr_usage"  # count the tokens and remember the sessions
SESSION_LOG_NAME = "ccr_usage_sessions"  # only remember the sessions (the other workers' copies)
ANSWERED_BY_TAG = "answered_by"  # the chain endpoint that answered (its ccr.provider metadata)

# --- CCR's routing vocabulary ---------------------------------------------------------------------
# Router keys as CCR spells them (also what Decision.scenario reports) -> policy.proto Router field.
SCENARIOS = {
    "default": "default",
    "background": "background",
    "think": "think",
    "longContext": "long_context",
    "webSearch": "web_search",
    "image": "image",
}
DEFAULT_LONG_CONTEXT_THRESHOLD = 60_000  # tokens; CCR's default
