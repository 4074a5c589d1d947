"""The request half of the gateway's answer, whatever carries it to Envoy.

Two transports ask the same questions: the ext_proc stream (extproc.processor) and the unary
decision hop (extproc.hop). Both call these steps and only encode the result differently (ext_proc
mutations, or the hop's line format), so a request gets the same answer on either path:

- ``endpoint_step``: which endpoint the method and path name (the client's API with it), or the
  gateway's own answer when no body is needed (unknown endpoint 404, a stored response's path 404
  when the policy keeps none, method not allowed 405, headers too large 431, an encoding Envoy
  did not decode 415, no policy yet, the models); the batch API's paths are an endpoint of their
  own when the policy has ``batches:``, and the MCP endpoint (``mcp.path``) one when it has
  ``mcp:`` (with its RFC 9728 metadata, answered here);
- ``batch_rewrite`` / ``mcp_rewrite``: a batch API or MCP request, authenticated, on to the batch
  API or the MCP service with its tenant (``mcp_step``: the MCP endpoint's refusals, JSON-RPC-shaped);
- ``answer_reply``: a plan's own answer as the client gets it;
- ``forward_rewrite`` / ``chain_rewrite``: what to change in the request a plan forwards (body,
  headers to set and remove, routing labels for the access and usage logs).

Every answer and every rewrite carries the request's routing labels (``request_labels``, the one
place they are made): the access log prints them and the usage log makes the request's usage
record from them, whichever path decided it.

Pure: dicts and bytes in, frozen values out; the only side effect is the rejection counter.

Which answers carry ``x-ccr-route``: every one decided after routing (the provider's answer, an
error Envoy generates on the way to it, a translator's refusal, a provider without its key, a
locally counted count_tokens: there ``attempts=0`` when no provider was asked). Answers given
before any route was chosen (unknown endpoint or method, bad JSON, a request the client's API
refuses, an unknown model) carry none: there is no provider or model to name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import orjson

from ccr.v1.contract import (
    ANONYMOUS_TENANT_VALUE,
    BATCH_API_CLUSTER,
    BATCH_LABEL,
    CHAIN_METADATA_KEY,
    CLUSTER_HEADER,
    DECODED_CONTENT_ENCODINGS,
    ENCODING_HEADER,
    ENDPOINT_LABEL,
    ERROR_TYPE_LABEL,
    ESTIMATE_LABEL,
    HOP_DETAILS_KEY,
    INTERNAL_HEADER_PREFIX,
    KEY_HEADER,
    KEY_ID_LABEL,
    MCP_CLIENT_API,
    MCP_CLUSTER,
    REQUESTED_MODEL_LABEL,
    ROUTE_HEADER,
    STREAM_LABEL,
    TENANT_HEADER,
    TENANT_LABEL,
    encode_chain,
)
from extproc import models
from extproc.auth.batch_caller import BatchCaller
from extproc.auth.keys import VirtualKey
from extproc.mcp import protected_resource
from extproc.mcp.settings import McpSettings
from extproc.metrics import REJECTED, labelled
from extproc.plan import Answer, Chain, Forward, undecodable_body
from extproc.responses_state import stored_path
from extproc.router import Decision
from extproc.routing_table import ModelRoute, RoutingTable
from extproc.translate.base import Api
from extproc.translate.client_request import BedrockCall
from extproc.translate.errors import error_body, error_type

# Credentials the client sent for the gateway; never forwarded to a provider.
CLIENT_CREDENTIALS = ("authorization", "x-api-key", "x-goog-api-key")
# The gateway's limit on the request's headers (Envoy's own default): Envoy's codec lets up to 8 MB
# through (control_plane.resources.edge) so that a client over this one gets a 431 it can read.
MAX_REQUEST_HEADER_BYTES = 60 * 1024
# Not counted against it: pseudo-headers and what Envoy or the Lua filter handle themselves.
_UNCOUNTED_HEADERS = ("content-length", "transfer-encoding", "connection")
# Headers that only mean something to one API; dropped when the provider speaks another.
_API_HEADER_PREFIXES = {
    Api.ANTHROPIC: ("anthropic-",),
    Api.OPENAI: ("openai-",),
    Api.GEMINI: ("x-goog-",),
    Api.RESPONSES: ("openai-",),
    Api.BEDROCK: ("x-amzn-",),  # x-amzn-bedrock-*: guardrails, trace, performance config
}
# A Bedrock client's SigV4 signature headers (Authorization is among CLIENT_CREDENTIALS): signed
# for the gateway's host, never sent on (Envoy signs a Bedrock provider's requests itself).
_SIGV4_PREFIX = "x-amz-"


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: Api | None  # None: decided from the request's headers (GET /v1/models)
    kind: str  # "generate" | "count_tokens" | "models" | "model" | "batch" | "mcp" | "stored"
    path: str  # the path it is called on ("/v1/models/{id}" for a model's)
    # A Vertex rawPredict path (vertex_endpoint): the model it names ("" for count-tokens, whose
    # body names it); None for every other endpoint.
    vertex_model: str | None = None
    # A Bedrock InvokeModel path (bedrock_endpoint): the model and stream flag it names.
    bedrock: BedrockCall | None = None


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    (method, endpoint.path): endpoint
    for method, endpoint in (
        ("POST", Endpoint(Api.ANTHROPIC, "generate", "/v1/messages")),
        ("POST", Endpoint(Api.OPENAI, "generate", "/v1/chat/completions")),
        ("POST", Endpoint(Api.OPENAI, "generate", "/chat/completions")),
        ("POST", Endpoint(Api.ANTHROPIC, "count_tokens", "/v1/messages/count_tokens")),
        ("POST", Endpoint(Api.RESPONSES, "generate", "/v1/responses")),
        ("POST", Endpoint(Api.RESPONSES, "generate", "/responses")),
        ("POST", Endpoint(Api.RESPONSES, "count_tokens", "/v1/responses/input_tokens")),
        ("POST", Endpoint(Api.RESPONSES, "count_tokens", "/responses/input_tokens")),
        ("GET", Endpoint(None, "models", "/v1/models")),
        ("GET", Endpoint(Api.OPENAI, "models", "/models")),
    )
}
# The batch API (batches.api_service), each path and everything below it, every method: served
# when the policy has `batches:` (RoutingTable.batch_api), forwarded untouched (batch_rewrite).
BATCH_ENDPOINTS = (
    Endpoint(Api.ANTHROPIC, "batch", "/v1/messages/batches"),
    Endpoint(Api.OPENAI, "batch", "/v1/files"),
    Endpoint(Api.OPENAI, "batch", "/v1/batches"),
)
# The MCP endpoint (policy ``mcp.path``): Streamable HTTP's three methods, forwarded untouched to the
# MCP service (mcp_rewrite). Its answers are JSON-RPC, and so are the gateway's refusals on it.
MCP_METHODS = ("DELETE", "GET", "POST")
# A JSON-RPC error code for a request refused before the MCP service saw it (as extproc.mcp.transport
# refuses a request its transport rules reject: Invalid Request).
MCP_REFUSED_CODE = -32600
MISSING_KEY_DETAILS = "ccr_auth_missing_key"  # extproc.auth.decision's reason for a request without a key
MCP_MISSING_KEY_MESSAGE = (
    "this MCP endpoint needs a key: send a virtual key (sk-ccr-...) as 'Authorization: Bearer <key>' "
    "or 'x-api-key: <key>'"
)
# A stored response and what hangs off it (GET/DELETE /v1/responses/{id}, .../cancel,
# .../input_items): when the policy keeps none (responses.store: false), every method there gets a
# 404 that says so.
STORED_RESPONSE_PREFIXES = ("/v1/responses/", "/responses/")
STORED_RESPONSES_MESSAGE = "stored responses are not enabled on this gateway"
# When the policy keeps them (responses.store, the default) and the worker has a store: a stored
# response, its input items, or its deletion, answered by the decision (extproc.hop), per tenant and key.
STORED_METHODS = ("GET", "HEAD", "DELETE")
STORED_ENDPOINT = Endpoint(Api.RESPONSES, "stored", "/v1/responses/{id}")
# Google Vertex AI's rawPredict paths for Anthropic models, as the Anthropic SDKs' Vertex clients
# and Claude Code in Vertex mode (CLAUDE_CODE_USE_VERTEX, ANTHROPIC_VERTEX_BASE_URL=<gateway>/v1)
# call them: an Anthropic Messages request whose model is in the path and whose body has
# ``anthropic_version`` instead (normalised in extproc.plan: client_request.from_vertex). Project
# and region are the client's, and mean nothing here: the request is routed like any other.
_VERTEX_PATH = re.compile(
    r"(?:/v1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)"
)
VERTEX_COUNT_TOKENS_MODEL = "count-tokens"  # .../models/count-tokens:rawPredict: Vertex's token counting
# AWS Bedrock's InvokeModel paths, as the Anthropic SDKs' Bedrock clients and Claude Code in Bedrock
# mode (CLAUDE_CODE_USE_BEDROCK, ANTHROPIC_BEDROCK_BASE_URL=<gateway>) call them: an Anthropic
# Messages request whose model (URL-encoded, or with a literal ":") and stream flag are in the path
# (normalised in extproc.plan: client_request.from_bedrock), answered in Bedrock's framing
# (extproc.translate.bedrock_client).
_BEDROCK_PATH = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream)")
MODEL_ENDPOINTS = {
    "/v1/models": Endpoint(None, "model", "/v1/models/{id}"),
    "/models": Endpoint(Api.OPENAI, "model", "/models/{id}"),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """The gateway answers the client itself: ``body`` is already in the client's format.
    ``details`` names the reason in access logs (``ccr_*``)."""

    status: int
    body: bytes
    details: str = ""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # besides content-type (allow, x-ccr-route)
    labels: Mapping[str, str] = field(default_factory=dict)  # routing labels (request_labels)
    public: bool = False  # given to anyone, authenticated or not (RFC 9728 metadata): never gated


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The request goes on, changed: ``body`` None keeps the client's body."""

    body: bytes | None
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    labels: Mapping[str, str]  # routing labels, dynamic metadata in ccr.v1.contract.METADATA_NAMESPACE


