"""What the gateway does with one request body: the pure decision every transport shares.

``plan(table, api, kind, headers, raw, sessions)`` parses the body once, checks it against the
client's API and reads it into typed values (extproc.translate.client_request: the same answer
whatever the provider), routes it and translates it, and returns one of three outcomes:

- ``Answer``: the gateway answers itself (an error in the client's format, or a local count);
- ``Forward``: one provider, with the translated request and the translator that will read the
  response;
- ``Chain``: a fallback chain; Envoy tries its providers in order and the per-attempt processor
  (extproc.attempt) rewrites each attempt.

The ext_proc processor turns the outcome into Envoy mutations; ``ccr-gateway route --explain``
prints it. Sharing this function is what keeps the two from drifting: whatever the gateway would
answer (a provider without its key, a pair that cannot be translated, a body a translator refuses),
explain says too. No I/O, no protos, no metrics here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ccr.v1 import tracing
from ccr.v1.contract import ENCODING_HEADER
from extproc.router import Decision, RoutingError, decide
from extproc.routing_table import ModelRoute, RoutingTable
from extproc.tokens import SessionUsage, count_for_client
from extproc.translate.base import Api, ClientRequestError, ResponseContext, Translator, UpstreamRequest
from extproc.translate.buffering import ResponsePhases
from extproc.translate.client_request import (
    BedrockCall,
    ClientRequest,
    OpenAIRequest,
    ResponsesRequest,
    from_bedrock,
    from_vertex,
    parse_request,
    read_request,
)
from extproc.translate.registry import count_tokens_translator, translator_class, translator_for

GENERATE = "generate"
COUNT_TOKENS = "count_tokens"


@dataclass(frozen=True, slots=True)
class Answer:
    """Answered by the gateway, no provider asked. ``body`` for a success; ``message`` (formatted in
    the client's API by the caller) for an error; ``details`` names the reason in access logs."""

    status: int
    message: str = ""
    details: str = ""
    body: bytes = b""
    decision: Decision | None = None  # when routing got that far
    # What the client asked for, when the body said so but routing did not get that far.
    requested_model: str = ""
    stream: bool = False

    @property
    def is_error(self) -> bool:
        return self.status >= 400


@dataclass(frozen=True, slots=True)
class Forward:
    """One provider: send ``upstream`` to ``route``'s cluster; ``translator`` reads the answer."""

    decision: Decision
    route: ModelRoute
    upstream: UpstreamRequest
    translator: Translator
    stream: bool
    context: ResponseContext  # what reading the answer needs, for a translator primed elsewhere


@dataclass(frozen=True, slots=True)
class Chain:
    """A fallback chain: the client's body goes on (``body`` is set when the router changed it, e.g.
    stripped the subagent tag), Envoy picks the provider per attempt. ``context`` primes the
    translator of whichever provider answers (its ``model`` is that provider's, set then)."""

    decision: Decision
    body: bytes | None
    stream: bool
    context: ResponseContext


Outcome = Answer | Forward | Chain


def plan(
    table: RoutingTable | None,
    api: Api,
    kind: str,
    headers: Mapping[str, str],
    raw: bytes,
    sessions: SessionUsage | None = None,
    tenant: str | None = None,
    vertex_model: str | None = None,
    bedrock: BedrockCall | None = None,
) -> Outcome:
    """``tenant``: the virtual key's, whose routing overrides (the policy's ``tenants``) apply.
    ``vertex_model``: the request came on a Vertex rawPredict path (request_steps.vertex_endpoint),
    which names this model ("" for count-tokens): its body is read as the Anthropic request it is.
    ``bedrock``: it came on a Bedrock InvokeModel path (request_steps.bedrock_endpoint), which names
    the model and the stream flag; ``api`` is then Api.BEDROCK (answered in Bedrock's framing)."""
    if table is None:
        return Answer(503, "the gateway has no routing policy yet; retry shortly", "ccr_no_policy")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _not_json(raw, headers, exc)
    if not isinstance(body, dict):
        return Answer(400, "request body must be a JSON object", "ccr_bad_json")
    size = len(raw)
    if vertex_model is not None:
        # From here on an Anthropic request like any other; its bytes are not the client's any
        # more (raw b"": no translator forwards them as they are, a chain sends the new body).
        body, raw, rewritten = from_vertex(body, vertex_model), b"", True
    elif bedrock is not None:
        body, raw, rewritten = from_bedrock(body, bedrock), b"", True
    else:
        rewritten = False
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Answer(400, "model: a model name (string) is required", "ccr_no_model")
    try:
        # Checked once for every provider: a malformed request gets the same 400 wherever it goes.
        request = parse_request(api, body, counting=kind == COUNT_TOKENS, raw=raw)
    except ClientRequestError as exc:
        asked_stream = body.get("stream") is True
        return Answer(exc.status, exc.message, "ccr_bad_request", requested_model=model, stream=asked_stream)
    try:
        with tracing.span("ccr.route", attributes={"gen_ai.request.model": model}) as span:
            decision = decide(table, body, headers, size, sessions, tenant)
            span.set("ccr.scenario", decision.scenario)
    except RoutingError as exc:  # count_tokens too: it is refused whatever /v1/messages refuses
        asked_stream = body.get("stream") is True
        return Answer(exc.status, exc.message, "ccr_no_route", requested_model=model, stream=asked_stream)
    if decision.body is not body:  # the router changed it (subagent tag stripped from the system prompt)
        request = read_request(api, decision.body)
    stream = request.stream
    if kind == COUNT_TOKENS:
        if isinstance(request, ResponsesRequest):  # no provider counts a Responses body yet
            return _counted_responses(request, decision)
        provider = decision.route.provider
        counter = count_tokens_translator(provider.api) if provider.forward_count_tokens else None
        if counter is None or provider.unavailable:
            return _counted(decision.body, decision)
        return forward(request, decision, decision.route, counter, stream=False)
    if len(decision.chain) > 1:
        for route in decision.chain:
            if translator_class(api, route.provider.api) is None:
                message = f"fallback provider {route.provider.name!r} cannot serve {api}-format requests"
                return Answer(400, message, "ccr_no_translator", decision=decision)
        changed = decision.body is not body or rewritten
        context = response_context(request, decision.tokens)
        return Chain(decision, orjson.dumps(decision.body) if changed else None, stream, context)
    provider_api = decision.route.provider.api
    with tracing.span("ccr.translate", attributes={"ccr.from": api.value, "ccr.to": provider_api.value}):
        return forward(request, decision, decision.route, translator_for(api, provider_api), stream)


def forward(
    request: ClientRequest, decision: Decision, route: ModelRoute, translator: Translator | None, stream: bool
) -> Forward | Answer:
    """The decided request translated for ``route``'s provider, or why it cannot be."""
    upstream = translated(request, route, translator, stream)
    if isinstance(upstream, Answer):
        return replace(upstream, decision=decision)
    assert translator is not None
    # The translator's own guess of the input tokens when it made one (what the ext_proc path shows).
    estimate = (
        translator.estimate if isinstance(translator, ResponsePhases) and translator.estimate else decision.tokens
    )
    context = replace(response_context(request, estimate), stream=stream, model=route.target.model)
    return Forward(decision, route, upstream, translator, stream, context)


def translated(
    request: ClientRequest, route: ModelRoute, translator: Translator | None, stream: bool
) -> UpstreamRequest | Answer:
    """``request`` as ``route``'s provider takes it: for one provider here, for each attempt of a
    chain in extproc.attempt."""
    provider = route.provider
    if provider.unavailable:
        return Answer(503, provider.unavailable, "ccr_provider_unavailable")
    if translator is None:
        message = (
            f"model {route.model!r} is served by a {provider.api}-format provider, and requests in "
            f"{request.api} format cannot be translated to it"
        )
        return Answer(400, message, "ccr_no_translator")
    try:
        return translator.request(request, replace(route.target, stream=stream))
    except ClientRequestError as exc:
        return Answer(exc.status, exc.message, "ccr_bad_request")


def response_context(request: ClientRequest, estimate: int) -> ResponseContext:
    """What any provider's translator needs to read the answer to ``request`` (model set later)."""
    if isinstance(request, OpenAIRequest):
        return ResponseContext("", request.stream, estimate, include_usage=request.include_usage, turn=request.turns)
    if isinstance(request, ResponsesRequest):
        from extproc.translate.responses_anthropic import custom_tools  # loaded by Responses traffic only

        # The freeform tools: a translator primed with this context writes their calls as
        # custom_tool_call items, as the one that translated the request does.
        return ResponseContext("", request.stream, estimate, turn=request.turns, custom_tools=custom_tools(request))
    shown = request.thinking is None or request.thinking.shown
    return ResponseContext("", request.stream, estimate, show_thinking=shown, turn=request.turns)


def undecodable_body(encoding: str) -> str:
    """Envoy's decompressor gave up on the body (it passes on what it decoded, often nothing)."""
    return (
        f"request body could not be decoded: it is labelled Content-Encoding {encoding!r} "
        f"but is not valid {encoding} data"
    )


def _not_json(raw: bytes, headers: Mapping[str, str], error: orjson.JSONDecodeError) -> Answer:
    """Why the body is not JSON, said plainly: orjson reports invalid UTF-8 as "surrogates not
    allowed ... column 1", wherever the bad byte is; a body Envoy could not decompress is named."""
    encoding = headers.get(ENCODING_HEADER)
    if encoding:
        return Answer(400, undecodable_body(encoding), "ccr_bad_encoding")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"request body is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} ({exc.reason})"
        return Answer(400, message, "ccr_bad_utf8")
    return Answer(400, f"request body is not valid JSON: {error}", "ccr_bad_json")


def _counted(body: dict[str, Any], decision: Decision | None = None) -> Answer:
    """count_tokens answered locally (no round trip): Claude Code's context meter and auto-compact
    read it, so it is counted (extproc.tokens.count_for_client), not guessed from the size."""
    return Answer(200, body=orjson.dumps({"input_tokens": count_for_client(body)}), decision=decision)


def _counted_responses(request: ResponsesRequest, decision: Decision) -> Answer:
    """POST /v1/responses/input_tokens, counted here: the Anthropic body the request becomes
    (the hub format every provider is reached through), counted as count_tokens is."""
    from extproc.translate.responses_anthropic import anthropic_body  # loaded by Responses traffic only

    try:  # built-in tools are counted out (a Responses provider would take them; no other would)
        body = anthropic_body(replace(request, hosted_tools=(), hosted_choice=None), decision.route.target)
    except ClientRequestError as exc:
        return Answer(exc.status, exc.message, "ccr_bad_request", decision=decision)
    count = count_for_client(body)
    return Answer(200, body=orjson.dumps({"object": "response.input_tokens", "input_tokens": count}), decision=decision)
