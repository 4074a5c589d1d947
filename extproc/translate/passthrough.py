"""Same API on both sides: only the model id and the path change; the response goes back untouched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from extproc.translate.base import Api, Target, TranslatedBody, TranslatedChunk, UpstreamRequest
from extproc.translate.client_request import AnthropicRequest, ClientRequest, ResponsesRequest

# Path of each API's endpoint relative to the provider's base URL path.
_PATHS = {Api.ANTHROPIC: "/v1/messages", Api.OPENAI: "/chat/completions", Api.RESPONSES: "/responses"}


class PassthroughTranslator:
    rewrites_response = False

    def __init__(self, api: Api) -> None:
        self.client_api = api
        self.provider_api = api

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        path = target.base_path + _PATHS[self.client_api]
        if request.raw and self._as_sent(request, target):
            # Nothing to change: the client's bytes go on (no serialization, nothing to copy).
            return UpstreamRequest(path=path, body=request.raw, unchanged=True)
        upstream = dict(request.body)  # shallow copy: the parsed body stays intact for a fallback attempt
        upstream["model"] = target.model
        if isinstance(request, AnthropicRequest):
            if _has_unsigned_thinking(request.messages):
                upstream["messages"] = _without_unsigned_thinking(request.messages)
            limit = target.max_output_tokens
            if limit is not None and request.max_tokens is not None and request.max_tokens > limit:
                upstream["max_tokens"] = limit
        elif isinstance(request, ResponsesRequest):
            upstream["store"] = False
        return UpstreamRequest(path=path, body=orjson.dumps(upstream))

    @staticmethod
    def _as_sent(request: ClientRequest, target: Target) -> bool:
        """Would ``request`` reach the provider exactly as the client sent it?"""
        if request.model != target.model:
            return False
        if isinstance(request, AnthropicRequest):
            limit = target.max_output_tokens
            if limit is not None and request.max_tokens is not None and request.max_tokens > limit:
                return False
            return not _has_unsigned_thinking(request.messages)
        if isinstance(request, ResponsesRequest):
            return request.body.get("store") is False
        return True

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return ()

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        return TranslatedChunk(body=chunk)

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        return TranslatedBody(status=status, body=body)


def _is_unsigned_thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")


def _has_unsigned_thinking(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(
        isinstance(m["content"], list) and any(map(_is_unsigned_thinking, m["content"]))
        for m in messages
        if m["role"] == "assistant"
    )


def _without_unsigned_thinking(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Thinking that another provider produced carries no Anthropic signature (we never invent one);
    Anthropic rejects such blocks when a conversation that switched providers is replayed to it."""
    out = []
    for message in messages:
        if message["role"] == "assistant" and isinstance(message["content"], list):
            message = {**message, "content": [b for b in message["content"] if not _is_unsigned_thinking(b)]}
        out.append(message)
    return out


class AnthropicPassthrough(PassthroughTranslator):
    def __init__(self) -> None:
        super().__init__(Api.ANTHROPIC)


class CountTokensPassthrough(PassthroughTranslator):
    """POST /v1/messages/count_tokens forwarded to an Anthropic provider (policy: forward_count_tokens)."""

    def __init__(self) -> None:
        super().__init__(Api.ANTHROPIC)

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        upstream = super().request(request, target)
        return UpstreamRequest(path=upstream.path + "/count_tokens", body=upstream.body)


class OpenAIPassthrough(PassthroughTranslator):
    def __init__(self) -> None:
        super().__init__(Api.OPENAI)


class ResponsesPassthrough(PassthroughTranslator):
    """A Responses client to a Responses provider (``POST {base}/responses``): built-in tools,
    reasoning items with their ``encrypted_content`` and every other field go on as sent, except
    ``store``, always false: the gateway never asks a provider to keep state for it (OpenAI stores
    a response unless told not to; stored responses are the gateway's own, never the provider's)."""

    def __init__(self) -> None:
        super().__init__(Api.RESPONSES)