def error_reply(
    api: Api,
    status: int,
    message: str,
    details: str,
    headers: tuple[tuple[str, str], ...] = (),
    labels: Mapping[str, str] | None = None,
) -> Reply:
    """An error in the client's own format, answered without contacting any provider. ``labels``:
    the request's (request_labels), to which the reason and the error's type are added."""
    labelled(REJECTED, api.value, str(status), details).inc()
    labels = dict(labels) if labels is not None else request_labels(api, "")
    if details:
        labels[HOP_DETAILS_KEY] = details
    labels[ERROR_TYPE_LABEL] = error_type_of(api, status)
    return Reply(status, error_body(api, status, message), details, headers=headers, labels=labels)


def error_type_of(api: Api, status: int) -> str:
    """The error type a client of ``api`` reads in an error of ``status`` (extproc.translate.errors)."""
    return error_type(api, status)


def answer_reply(api: Api, path: str, answer: Answer, key: VirtualKey | None = None) -> Reply:
    """A plan's own answer (an error, or a local count) as the client gets it: routed ones say
    where they were routed (``attempts=0``: no provider was asked)."""
    headers: tuple[tuple[str, str], ...] = ()
    decision = answer.decision
    if decision is not None:
        headers = ((ROUTE_HEADER, route_header(decision, decision.route, 0)),)
    labels = request_labels(api, path, decision, requested_model=answer.requested_model, stream=answer.stream, key=key)
    if answer.is_error:
        return error_reply(api, answer.status, answer.message, answer.details, headers, labels)
    return Reply(answer.status, answer.body, headers=headers, labels=labels)


