"""Per-attempt rewrite for fallback chains (the ext_proc in a chain cluster's upstream filters).

The downstream processor decided the chain and left the client's body untouched; Envoy's router
then picks a provider per attempt (priority = position in the chain) and this processor rewrites
that attempt for the provider the load balancer chose: path, auth, model and, when the provider
speaks another API, the whole body. It runs once per attempt, so a retry on the next provider
gets a body in that provider's format.

Chain header (set by the downstream processor, removed here before egress):
    x-ccr-chain: <client api>;<provider>=<model name>;<provider>=<model name>...
"""

from __future__ import annotations

import logging
from dataclasses import replace

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest, ProcessingResponse
from google.protobuf.struct_pb2 import Struct

from control_plane.chains import CHAIN_HEADER, decode_chain
from control_plane.resources import METADATA_NAMESPACE
from extproc import mutations as m
from extproc.processor import GatewayState, strip_before_egress
from extproc.routing import ModelRoute
from extproc.translate.base import Api, ClientRequestError
from extproc.translate.registry import translator_for

log = logging.getLogger("ccr.extproc.attempt")

HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"


def attempt_provider(request: ProcessingRequest) -> str | None:
    """The provider of the endpoint Envoy picked, from the endpoint metadata attribute."""
    for attributes in request.attributes.values():
        value = attributes.fields.get(HOST_METADATA_ATTRIBUTE)
        if value is None:
            continue
        metadata = value.struct_value
        filter_metadata = metadata.fields.get("filter_metadata") or metadata.fields.get("filterMetadata")
        if filter_metadata is None:
            continue
        ours = filter_metadata.struct_value.fields.get(METADATA_NAMESPACE)
        if ours is not None:
            provider = ours.struct_value.fields.get("provider")
            if provider is not None:
                return provider.string_value
    return None


class AttemptProcessor:
    __slots__ = ("client_api", "headers", "provider", "route", "state")

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.headers: dict[str, str] = {}
        self.client_api = Api.ANTHROPIC
        self.route: ModelRoute | None = None
        self.provider: str | None = None

    def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._headers(request)
            if phase == "request_body":
                return self._body(request.request_body.body)
        except Exception:
            log.exception("fallback attempt rewrite failed in phase %s", phase)
            return m.immediate_error(self.client_api, 500, "internal gateway error", "ccr_internal_error")
        return m.CONTINUE_REQUEST_BODY if phase == "request_body" else m.CONTINUE_REQUEST_HEADERS

    def _headers(self, request: ProcessingRequest) -> ProcessingResponse:
        message: HttpHeaders = request.request_headers
        for header in message.headers.headers:
            self.headers[header.key] = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        chain = self.headers.get(CHAIN_HEADER)
        provider = attempt_provider(request)
        table = self.state.table
        if chain is None or provider is None or table is None:
            return m.immediate_error(self.client_api, 503, "fallback attempt without a chain decision", "ccr_no_chain")
        client_api, models = decode_chain(chain)
        self.client_api = Api(client_api)
        model = models.get(provider)
        route = table.route_for(provider, model) if model is not None else None
        if route is None:
            return m.immediate_error(
                self.client_api, 503, f"provider {provider!r} is not part of this chain", "ccr_bad_chain"
            )
        if route.provider.unavailable:
            return m.immediate_error(self.client_api, 503, route.provider.unavailable, "ccr_provider_unavailable")
        self.route = route
        self.provider = provider
        return m.CONTINUE_REQUEST_HEADERS

    def _body(self, raw: bytes) -> ProcessingResponse:
        route = self.route
        assert route is not None
        body = orjson.loads(raw)  # the downstream processor already validated it
        translator = translator_for(self.client_api, route.provider.api)
        if translator is None:
            return m.immediate_error(self.client_api, 400, "no translation to this provider", "ccr_no_translator")
        try:
            upstream = translator.request(body, replace(route.target, stream=body.get("stream") is True))
        except ClientRequestError as exc:
            return m.immediate_error(self.client_api, exc.status, exc.message, "ccr_bad_request")
        set_headers = [
            (":path", upstream.path),
            ("content-length", str(len(upstream.body))),
            ("content-type", "application/json"),
            *route.provider.headers,
            *upstream.headers,
        ]
        overwritten = {name for name, _ in set_headers}
        remove = [
            name
            for name in self.headers
            if name not in overwritten and strip_before_egress(name, self.client_api, route.provider.api)
        ]
        return m.request_body_response(upstream.body, set_headers, remove, None, clear_route_cache=False)


def attempt_metadata_struct(provider: str) -> Struct:
    """Test helper shape: the attribute Envoy sends for an endpoint with ccr.provider metadata."""
    struct = Struct()
    struct.update({HOST_METADATA_ATTRIBUTE: {"filter_metadata": {METADATA_NAMESPACE: {"provider": provider}}}})
    return struct
