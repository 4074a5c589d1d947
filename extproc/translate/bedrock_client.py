"""A Bedrock client (InvokeModel) -> the Anthropic hub, and the answer back in Bedrock's framing.

The gateway serves Bedrock's InvokeModel paths for Anthropic models (extproc.request_steps:
``POST /model/{modelId}/invoke`` and ``/invoke-with-response-stream``), as the Anthropic SDKs'
Bedrock clients and Claude Code in Bedrock mode call them. Such a request is an Anthropic request
whose model and stream flag are in the path (client_request.from_bedrock), so the client's codec
here is, on the request side, the identity plus the betas: the body's ``anthropic_beta`` list
becomes the ``anthropic-beta`` header for an Anthropic provider, stays in the body for a Vertex
provider (which takes it there) and is dropped for the others. It is chained with the hub
translator of the provider's API (extproc.translate.registry: ``(BedrockClient, inner)``), which
hands it the request as it is (``hub_request``: no serialising and parsing again).

The answer: a JSON Message goes back as it is (that is what InvokeModel answers). A stream's
Anthropic SSE events become AWS event-stream frames (extproc.translate.aws_eventstream), one
``chunk`` event per SSE event with ``{"bytes": base64 of the event's JSON}``, as
invoke-with-response-stream sends them; Anthropic's ``ping`` events are dropped (Bedrock sends
none). An ``error`` event becomes an ``exception`` frame (``throttlingException`` for an overload,
``validationException``, ``modelTimeoutException``, else ``internalServerException``: the
exceptions botocore's ResponseStream shape knows), which the Bedrock SDKs raise, and ends the
stream. An error answer is Bedrock's ``{"message": ...}`` (extproc.translate.errors).

A Bedrock client to a Bedrock provider (``BedrockPassthrough``) needs no codec: the request is the
Anthropic-to-Bedrock one (the model id mapped), the answer's bytes go back untouched (read for the
provider's usage on the way).

One instance per request; not thread-safe.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from extproc.sse import SSEDecoder, SSEEvent
from extproc.translate import anthropic_schema as A
from extproc.translate.anthropic_bedrock import EVENTSTREAM_CONTENT_TYPE, AnthropicToBedrock
from extproc.translate.aws_eventstream import encode_message
from extproc.translate.base import (
    Api,
    ResponseContext,
    Target,
    TranslatedBody,
    TranslatedChunk,
    UpstreamProtocolError,
    UpstreamRequest,
)
from extproc.translate.buffering import BodyBuffer
from extproc.translate.client_request import AnthropicRequest, ClientRequest
from extproc.translate.errors import error_body
from extproc.translate.wire import error_message, upstream_error_message

BETA_FIELD = "anthropic_beta"
_CHUNK_HEADERS = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
# Anthropic's error type -> the exception frame a Bedrock stream ends with (botocore's
# ResponseStream members; anything else reads as an internal error).
_EXCEPTIONS = {
    "overloaded_error": "throttlingException",
    "rate_limit_error": "throttlingException",
    "invalid_request_error": "validationException",
    "request_too_large": "validationException",
    "not_found_error": "validationException",
    "timeout_error": "modelTimeoutException",
}
_DEFAULT_EXCEPTION = "internalServerException"
# Providers that read the body's betas where they are: Vertex takes the body field as Bedrock does.
_BETAS_IN_BODY = (Api.VERTEX, Api.BEDROCK)


def chunk_frame(data: bytes) -> bytes:
    """One ``chunk`` event carrying one Anthropic stream event's JSON, as Bedrock frames it."""
    return encode_message(_CHUNK_HEADERS, orjson.dumps({"bytes": base64.b64encode(data).decode()}))


def exception_frame(exception: str, message: str) -> bytes:
    """An ``exception`` frame: the stream failed with ``exception`` (e.g. ``throttlingException``)."""
    headers = {":exception-type": exception, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, orjson.dumps({"message": message}))