def route_header(decision: Decision, route: ModelRoute, attempts: int | str) -> str:
    """The x-ccr-route value: where ``decision`` sent the request and how many tries it took."""
    return f"scenario={decision.scenario}; provider={route.provider.name}; model={route.model}; attempts={attempts}"


def endpoint_step(
    table: RoutingTable | None, method: str, path: str, headers: Mapping[str, str], has_body: bool
) -> tuple[Api, Endpoint | Reply]:
    """The client's API and the endpoint it called, or the gateway's answer (no body needed)."""
    path, _, query = path.partition("?")
    # HEAD is GET without the body (Envoy drops it from the answer).
    endpoint = ENDPOINTS.get(("GET" if method == "HEAD" else method, path))
    if endpoint is None and method == "POST" and "/publishers/anthropic/" in path:
        endpoint = vertex_endpoint(path)
    if endpoint is None and method == "POST" and path.startswith("/model/"):
        endpoint = bedrock_endpoint(path)
    if endpoint is None and method in STORED_METHODS and _stores_responses(table) and stored_path(path) is not None:
        endpoint = STORED_ENDPOINT  # answered by the decision from the store (extproc.hop)
    if endpoint is None and table is not None and table.batch_api:
        endpoint = batch_endpoint(path)  # looked for only past the model endpoints: off their path
    mcp = table.mcp if table is not None else None
    if endpoint is None and mcp is not None:  # the policy keeps its path off the model APIs' own
        if path == mcp.path:
            endpoint = Endpoint(Api.ANTHROPIC, "mcp", mcp.path)
        elif method in ("GET", "HEAD") and path in protected_resource.metadata_paths(mcp.path):
            return Api.ANTHROPIC, _protected_resource_reply(mcp, path, headers)
    # Forwarded on their headers, or answered from the store: no body.
    batch = endpoint is not None and endpoint.kind in ("batch", "mcp", "stored")
    model_id = None
    if endpoint is None and method in ("GET", "HEAD"):
        model_id = models.model_id_of(path)
        if model_id is not None:
            endpoint = MODEL_ENDPOINTS["/v1/models" if path.startswith("/v1/") else "/models"]
    api = endpoint.api if endpoint and endpoint.api else _guess_api(path, headers)
    allowed = allowed_methods(path) if endpoint is None else ()
    # A path the gateway does not serve gets no endpoint label: it is no client call, and no usage record.
    served = endpoint is not None or bool(allowed)
    labelled = (endpoint.path if batch else path) if served else ""  # a batch call: its API's root
    labels = request_labels(api, labelled, requested_model=model_id or "")
    if endpoint is not None and endpoint.kind == "mcp":
        labels["client_api"] = MCP_CLIENT_API
    if header_bytes(headers) > MAX_REQUEST_HEADER_BYTES:
        # No byte count in the message: each decision path sees a few headers of Envoy's own.
        message = f"request headers are larger than the gateway limit of {MAX_REQUEST_HEADER_BYTES} bytes"
        reply = error_reply(api, 431, message, "ccr_headers_too_large", labels=labels)
        return api, mcp_reply(reply) if endpoint is not None and endpoint.kind == "mcp" else reply
    if endpoint is not None and endpoint.kind == "mcp" and method not in MCP_METHODS:
        allow = ", ".join(MCP_METHODS)
        message = f"method {method} is not allowed on the MCP endpoint {path}; it answers {allow}"
        reply = error_reply(api, 405, message, "ccr_method_not_allowed", (("allow", allow),), labels)
        return api, mcp_reply(reply)
    if batch:
        return api, endpoint  # any method, with a body or not: the batch API (MCP service) answers
    if endpoint is None:
        if allowed:
            allow = ", ".join(allowed)
            message = f"method {method} is not allowed on {path}; it answers {allow}"
            return api, error_reply(api, 405, message, "ccr_method_not_allowed", (("allow", allow),), labels)
        if path.startswith(STORED_RESPONSE_PREFIXES) and not _stores_responses(table):
            message = f"{STORED_RESPONSES_MESSAGE}: no response can be read, cancelled or deleted ({method} {path})"
            return api, error_reply(api, 404, message, "ccr_stored_responses_disabled", labels=labels)
        return api, error_reply(api, 404, f"no such endpoint: {method} {path}", "ccr_unknown_endpoint", labels=labels)
    if table is None:
        message = "the gateway has no routing policy yet; retry shortly"
        return api, error_reply(api, 503, message, "ccr_no_policy", labels=labels)
    if endpoint.kind in ("models", "model"):
        answer = models.listing(api, table, query) if model_id is None else models.retrieve(api, table, model_id)
        if answer.status != 200:
            details = "ccr_unknown_model" if answer.status == 404 else "ccr_bad_request"
            return api, error_reply(api, answer.status, answer.message, details, labels=labels)
        return api, Reply(200, answer.body, labels=labels)
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":  # Envoy decodes the encodings it knows and drops the header
        supported = ", ".join(DECODED_CONTENT_ENCODINGS)
        message = f"Content-Encoding {encoding!r} is not supported: send the body unencoded, or encoded {supported}"
        return api, error_reply(api, 415, message, "ccr_unsupported_encoding", labels=labels)
    if not has_body:
        if headers.get(ENCODING_HEADER):
            message = undecodable_body(headers[ENCODING_HEADER])
            return api, error_reply(api, 400, message, "ccr_bad_encoding", labels=labels)
        return api, error_reply(api, 400, "request body is required", "ccr_empty_body", labels=labels)
    return api, endpoint


