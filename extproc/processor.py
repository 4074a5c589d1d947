"""Per-request ext_proc state machine: Envoy's ProcessingRequests in, ProcessingResponses out.

Sans-IO: the gRPC server feeds it messages and writes back what it returns. One instance per
HTTP request (one ext_proc stream). It holds the request's endpoint, route and translator.

Phases (static processing mode, see control_plane.resources.extproc_filter):
  request headers  -> pick the endpoint from method + path; answer local endpoints directly
  request body     -> parse once, route by model, translate, rewrite path/headers/body, pick cluster
  response headers -> passthrough: nothing; translated: ask for the body (buffered or streamed)
  response body    -> translated chunk(s) back to the client's format
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest, ProcessingResponse

from ccr.v1.contract import (
    CHAIN_METADATA_KEY,
    CLUSTER_HEADER,
    INTERNAL_HEADER_PREFIX,
    METADATA_NAMESPACE,
    PROVIDER_RESPONSE_HEADER,
    ROUTE_HEADER,
    encode_chain,
)
from extproc import mutations as m
from extproc.metrics import RESPONSES, ROUTED
from extproc.plan import Answer, Chain, Forward, plan
from extproc.router import Decision
from extproc.routing_table import ModelRoute, RoutingTable
from extproc.tokens import SessionUsage
from extproc.translate.base import Api, Primable, ResponseContext, Translator, UpstreamProtocolError, Usage
from extproc.translate.registry import translator_for

log = logging.getLogger("ccr.extproc")

# Credentials the client sent for the gateway; never forwarded to a provider.
_CLIENT_CREDENTIALS = ("authorization", "x-api-key", "x-goog-api-key")
# Headers that only mean something to one API; dropped when the provider speaks another.
_API_HEADER_PREFIXES = {Api.ANTHROPIC: ("anthropic-",), Api.OPENAI: ("openai-",), Api.GEMINI: ("x-goog-",)}


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: Api | None  # None: decided from the request's headers (GET /v1/models)
    kind: str  # "generate" | "count_tokens" | "models"


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/messages"): Endpoint(Api.ANTHROPIC, "generate"),
    ("POST", "/v1/chat/completions"): Endpoint(Api.OPENAI, "generate"),
    ("POST", "/chat/completions"): Endpoint(Api.OPENAI, "generate"),
    ("POST", "/v1/messages/count_tokens"): Endpoint(Api.ANTHROPIC, "count_tokens"),
    ("GET", "/v1/models"): Endpoint(None, "models"),
    ("GET", "/models"): Endpoint(Api.OPENAI, "models"),
}


class GatewayState:
    """What every request reads: the routing table currently in force (None until the first policy)."""

    def __init__(self) -> None:
        self.table: RoutingTable | None = None
        self.sessions = SessionUsage()  # last real input tokens per session (long-context routing)


def _guess_api(path: str, headers: Mapping[str, str]) -> Api:
    if "chat/completions" in path or ("anthropic-version" not in headers and "authorization" in headers):
        return Api.OPENAI
    return Api.ANTHROPIC


class RequestProcessor:
    __slots__ = ("api", "context", "decision", "endpoint", "headers", "state", "status", "stream", "translator")

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.api = Api.ANTHROPIC
        self.endpoint: Endpoint | None = None
        self.headers: dict[str, str] = {}
        self.decision: Decision | None = None
        self.translator: Translator | None = None
        self.context: ResponseContext | None = None  # a chain's, for the translator of whoever answers
        self.stream = False
        self.status = 0

    def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._request_headers(request.request_headers)
            if phase == "request_body":
                return self._request_body(request.request_body.body)
            if phase == "response_headers":
                return self._response_headers(request.response_headers)
            if phase == "response_body":
                return self._response_body(request.response_body.body, request.response_body.end_of_stream)
        except Exception:  # a bug: fail closed, in the client's format, and say so in the log
            log.exception("ext_proc failed in phase %s", phase)
            return m.immediate_error(self.api, 500, "internal gateway error", "ccr_internal_error")
        return _continue(phase)

    # --- request --------------------------------------------------------------------------

    def _request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        headers = self.headers
        for header in message.headers.headers:
            headers[header.key] = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        method = headers.get(":method", "")
        path = headers.get(":path", "/").split("?", 1)[0]
        endpoint = ENDPOINTS.get((method, path))
        self.api = endpoint.api if endpoint and endpoint.api else _guess_api(path, headers)
        if endpoint is None:
            return m.immediate_error(self.api, 404, f"no such endpoint: {method} {path}", "ccr_unknown_endpoint")
        self.endpoint = endpoint
        table = self.state.table
        if table is None:
            return m.immediate_error(
                self.api, 503, "the gateway has no routing policy yet; retry shortly", "ccr_no_policy"
            )
        if endpoint.kind == "models":
            return m.immediate(200, _models_body(self.api, table))
        if message.end_of_stream:
            return m.immediate_error(self.api, 400, "request body is required", "ccr_empty_body")
        return m.CONTINUE_REQUEST_HEADERS

    def _request_body(self, raw: bytes) -> ProcessingResponse:
        if self.endpoint is None:  # headers were answered already; nothing to plan
            return m.CONTINUE_REQUEST_BODY
        outcome = plan(self.state.table, self.api, self.endpoint.kind, self.headers, raw, self.state.sessions)
        decision = outcome.decision
        if decision is not None:
            self.decision = decision
            self.stream = decision.body.get("stream") is True
            route = decision.route
            ROUTED.labels(self.api.value, decision.scenario, route.provider.name, route.model).inc()
        if isinstance(outcome, Answer):
            if outcome.is_error:
                return m.immediate_error(self.api, outcome.status, outcome.message, outcome.details)
            return m.immediate(outcome.status, outcome.body)
        if isinstance(outcome, Chain):
            self.context = outcome.context
            return self._forward_chain(outcome)
        return self._forward(outcome)

    def _forward(self, outcome: Forward) -> ProcessingResponse:
        """One provider: the request translated, and Envoy sent to that provider's cluster."""
        route, upstream, provider = outcome.route, outcome.upstream, outcome.route.provider
        self.translator = outcome.translator
        set_headers = [
            (":path", upstream.path),
            ("content-length", str(len(upstream.body))),
            ("content-type", "application/json"),
            (CLUSTER_HEADER, provider.cluster),
            *provider.headers,
            *upstream.headers,
        ]
        return m.request_body_response(
            upstream.body, set_headers, self._removed(set_headers, provider.api), self._metadata(route)
        )

    def _forward_chain(self, outcome: Chain) -> ProcessingResponse:
        """A fallback chain: Envoy retries across the chain's providers and the upstream ext_proc
        (extproc.attempt) rewrites each attempt, so the client's body goes on untranslated."""
        decision = outcome.decision
        set_headers = [(CLUSTER_HEADER, decision.chain_cluster or "")]
        if outcome.body is not None:
            set_headers.append(("content-length", str(len(outcome.body))))
        # Credentials are dropped now; provider headers are set per attempt.
        remove = [name for name in self.headers if name in _CLIENT_CREDENTIALS or _internal(name, set_headers)]
        # The chain travels as dynamic metadata, which Envoy forwards to every attempt's upstream
        # ext_proc: a header would be mutated in place by the first attempt (retries share it).
        metadata = self._metadata(decision.route)
        metadata[METADATA_NAMESPACE][CHAIN_METADATA_KEY] = encode_chain(
            self.api.value, [(r.provider.name, r.model) for r in decision.chain]
        )
        return m.request_body_response(outcome.body, set_headers, remove, metadata)

    def _removed(self, set_headers: list[tuple[str, str]], provider_api: Api) -> list[str]:
        overwritten = {name for name, _ in set_headers}
        return [
            name
            for name in self.headers
            if name not in overwritten and strip_before_egress(name, self.api, provider_api)
        ]

    def _metadata(self, route: ModelRoute) -> dict[str, dict[str, str]]:
        """Routing labels for the access logs; the usage log (extproc.usage_log) reads them too."""
        decision = self.decision
        labels = {
            "client_api": self.api.value,
            "scenario": decision.scenario if decision is not None else "model",
            "provider": route.provider.name,
            "model": route.target.model,
        }
        if decision is not None and decision.session:
            labels["session"] = decision.session
        return {METADATA_NAMESPACE: labels}

    # --- response -------------------------------------------------------------------------

    def _response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        decision = self.decision
        if decision is None:
            return m.CONTINUE_RESPONSE_HEADERS
        headers = {h.key: (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in message.headers.headers}
        self.status = int(headers.get(":status", "0") or 0)
        route, remove = decision.route, ["content-length"]
        if len(decision.chain) > 1:
            # Whichever provider of the chain answered (Envoy copied it from the endpoint's metadata).
            answered = headers.get(PROVIDER_RESPONSE_HEADER)
            route = next((r for r in decision.chain if r.provider.name == answered), route)
            self.translator = self._primed_translator(route)
            remove.append(PROVIDER_RESPONSE_HEADER)
        attempts = headers.get("x-envoy-attempt-count", "1")
        RESPONSES.labels(route.provider.name, f"{self.status // 100}xx", attempts).inc()
        route_header = (
            ROUTE_HEADER,
            f"scenario={decision.scenario}; provider={route.provider.name}; model={route.model}; attempts={attempts}",
        )
        translator = self.translator
        if translator is None or not translator.rewrites_response or message.end_of_stream:
            return m.response_headers_response([route_header], remove=remove[1:])
        ok = 200 <= self.status < 300
        set_headers = [route_header, *(translator.response_headers(self.status, headers) if ok else ())]
        mode = m.STREAMED if ok and self.stream else m.BUFFERED
        return m.response_headers_response(set_headers, remove=remove, body_mode=mode)

    def _record_usage(self, usage: Usage) -> None:
        """The next turn's long-context check reads it at once; ccr_tokens_total is counted from
        Envoy's usage log (extproc.usage_log), for every response, so not here."""
        if self.decision is not None:
            self.state.sessions.record(self.decision.session, usage.prompt_tokens)

    def _primed_translator(self, route: ModelRoute) -> Translator | None:
        """A translator for the provider of the chain that answered, primed with the plan's response
        context (the request is never translated again here: each attempt was, upstream). An
        attempt the upstream processor refused answered in the client's format; its error is read
        like any provider's and reaches the client with the same status and message."""
        translator = translator_for(self.api, route.provider.api)
        if translator is not None and translator.rewrites_response and self.context is not None:
            cast(Primable, translator).prime(replace(self.context, model=route.target.model))
        return translator

    def _response_body(self, chunk: bytes, end_of_stream: bool) -> ProcessingResponse:
        translator = self.translator
        if translator is None:
            return m.CONTINUE_RESPONSE_BODY
        if not 200 <= self.status < 300:
            translated = translator.response_error(self.status, chunk)
            return m.response_body_response(translated.body)
        try:
            out = translator.response_body(chunk, end_of_stream)
            if out.usage is not None:
                self._record_usage(out.usage)
        except UpstreamProtocolError as exc:
            provider = self.decision.route.provider.name if self.decision else "?"
            log.warning("provider %s broke its API: %s", provider, exc)
            return m.immediate_error(self.api, 502, f"the provider sent an invalid response: {exc}", "ccr_bad_upstream")
        return m.response_body_response(out.body)


def strip_before_egress(name: str, client: Api, provider: Api) -> bool:
    if name.startswith(":") or name == "content-length":
        return False
    if name in _CLIENT_CREDENTIALS or name.startswith(INTERNAL_HEADER_PREFIX):
        return True
    return client is not provider and name.startswith(_API_HEADER_PREFIXES[client])


def _internal(name: str, set_headers: list[tuple[str, str]]) -> bool:
    return name.startswith(INTERNAL_HEADER_PREFIX) and name not in {n for n, _ in set_headers}


def _continue(phase: str | None) -> ProcessingResponse:
    return {
        "request_headers": m.CONTINUE_REQUEST_HEADERS,
        "request_body": m.CONTINUE_REQUEST_BODY,
        "response_headers": m.CONTINUE_RESPONSE_HEADERS,
        "response_body": m.CONTINUE_RESPONSE_BODY,
    }.get(phase or "", m.CONTINUE_REQUEST_HEADERS)


def _models_body(api: Api, table: RoutingTable) -> bytes:
    names = table.model_names()
    if api is Api.OPENAI:
        data: Any = [
            {"id": n, "object": "model", "created": 0, "owned_by": table.models[n].provider.name} for n in names
        ]
        return orjson.dumps({"object": "list", "data": data})
    data = [{"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"} for n in names]
    return orjson.dumps(
        {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )
