"""Anthropic Messages to Google Vertex AI's rawPredict for Anthropic models (Claude on Vertex).

Vertex serves Claude with Anthropic's own Messages API behind a Google path: the body is the
Anthropic body without ``model`` (the model is in the path) and with ``anthropic_version:
"vertex-2023-10-16"``; the answer, JSON or SSE, is Anthropic's own. So the request is
passthrough's plus those two changes, and the response goes back as it came; only errors that
Google itself gives (a wrong project, a model not enabled, quota, a token refused) come in Google's
shape, ``{"error": {"code", "message", "status"}}``, and are rewritten into Anthropic's.

Paths. The policy compiles a ``vertex`` provider's base path to end at the publisher's model
collection (control_plane.policy.parse, from the provider's ``project`` and ``region``), so that
Target stays what it is for every provider:

    {base_path} = {base_url path}/v1/projects/{project}/locations/{region}/publishers/anthropic/models
    generate      {base_path}/{model}:rawPredict     (stream: {base_path}/{model}:streamRawPredict)
    count_tokens  {base_path}/count-tokens:rawPredict   (the model stays in the body there)

Betas: the client's ``anthropic-beta`` header goes on to Vertex, which reads it as Anthropic does
(extproc.request_steps.strip_before_egress keeps Anthropic's headers for a Vertex provider); an
``anthropic_beta`` body field a client sent stays in the body, where Vertex also takes it.

Credentials: none here. Vertex wants a Google OAuth access token, which Envoy injects on the
provider's cluster from the control plane; ext_proc never holds it.

One instance per request; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from extproc.sse import SSEDecoder
from extproc.translate import anthropic_schema as A
from extproc.translate.base import (
    Api,
    ResponseContext,
    Target,
    TranslatedBody,
    TranslatedChunk,
    UpstreamRequest,
    Usage,
)
from extproc.translate.client_request import AnthropicRequest, ClientRequest
from extproc.translate.errors import error_body
from extproc.translate.passthrough import _has_unsigned_thinking, _without_unsigned_thinking

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
# The model segment as Vertex names it: ids carry "@" ("claude-sonnet-4-5@20250929"); anything
# else outside these is percent-encoded (a ";" would end the segment for some servers).
_MODEL_SAFE = "@._-"


def vertex_path(base_path: str, model: str, stream: bool) -> str:
    verb = "streamRawPredict" if stream else "rawPredict"
    return f"{base_path}/{quote(model, safe=_MODEL_SAFE)}:{verb}"


def vertex_body(request: AnthropicRequest, target: Target, keep_model: bool = False) -> dict[str, Any]:
    """The Anthropic body as Vertex takes it. A shallow copy: the parsed body stays intact for a
    fallback attempt, which translates it again."""
    upstream = dict(request.body)
    if keep_model:
        upstream["model"] = target.model
    else:
        upstream.pop("model", None)
    upstream["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    if _has_unsigned_thinking(request.messages):
        upstream["messages"] = _without_unsigned_thinking(request.messages)
    limit = target.max_output_tokens
    if limit is not None and request.max_tokens is not None and request.max_tokens > limit:
        upstream["max_tokens"] = limit
    return upstream


class AnthropicToVertex:
    client_api = Api.ANTHROPIC
    provider_api = Api.VERTEX
    # The answer is Anthropic's own, but Google's errors are not, and a session's usage is read.
    rewrites_response = True

    def __init__(self) -> None:
        self._stream = False
        self._decoder = SSEDecoder()
        self._usage = Usage()
        self._buffer = bytearray()  # a JSON answer, whole at end of stream

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        assert isinstance(request, AnthropicRequest)  # the registry pairs this class with Anthropic clients
        self._stream = target.stream
        body = vertex_body(request, target)
        return UpstreamRequest(path=vertex_path(target.base_path, target.model, target.stream), body=orjson.dumps(body))

    def prime(self, context: ResponseContext) -> None:
        self._stream = context.stream

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        # Vertex's own (text/event-stream or application/json, with a charset), said plainly.
        return (("content-type", "text/event-stream" if self._stream else "application/json"),)

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        """The bytes go on as they came; the usage is read on the way (message_start gives the
        prompt's, message_delta the output's), reported once at the end."""
        if self._stream:
            for event in self._decoder.feed(chunk):
                self._read_event(event.data)
            if end_of_stream:
                for event in self._decoder.close():
                    self._read_event(event.data)
                return TranslatedChunk(body=chunk, usage=self._usage)
            return TranslatedChunk(body=chunk)
        self._buffer += chunk
        if not end_of_stream:
            return TranslatedChunk(body=chunk)
        try:
            answer = orjson.loads(self._buffer)
        except orjson.JSONDecodeError:
            answer = None
        usage = A.usage_from_anthropic(answer.get("usage")) if isinstance(answer, dict) else None
        return TranslatedChunk(body=chunk, usage=usage)

    def _read_event(self, data: str) -> None:
        if '"usage"' not in data:  # most events are deltas of text: not worth parsing
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # the client gets the bytes as Vertex sent them; only our usage reading is lost
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._usage = A.usage_from_anthropic(event["message"].get("usage"), self._usage)
        elif event.get("type") == "message_delta":
            self._usage = A.usage_from_anthropic(event.get("usage"), self._usage)

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        if status == 401:  # the token Envoy injected was refused: the gateway's fault, not the client's
            return TranslatedBody(status=502, body=anthropic_error(502, body, refused_token=True))
        return TranslatedBody(status=status, body=anthropic_error(status, body))


class AnthropicToVertexCountTokens(AnthropicToVertex):
    """POST /v1/messages/count_tokens forwarded to Vertex's Anthropic token counting (policy:
    forward_count_tokens): ``{base_path}/count-tokens:rawPredict``, the model in the body, the
    answer Anthropic's ``{"input_tokens": n}``."""

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        assert isinstance(request, AnthropicRequest)
        self._stream = False
        body = vertex_body(request, target, keep_model=True)
        body.pop("stream", None)
        return UpstreamRequest(path=f"{target.base_path}/count-tokens:rawPredict", body=orjson.dumps(body))

    def prime(self, context: ResponseContext) -> None:
        self._stream = False

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        return TranslatedChunk(body=chunk)


def anthropic_error(status: int, body: bytes, refused_token: bool = False) -> bytes:
    """A Vertex error in Anthropic's shape. Vertex relays the model's own errors as Anthropic wrote
    them (kept as they are); Google's own come as ``{"error": {"code", "message", "status"}}``,
    sometimes wrapped in a one-element list."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if isinstance(parsed, dict) and parsed.get("type") == "error" and isinstance(parsed.get("error"), dict):
        return body
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        reason = error.get("status")
        message = f"{reason}: {error['message']}" if isinstance(reason, str) and reason else error["message"]
    else:
        text = body.decode("utf-8", "replace").strip()[:500]
        message = f"Vertex AI answered HTTP {status}" + (f": {text}" if text else "")
    if refused_token:
        message = f"Vertex AI refused the gateway's OAuth token ({message}); check the provider's credentials"
    return error_body(Api.ANTHROPIC, status, message)