def _stores_responses(table: RoutingTable | None) -> bool:
    return table is not None and table.responses.store


def vertex_endpoint(path: str) -> Endpoint | None:
    """The endpoint of a Vertex rawPredict path (no query), or None. Labelled with the path itself:
    the model in it is part of what the request is (the repeats cache keys on the endpoint's path)."""
    found = _VERTEX_PATH.fullmatch(path)
    if found is None:
        return None
    model, verb = unquote(found.group(1)), found.group(2)
    if model == VERTEX_COUNT_TOKENS_MODEL:
        return Endpoint(Api.ANTHROPIC, "count_tokens", path, vertex_model="") if verb == "rawPredict" else None
    return Endpoint(Api.ANTHROPIC, "generate", path, vertex_model=model)


def bedrock_endpoint(path: str) -> Endpoint | None:
    """The endpoint of a Bedrock InvokeModel path (no query), or None; labelled with the path, as a
    Vertex one is."""
    found = _BEDROCK_PATH.fullmatch(path)
    if found is None:
        return None
    model = unquote(found.group(1))
    if not model:
        return None
    call = BedrockCall(model, found.group(2) == "invoke-with-response-stream")
    return Endpoint(Api.BEDROCK, "generate", path, bedrock=call)


def batch_endpoint(path: str) -> Endpoint | None:
    """The batch API's endpoint ``path`` (no query) is, or under; None for any other path."""
    for endpoint in BATCH_ENDPOINTS:
        if path == endpoint.path or path.startswith(endpoint.path + "/"):
            return endpoint
    return None