class BedrockClient:
    """The outer codec of a Bedrock client: Bedrock InvokeModel (Anthropic body) -> Anthropic hub."""

    client_api = Api.BEDROCK
    provider_api = Api.ANTHROPIC
    rewrites_response = True  # a stream is re-framed; an error is given Bedrock's shape

    def __init__(self) -> None:
        self._stream = False
        self._hub_json = False  # the hub answered a stream request with one JSON Message
        self._decoder = SSEDecoder()
        self._buffer = BodyBuffer()
        self._done = False  # message_stop or an exception sent: nothing more goes out

    def hub_request(self, request: ClientRequest, provider: Api) -> tuple[ClientRequest, tuple[tuple[str, str], ...]]:
        """``request`` as the hub translator of ``provider`` takes it, and the headers to add to
        that translator's upstream request (the betas, for an Anthropic provider)."""
        self._stream = request.stream
        betas = request.body.get(BETA_FIELD)
        if provider in _BETAS_IN_BODY or BETA_FIELD not in request.body:
            return request, ()
        # A new body: the parsed one stays intact for a fallback attempt to another provider.
        body = {name: value for name, value in request.body.items() if name != BETA_FIELD}
        hub = replace(request, body=body, raw=b"") if isinstance(request, AnthropicRequest) else request
        headers: tuple[tuple[str, str], ...] = ()
        if provider is Api.ANTHROPIC:
            headers = (("anthropic-version", A.ANTHROPIC_VERSION),)
            if isinstance(betas, list) and (named := [beta for beta in betas if isinstance(beta, str) and beta]):
                headers += (("anthropic-beta", ",".join(named)),)
        return hub, headers

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        """The hub request as JSON (Chained calls ``hub_request`` instead: this is the protocol's)."""
        hub, headers = self.hub_request(request, Api.ANTHROPIC)
        body = {**hub.body, "model": target.model}
        return UpstreamRequest(path=target.base_path + "/v1/messages", body=orjson.dumps(body), headers=headers)

    def prime(self, context: ResponseContext) -> None:
        self._stream = context.stream

    # --- response ---------------------------------------------------------------------------

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        if status >= 300 or not self._stream:
            return (("content-type", "application/json"),)
        self._hub_json = "json" in headers.get("content-type", "").lower()
        return (("content-type", EVENTSTREAM_CONTENT_TYPE),)

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        if not self._stream:
            return TranslatedChunk(body=chunk)  # InvokeModel answers the Anthropic Message itself
        if self._hub_json:
            raw = self._buffer.feed(chunk, end_of_stream)
            return TranslatedChunk(body=b"" if raw is None else self._replayed(raw))
        out: list[bytes] = []
        for event in self._decoder.feed(chunk):
            self._event(event, out)
        if end_of_stream:
            for event in self._decoder.close():
                self._event(event, out)
            if not self._done:
                self._fail(out, _DEFAULT_EXCEPTION, "upstream closed the stream before the message completed")
        return TranslatedChunk(body=b"".join(out))

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        message = upstream_error_message(status, body)
        return TranslatedBody(status=status, body=error_body(Api.BEDROCK, status, message))

    def _event(self, event: SSEEvent, out: list[bytes]) -> None:
        if self._done or not event.data or event.event == "ping":
            return
        try:
            parsed: Any = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            self._fail(out, _DEFAULT_EXCEPTION, f"invalid stream event from upstream: {exc}")
            return
        kind = parsed.get("type") if isinstance(parsed, dict) else None
        if kind == "ping":
            return
        if kind == "error":
            error = parsed.get("error")
            error_kind = error.get("type") if isinstance(error, dict) else None
            exception = _EXCEPTIONS.get(error_kind, _DEFAULT_EXCEPTION) if isinstance(error_kind, str) else None
            self._fail(out, exception or _DEFAULT_EXCEPTION, error_message(parsed) or "upstream stream error")
            return
        out.append(chunk_frame(event.data.encode()))
        if kind == "message_stop":
            self._done = True

    def _replayed(self, raw: bytes) -> bytes:
        """A JSON Message answering a stream request, sent as the stream it stands for."""
        try:
            events = A.events_from_message(orjson.loads(raw))
        except (orjson.JSONDecodeError, UpstreamProtocolError) as exc:
            return exception_frame(_DEFAULT_EXCEPTION, f"the provider sent an invalid response: {exc}")
        self._done = True
        return b"".join(chunk_frame(orjson.dumps(event)) for event in events)

    def _fail(self, out: list[bytes], exception: str, message: str) -> None:
        out.append(exception_frame(exception, message))
        self._done = True


class BedrockPassthrough(AnthropicToBedrock):
    """A Bedrock client to a Bedrock provider: the request is Anthropic-to-Bedrock's (the model id
    mapped, the client's ``anthropic_beta`` kept in the body); the answer, event-stream frames or
    JSON or Bedrock's error, goes back byte for byte. It is still read on the way (the provider's
    usage, which Envoy's usage capture cannot take from binary frames), so it rewrites responses."""

    client_api = Api.BEDROCK

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        super().response_headers(status, headers)  # what the provider sends: frames or JSON
        return ()

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        read = super().response_body(chunk, end_of_stream)  # Anthropic SSE, only for its usage
        if self._streaming():
            return TranslatedChunk(body=chunk, usage=read.usage)
        return read  # a JSON answer, gathered whole and sent on byte for byte

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        return TranslatedBody(status=status, body=body)
