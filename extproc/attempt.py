"""Per-attempt rewrite for fallback chains (the ext_proc in a chain cluster's upstream filters).

The downstream processor decided the chain and left the client's body untouched; Envoy's router
then picks a provider per attempt (priority = position in the chain) and this processor rewrites
that attempt for the provider the load balancer chose: path, auth, model and, when the provider
speaks another API, the whole body. It runs once per attempt, so a retry on the next provider
gets a body in that provider's format.

The chain comes as dynamic metadata set by the downstream processor and forwarded by Envoy to
every attempt (a request header would not do: attempts share one header map, mutated in place):
    ccr.chain = "<client api>;<provider>=<model name>;<provider>=<model name>..."
Provider credentials a previous attempt set are removed like the client's own.
"""

from __future__ import annotations

import logging

import orjson
from envoy.config.core.v3.base_pb2 import Metadata
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest, ProcessingResponse
from google.protobuf import json_format, text_format
from google.protobuf.struct_pb2 import Struct

from ccr.v1.contract import ATTEMPT_PROVIDER_HEADER, CHAIN_METADATA_KEY, METADATA_NAMESPACE, decode_chain
from extproc import mutations as m
from extproc.plan import Answer, translated
from extproc.request_steps import strip_before_egress, with_client_betas
from extproc.routing_table import ModelRoute
from extproc.state import GatewayState
from extproc.translate.base import Api
from extproc.translate.client_request import read_request
from extproc.translate.registry import translator_for

log = logging.getLogger("ccr.extproc.attempt")

HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"


def attempt_provider(request: ProcessingRequest) -> str | None:
    """The provider of the endpoint Envoy picked. Envoy sends the endpoint's metadata attribute as
    the text form of an envoy.config.core.v3.Metadata message."""
    for attributes in request.attributes.values():
        value = attributes.fields.get(HOST_METADATA_ATTRIBUTE)
        if value is None:
            continue
        metadata = Metadata()
        try:
            if value.HasField("struct_value"):
                json_format.ParseDict(json_format.MessageToDict(value.struct_value), metadata)
            else:
                text_format.Parse(value.string_value, metadata)
        except (text_format.ParseError, json_format.ParseError):
            log.warning("unreadable upstream host metadata: %r", value)
            return None
        ours = metadata.filter_metadata.get(METADATA_NAMESPACE)
        if ours is not None and "provider" in ours.fields:
            return ours.fields["provider"].string_value
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
        ours = request.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
        chain = ours.fields[CHAIN_METADATA_KEY].string_value if ours and CHAIN_METADATA_KEY in ours.fields else None
        provider = attempt_provider(request)
        table = self.state.table
        if chain is None or provider is None or table is None:
            # Header names only: on a retry the map holds the provider key the last attempt set.
            log.warning(
                "attempt without chain=%r provider=%r table=%s headers=%s",
                chain,
                provider,
                table is not None,
                sorted(self.headers),
            )
            return m.immediate_error(self.client_api, 503, "fallback attempt without a chain decision", "ccr_no_chain")
        client_api, models = decode_chain(chain)
        self.client_api = Api(client_api)
        model = models.get(provider)
        route = table.target(provider, model) if model is not None else None
        if route is None:
            return m.immediate_error(
                self.client_api, 503, f"provider {provider!r} is not part of this chain", "ccr_bad_chain"
            )
        if route.provider.unavailable:  # answered now, before Envoy connects for this attempt
            return m.immediate_error(self.client_api, 503, route.provider.unavailable, "ccr_provider_unavailable")
        self.route = route
        self.provider = provider
        return m.CONTINUE_REQUEST_HEADERS

    def _body(self, raw: bytes) -> ProcessingResponse:
        route = self.route
        assert route is not None
        # The downstream processor checked this body (extproc.plan): read, not checked again.
        request = read_request(self.client_api, orjson.loads(raw))
        translator = translator_for(self.client_api, route.provider.api)
        upstream = translated(request, route, translator, request.stream)
        if isinstance(upstream, Answer):
            return m.immediate_error(self.client_api, upstream.status, upstream.message, upstream.details)
        set_headers = with_client_betas(
            (
                (":path", upstream.path),
                ("content-length", str(len(upstream.body))),
                ("content-type", "application/json"),
                *route.provider.headers,
                *upstream.headers,
                *self._credentials_by_envoy(route),
            ),
            self.headers,
        )
        overwritten = {name for name, _ in set_headers}
        remove = [
            name
            for name in self.headers
            if name not in overwritten
            # A Bedrock attempt before this one left its SigV4 headers in the map the attempts share.
            and (name.startswith(_SIGV4_PREFIX) or strip_before_egress(name, self.client_api, route.provider.api))
        ]
        return m.request_body_response(upstream.body, set_headers, remove, None, clear_route_cache=False)

    def _credentials_by_envoy(self, route: ModelRoute) -> tuple[tuple[str, str], ...]:
        """Names the attempt's provider to the chain cluster's credential filters when Envoy signs
        for it or injects its token (they drop the header before it leaves)."""
        if route.provider.credentials_by_envoy and self.provider is not None:
            return ((ATTEMPT_PROVIDER_HEADER, self.provider),)
        return ()


_SIGV4_PREFIX = "x-amz-"


def attempt_metadata_struct(provider: str) -> Struct:
    """The attribute as Envoy sends it for an endpoint with ccr.provider metadata (for tests)."""
    metadata = Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].update({"provider": provider})
    struct = Struct()
    struct.fields[HOST_METADATA_ATTRIBUTE].string_value = text_format.MessageToString(metadata, as_one_line=True)
    return struct