def batch_rewrite(api: Api, endpoint: Endpoint, headers: Mapping[str, str], key: VirtualKey | None) -> Rewrite:
    """A batch API request: to the batch API's cluster, the body untouched, the caller's tenant in
    TENANT_HEADER and its key's id in KEY_HEADER (the batch's owner, whom the workers send its items
    for). Labelled with the endpoint (and the key): the usage log records the call, with no model
    and no tokens, like a model list."""
    return _service_rewrite(BATCH_API_CLUSTER, headers, key, request_labels(api, endpoint.path, key=key))


def mcp_rewrite(endpoint: Endpoint, headers: Mapping[str, str], key: VirtualKey | None) -> Rewrite:
    """An MCP endpoint request (any of its methods): to the MCP service's cluster as it came, with
    the caller's tenant and key id, as a batch API request goes (``_service_rewrite``). Labelled like
    one, with the endpoint and client_api "mcp": the usage log records the call with no model and no
    tokens (the MCP service records each tool call itself)."""
    labels = request_labels(Api.ANTHROPIC, endpoint.path, key=key)
    labels["client_api"] = MCP_CLIENT_API
    return _service_rewrite(MCP_CLUSTER, headers, key, labels)


def _service_rewrite(
    cluster: str, headers: Mapping[str, str], key: VirtualKey | None, labels: dict[str, str]
) -> Rewrite:
    """A request for one of the gateway's own services behind Envoy (the batch API, the MCP
    service): to ``cluster``, the body untouched, the caller's tenant in TENANT_HEADER and its
    key's id in KEY_HEADER. Always set (ANONYMOUS_TENANT_VALUE for a caller without a key): Envoy
    then replaces whatever a client sent under those names, so nobody names a tenant but the
    gateway. The gateway's credentials go no further."""
    set_headers = (
        (CLUSTER_HEADER, cluster),
        (TENANT_HEADER, key.tenant if key else ANONYMOUS_TENANT_VALUE),
        (KEY_HEADER, key.key_id if key else ANONYMOUS_TENANT_VALUE),
    )
    overwritten = {name for name, _ in set_headers}
    remove = tuple(
        name
        for name in headers
        if name not in overwritten and (name in CLIENT_CREDENTIALS or name.startswith(INTERNAL_HEADER_PREFIX))
    )
    return Rewrite(None, set_headers, remove, labels)


