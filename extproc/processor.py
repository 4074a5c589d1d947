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
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, cast

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest, ProcessingResponse

from ccr.v1.contract import (
    HOP_STREAM_KEY,
    METADATA_NAMESPACE,
    PROVIDER_RESPONSE_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_HEADER,
    USAGE_NAMESPACE,
)
from extproc import mutations as m
from extproc.auth.admission import Charge
from extproc.auth.keys import VirtualKey
from extproc.auth.limits import Admission
from extproc.hop import HopContext, Keep
from extproc.metrics import RESPONSES, ROUTED, labelled
from extproc.plan import Answer, Chain, Forward, plan
from extproc.request_steps import (
    Endpoint,
    Reply,
    answer_reply,
    batch_rewrite,
    chain_rewrite,
    endpoint_step,
    error_reply,
    forward_rewrite,
    mcp_step,
    request_labels,
    route_header,
)
from extproc.responses_state import completed_response, response_of
from extproc.router import Decision
from extproc.routing_table import ModelRoute
from extproc.state import GatewayState
from extproc.translate.base import Api, Primable, ResponseContext, Translator, UpstreamProtocolError, Usage
from extproc.translate.registry import translator_for

log = logging.getLogger("ccr.extproc")

STORED_ON_HOP_ONLY = (
    "stored responses are served on the decision hop only (listener.decision: hop); "
    "this gateway decides on ext_proc: no response can be read or deleted here"
)