def mcp_step(
    mcp: McpSettings, endpoint: Endpoint, headers: Mapping[str, str], caller: VirtualKey | Reply | None
) -> Rewrite | Reply:
    """The MCP endpoint past authentication (``caller``: Authenticator.authenticate's answer): the
    rewrite to the MCP service, or the refusal as an MCP client reads it (``mcp_reply``). A 401
    also says where the endpoint's RFC 9728 metadata is (``WWW-Authenticate``), so that a client
    that can get a token from the policy's authorization servers knows where to ask."""
    if not isinstance(caller, Reply):
        return mcp_rewrite(endpoint, headers, caller)
    extra: tuple[tuple[str, str], ...] = ()
    body = caller.body
    if caller.status == 401:
        missing = caller.details == MISSING_KEY_DETAILS  # else a key or a token was presented, and refused
        extra = (("www-authenticate", protected_resource.www_authenticate(headers, mcp.path, not missing)),)
        if missing:  # an MCP client sets its headers in its config: name both ways of sending a key
            body = orjson.dumps({"error": {"message": MCP_MISSING_KEY_MESSAGE}})
    labels = {**caller.labels, ENDPOINT_LABEL: endpoint.path, "client_api": MCP_CLIENT_API}
    return mcp_reply(Reply(caller.status, body, caller.details, headers=(*caller.headers, *extra), labels=labels))


def mcp_reply(reply: Reply) -> Reply:
    """A gateway refusal on the MCP endpoint in JSON-RPC's shape (the MCP SDKs read an HTTP error's
    body as a JSON-RPC error): ``{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message":
    ...}}``, with the status, headers and labels of ``reply`` (made in the Anthropic shape: its
    message is taken from there)."""
    try:
        message = orjson.loads(reply.body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = reply.details or f"refused with HTTP {reply.status}"
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": MCP_REFUSED_CODE, "message": message}})
    return Reply(reply.status, body, reply.details, reply.content_type, reply.headers, reply.labels, reply.public)


def _protected_resource_reply(mcp: McpSettings, path: str, headers: Mapping[str, str]) -> Reply:
    """RFC 9728 metadata of the MCP endpoint, to anyone (extproc.mcp.protected_resource)."""
    body = protected_resource.metadata_body(headers, mcp.path, mcp.authorization_servers)
    labels = {"client_api": MCP_CLIENT_API, ENDPOINT_LABEL: path}
    return Reply(200, body, headers=(("cache-control", "max-age=3600"),), labels=labels, public=True)


def header_bytes(headers: Mapping[str, str]) -> int:
    """The size of the client's headers as counted against MAX_REQUEST_HEADER_BYTES (name, value
    and ": " + CRLF per header), the same on both decision paths."""
    return sum(
        len(name) + len(value) + 4
        for name, value in headers.items()
        if not name.startswith((":", INTERNAL_HEADER_PREFIX)) and name not in _UNCOUNTED_HEADERS
    )


def allowed_methods(path: str) -> tuple[str, ...]:
    """The methods ``path`` answers (a 405's Allow header); () for a path the gateway does not serve."""
    methods = {method for method, known in ENDPOINTS if known == path}
    if models.model_id_of(path) is not None:
        methods.add("GET")
    if "GET" in methods:
        methods.add("HEAD")
    return tuple(sorted(methods))


def forward_rewrite(
    api: Api, endpoint: Endpoint, outcome: Forward, headers: Mapping[str, str], key: VirtualKey | None = None
) -> Rewrite:
    """One provider: the translated request, sent to that provider's cluster."""
    route, upstream, provider = outcome.route, outcome.upstream, outcome.route.provider
    set_headers = (
        (":path", upstream.path),
        ("content-length", str(len(upstream.body))),
        ("content-type", "application/json"),
        (CLUSTER_HEADER, provider.cluster),
        *provider.headers,
        *upstream.headers,
    )
    set_headers = with_client_betas(set_headers, headers)
    overwritten = {name for name, _ in set_headers}
    remove = tuple(name for name in headers if name not in overwritten and strip_before_egress(name, api, provider.api))
    body = None if upstream.unchanged else upstream.body  # None: the client's bytes stay in place
    labels = request_labels(api, endpoint.path, outcome.decision, route, key=key)
    if endpoint.kind == "generate":  # a provider's count_tokens is free: nothing to estimate
        labels[ESTIMATE_LABEL] = str(outcome.context.estimate)
    return Rewrite(body, set_headers, remove, labels)


def chain_rewrite(
    api: Api, endpoint: Endpoint, outcome: Chain, headers: Mapping[str, str], key: VirtualKey | None = None
) -> Rewrite:
    """A fallback chain: Envoy retries across the chain's providers and the upstream ext_proc
    (extproc.attempt) rewrites each attempt, so the client's body goes on untranslated."""
    decision = outcome.decision
    set_headers: tuple[tuple[str, str], ...] = ((CLUSTER_HEADER, decision.chain_cluster or ""),)
    if outcome.body is not None:
        set_headers += (("content-length", str(len(outcome.body))),)
    # Credentials are dropped now; provider headers are set per attempt.
    remove = tuple(
        name
        for name in headers
        if name in CLIENT_CREDENTIALS or (name.startswith(INTERNAL_HEADER_PREFIX) and name != CLUSTER_HEADER)
    )
    labels = request_labels(api, endpoint.path, decision, key=key)
    labels[ESTIMATE_LABEL] = str(outcome.context.estimate)  # chains serve generate requests only
    # The chain travels as dynamic metadata, which Envoy forwards to every attempt's upstream
    # ext_proc: a header would be mutated in place by the first attempt (retries share it).
    labels[CHAIN_METADATA_KEY] = encode_chain(api.value, [(r.provider.name, r.model) for r in decision.chain])
    return Rewrite(outcome.body, set_headers, remove, labels)


def request_labels(
    api: Api,
    path: str,
    decision: Decision | None = None,
    route: ModelRoute | None = None,
    requested_model: str = "",
    stream: bool = False,
    key: VirtualKey | None = None,
) -> dict[str, str]:
    """A request's routing labels (dynamic metadata in ccr.v1.contract.METADATA_NAMESPACE), the same
    on both decision paths: the access logs print them, the usage log (extproc.usage_log) makes the
    request's usage record from them. ``path``: the endpoint called ("" for a path the gateway does
    not serve: no record); ``route``: the decision's own unless given; ``key``: the virtual key the
    request presented (its tenant and id; none for an anonymous request). Kept to what the record
    needs: every label costs each request a little on both paths."""
    labels = {"client_api": api.value}
    if path:
        labels[ENDPOINT_LABEL] = path
    if decision is not None:
        route = route or decision.route
        requested_model = decision.body["model"]  # a string: the router refused the request otherwise
        stream = decision.body.get("stream") is True
        labels["scenario"] = decision.scenario
        labels["provider"] = route.provider.name
        labels["model"] = route.target.model
        if decision.session:
            labels["session"] = decision.session
    if requested_model:
        labels[REQUESTED_MODEL_LABEL] = requested_model
    if stream:
        labels[STREAM_LABEL] = "1"
    if key is not None:
        labels[TENANT_LABEL] = key.tenant
        labels[KEY_ID_LABEL] = key.key_id
        if type(key) is BatchCaller:
            labels[BATCH_LABEL] = key.batch
    return labels


def with_client_betas(
    set_headers: tuple[tuple[str, str], ...], client: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The headers to set, a translator's ``anthropic-beta`` (a Bedrock client's body betas,
    extproc.translate.bedrock_client) joined to the client's own header rather than replacing it."""
    sent = client.get("anthropic-beta")
    if not sent or not any(name == "anthropic-beta" for name, _ in set_headers):
        return set_headers
    joined: list[tuple[str, str]] = []
    for name, value in set_headers:
        if name == "anthropic-beta":
            flags = [flag.strip() for flag in f"{sent},{value}".split(",") if flag.strip()]
            value = ",".join(dict.fromkeys(flags))  # each once, the client's first
        joined.append((name, value))
    return tuple(joined)


def strip_before_egress(name: str, client: Api, provider: Api) -> bool:
    if name.startswith(":") or name == "content-length":
        return False
    if name in CLIENT_CREDENTIALS or name.startswith(INTERNAL_HEADER_PREFIX):
        return True
    if client is Api.BEDROCK:
        if name.startswith(_SIGV4_PREFIX):
            return True
        if name.startswith("anthropic-"):  # Claude Code's in Bedrock mode: read where Anthropic's API is
            return provider not in (Api.ANTHROPIC, Api.VERTEX, Api.BEDROCK)
    if provider is Api.VERTEX and client is Api.ANTHROPIC:  # Claude on Vertex reads anthropic-beta as Anthropic does
        return False
    return client is not provider and name.startswith(_API_HEADER_PREFIXES[client])


def _guess_api(path: str, headers: Mapping[str, str]) -> Api:
    if path.startswith(("/v1/responses", "/responses")):
        return Api.RESPONSES
    if path.startswith("/model/"):  # Bedrock's paths (Converse, CountTokens...): refused in its shape
        return Api.BEDROCK
    if "chat/completions" in path or ("anthropic-version" not in headers and "authorization" in headers):
        return Api.OPENAI
    return Api.ANTHROPIC