class RequestProcessor:
    __slots__ = (
        "answer_headers",
        "api",
        "context",
        "decision",
        "endpoint",
        "headers",
        "hop",
        "key",
        "state",
        "status",
        "stream",
        "translator",
    )

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
        self.hop: HopContext | None = None  # a translated stream the decision hop forwarded
        self.key: VirtualKey | None = None  # the virtual key the client presented (None: anonymous)
        self.answer_headers: tuple[tuple[str, str], ...] = ()  # the key's rate-limit headers

    def handle(self, request: ProcessingRequest) -> ProcessingResponse | Awaitable[ProcessingResponse]:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._request_headers(request.request_headers)
            if phase == "request_body":
                return self._request_body(request.request_body.body)
            if phase == "response_headers":
                if self.endpoint is None:  # no request phase: a stream the decision hop forwarded
                    return self._hop_stream_headers(request)
                return self._response_headers(request.response_headers)
            if phase == "response_body":
                return self._response_body(request.response_body.body, request.response_body.end_of_stream)
        except Exception:  # a bug: fail closed, in the client's format, and say so in the log
            log.exception("request %s: ext_proc failed in phase %s", self.request_id, phase)
            labels = request_labels(self.api, self.endpoint.path if self.endpoint else "", self.decision)
            return m.reply(error_reply(self.api, 500, "internal gateway error", "ccr_internal_error", labels=labels))
        return _continue(phase)

    async def awaited(self, pending: Awaitable[ProcessingResponse]) -> ProcessingResponse:
        """A response ``handle`` had to wait for (the limits in Redis), failing closed as it does."""
        try:
            return await pending
        except Exception:
            log.exception("request %s: ext_proc failed admitting the request", self.request_id)
            labels = request_labels(self.api, self.endpoint.path if self.endpoint else "", self.decision)
            return m.reply(error_reply(self.api, 500, "internal gateway error", "ccr_internal_error", labels=labels))

    @property
    def request_id(self) -> str:
        """Envoy's id of this request (the access log's request_id), for log lines about it."""
        return self.headers.get(REQUEST_ID_HEADER, "-")

    # --- request --------------------------------------------------------------------------

    def _request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        headers = self.headers
        for header in message.headers.headers:
            headers[header.key] = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        self.api, step = endpoint_step(
            self.state.table,
            headers.get(":method", ""),
            headers.get(":path", "/"),
            headers,
            has_body=not message.end_of_stream,
        )
        if isinstance(step, Reply):
            if step.public:  # the MCP endpoint's RFC 9728 metadata: for anyone
                return m.reply(step)
            required = self.state.table is not None and self.state.table.auth_required
            path = headers.get(":path", "/").partition("?")[0]
            return m.reply(self.state.auth.gate(self.api, path, headers, required, step))
        assert self.state.table is not None  # endpoint_step answered 503 otherwise
        table = self.state.table
        key = self.state.auth.authenticate(
            self.api, step.path, headers, table.auth_required, table.cert_identities, table.batch_workers
        )
        if step.kind == "mcp":  # to the MCP service on its headers: its body and its stream pass by
            assert table.mcp is not None  # endpoint_step names the MCP endpoint only then
            answer = mcp_step(table.mcp, step, headers, key)
            if isinstance(answer, Reply):
                return m.reply(answer)
            metadata = {METADATA_NAMESPACE: dict(answer.labels)}
            return m.request_headers_forward(answer.set_headers, answer.remove_headers, metadata)
        if isinstance(key, Reply):
            return m.reply(key)
        if step.kind == "batch":  # to the batch API on its headers: its body and answer pass by
            rewrite = batch_rewrite(self.api, step, headers, key)
            metadata = {METADATA_NAMESPACE: dict(rewrite.labels)}
            return m.request_headers_forward(rewrite.set_headers, rewrite.remove_headers, metadata)
        if step.kind == "stored":  # read from the store by the decision hop only (extproc.hop)
            labels = request_labels(self.api, step.path, key=key)
            return m.reply(
                error_reply(self.api, 501, STORED_ON_HOP_ONLY, "ccr_stored_responses_hop_only", labels=labels)
            )
        self.key = key
        self.endpoint = step
        return m.CONTINUE_REQUEST_HEADERS

    def _request_body(self, raw: bytes) -> ProcessingResponse | Awaitable[ProcessingResponse]:
        """The rewrite; awaitable when a keyed request's limits are in Redis (``Process`` awaits it)."""
        if self.endpoint is None:  # headers were answered already; nothing to plan
            return m.CONTINUE_REQUEST_BODY
        tenant = self.key.tenant if self.key is not None else None
        endpoint = self.endpoint
        outcome = plan(
            self.state.table,
            self.api,
            endpoint.kind,
            self.headers,
            raw,
            self.state.sessions,
            tenant,
            endpoint.vertex_model,
            endpoint.bedrock,
        )
        decision = outcome.decision
        if decision is not None:
            self.decision = decision
            self.stream = decision.body.get("stream") is True
            route = decision.route
            labelled(ROUTED, self.api.value, decision.scenario, route.provider.name, route.model).inc()
        if isinstance(outcome, Answer):
            return m.reply(answer_reply(self.api, self.endpoint.path, outcome, self.key))
        if self.key is None:
            return self._rewrite(outcome)
        auth = self.state.auth
        rules = self.state.table.tenant_rules.get(self.key.tenant) if self.state.table is not None else None
        charge = auth.charge(self.api, self.endpoint, self.key, outcome, self.headers, rules)
        if charge is None:
            return self._rewrite(outcome)
        if isinstance(charge, Reply):
            self.decision = None  # no response will come to read
            return m.reply(charge)
        if auth.shared:
            return self._admitted_later(outcome, charge)
        return self._admitted(outcome, charge, auth.admit_local(charge))

    async def _admitted_later(self, outcome: Forward | Chain, charge: Charge) -> ProcessingResponse:
        return self._admitted(outcome, charge, await self.state.auth.admit_shared(charge))

    def _admitted(self, outcome: Forward | Chain, charge: Charge, admission: Admission) -> ProcessingResponse:
        assert self.endpoint is not None
        verdict = self.state.auth.verdict(self.api, self.endpoint, outcome, charge, admission)
        if isinstance(verdict, Reply):
            self.decision = None
            return m.reply(verdict)
        self.answer_headers = verdict
        return self._rewrite(outcome)

    def _rewrite(self, outcome: Forward | Chain) -> ProcessingResponse:
        assert self.endpoint is not None
        if isinstance(outcome, Chain):
            self.context = outcome.context
            rewrite = chain_rewrite(self.api, self.endpoint, outcome, self.headers, self.key)
        else:
            self.translator = outcome.translator
            rewrite = forward_rewrite(self.api, self.endpoint, outcome, self.headers, self.key)
        metadata = {METADATA_NAMESPACE: dict(rewrite.labels)}
        return m.request_body_response(rewrite.body, rewrite.set_headers, rewrite.remove_headers, metadata)

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
        labelled(RESPONSES, route.provider.name, f"{self.status // 100}xx", attempts).inc()
        route_set = (ROUTE_HEADER, route_header(decision, route, attempts))
        translator = self.translator
        if translator is None or not translator.rewrites_response or message.end_of_stream:
            return m.response_headers_response([route_set, *self.answer_headers], remove=remove[1:])
        ok = 200 <= self.status < 300
        set_headers = [
            route_set,
            *self.answer_headers,
            *(translator.response_headers(self.status, headers) if ok else ()),
        ]
        mode = m.STREAMED if ok and self.stream else m.BUFFERED
        return m.response_headers_response(set_headers, remove=remove, body_mode=mode)

    def _hop_stream_headers(self, request: ProcessingRequest) -> ProcessingResponse:
        """A request the decision hop forwarded whose route runs ext_proc on the response only (a
        translated stream, a fallback chain): the translator comes primed from the hop's context,
        in the dynamic metadata; for a chain, the one of the provider that answered."""
        labels = request.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
        field = labels.fields.get(HOP_STREAM_KEY) if labels is not None else None
        if field is None:
            return m.CONTINUE_RESPONSE_HEADERS
        message = request.response_headers
        headers = {h.key: (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in message.headers.headers}
        hop = HopContext.decode(field.string_value).answered_by(headers.get(PROVIDER_RESPONSE_HEADER))
        self.hop, self.api, self.stream = hop, hop.client, hop.context.stream
        self.translator = hop.translator()
        self.status = int(headers.get(":status", "0") or 0)
        attempts = headers.get("x-envoy-attempt-count", "1")
        labelled(RESPONSES, hop.provider_name, f"{self.status // 100}xx", attempts).inc()
        set_headers: list[tuple[str, str]] = []
        remove = ["content-length"]
        if hop.chain:  # the provider is known only now: the Lua filter could not name it
            scenario = labels.fields["scenario"].string_value if "scenario" in labels.fields else "model"
            set_headers.append((ROUTE_HEADER, f"{hop.route_header(scenario)}; attempts={attempts}"))
            remove.append(PROVIDER_RESPONSE_HEADER)
        translator = self.translator
        if translator is None or not translator.rewrites_response or message.end_of_stream:
            return m.response_headers_response(set_headers, remove=remove[1:])
        ok = 200 <= self.status < 300
        set_headers += translator.response_headers(self.status, headers) if ok else ()
        return m.response_headers_response(set_headers, remove, m.STREAMED if ok and self.stream else m.BUFFERED)

    def _record_usage(self, usage: Usage) -> None:
        """The next turn's long-context check reads it at once; ccr_tokens_total is counted from
        Envoy's usage log (extproc.usage_log), for every response, so not here."""
        if self.decision is not None:
            self.state.sessions.record(self.decision.session, usage.prompt_tokens)
        elif self.hop is not None:
            self.state.sessions.record(self.hop.session or None, usage.prompt_tokens)

    def _keep(self, keep: Keep, body: bytes) -> None:
        """A stored response's answer (a translated stream: its response.completed event; a
        chain's whole answer): saved in the background, the client's bytes untouched. On the
        decision hop's requests only: the ext_proc decision path keeps no responses."""
        saver = self.state.saver
        response = _kept(body, self.stream) if saver is not None else None
        if saver is not None and response is not None:
            saver.answer(keep.answer(keep.stamp(response)))
            self.hop = replace(self.hop, keep=None) if self.hop is not None else None  # once

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
        usage = None
        try:
            out = translator.response_body(chunk, end_of_stream)
            if out.usage is not None:
                self._record_usage(out.usage)
                if translator.provider_api is Api.BEDROCK:
                    usage = _usage_metadata(out.usage)
            if self.hop is not None and self.hop.keep is not None and out.body:
                self._keep(self.hop.keep, out.body)
        except UpstreamProtocolError as exc:
            provider = (
                self.decision.route.provider.name if self.decision else self.hop.provider_name if self.hop else "?"
            )
            log.warning("request %s: provider %s broke its API: %s", self.request_id, provider, exc)
            return m.immediate_error(self.api, 502, f"the provider sent an invalid response: {exc}", "ccr_bad_upstream")
        return m.response_body_response(out.body, usage)


def _usage_metadata(usage: Usage) -> dict[str, dict[str, int]]:
    """A Bedrock answer's usage as Envoy's usage filters would have copied it from the provider's
    bytes (control_plane.resources.usage_capture), for the usage log to read: they cannot read
    Bedrock's streams (AWS event-stream frames, each event's JSON base64-encoded), so the
    translator's reading of them is handed to Envoy instead, once, at the end of the stream."""
    return {
        USAGE_NAMESPACE: {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        }
    }


def _kept(body: bytes, stream: bool) -> dict[str, Any] | None:
    return completed_response(body) if stream else response_of(body)


def _continue(phase: str | None) -> ProcessingResponse:
    return {
        "request_headers": m.CONTINUE_REQUEST_HEADERS,
        "request_body": m.CONTINUE_REQUEST_BODY,
        "response_headers": m.CONTINUE_RESPONSE_HEADERS,
        "response_body": m.CONTINUE_RESPONSE_BODY,
    }.get(phase or "", m.CONTINUE_REQUEST_HEADERS)
