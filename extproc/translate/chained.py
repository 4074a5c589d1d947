"""Two translators composed through the hub format, Anthropic Messages: client API -> Anthropic ->
provider API, and the answer back the other way.

With one codec per API to and from the hub, a pair that has no translator of its own is the chain of
the client's codec (``outer``: client API -> Anthropic) and the provider's (``inner``: Anthropic ->
provider API); extproc.translate.registry names such pairs as (outer, inner).

- Request: ``outer.request`` gives the hub body, which is checked and typed as an Anthropic client's
  request (client_request.parse_request) before ``inner.request`` reads it, exactly as a real
  Anthropic client's request would be. A ClientRequestError from either step reaches the client in
  its own format like any other (the message may name a field of the hub request). One addition on
  the way: a client's JSON schema for the answer (Chat ``response_format``, Responses
  ``text.format``), which the outer turns into a system-prompt instruction, also goes into the hub
  body as ``output_config.format``, so the provider gets its own structured output as well.
- Response: every phase runs ``inner`` first (provider -> Anthropic), then ``outer`` (Anthropic ->
  client), for JSON and SSE alike; the inner's output is a complete Anthropic answer or stream
  prefix, so the outer reads it as it would read an Anthropic provider. The usage reported is the
  inner's: the provider's own counts, not their re-rendering.

One instance per request; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import orjson

from extproc.translate.base import (
    Api,
    Primable,
    ResponseContext,
    Target,
    TranslatedBody,
    TranslatedChunk,
    Translator,
    UpstreamRequest,
)
from extproc.translate.client_request import AnthropicRequest, ClientRequest, parse_request


class Chained:
    """``outer`` (client API -> Anthropic) composed with ``inner`` (Anthropic -> provider API)."""

    def __init__(self, outer: Translator, inner: Translator) -> None:
        if outer.provider_api is not Api.ANTHROPIC or inner.client_api is not Api.ANTHROPIC:
            raise ValueError(f"cannot chain {outer.client_api}->{outer.provider_api} with {inner.client_api}->...")
        self.outer = outer
        self.inner = inner
        self.client_api = outer.client_api
        self.provider_api = inner.provider_api

    @property
    def rewrites_response(self) -> bool:
        return self.outer.rewrites_response or self.inner.rewrites_response

    @property
    def estimate(self) -> int:
        """The input-token guess of the request the provider gets (the inner's)."""
        return cast(int, getattr(self.inner, "estimate", 0) or getattr(self.outer, "estimate", 0))

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        hub_request = getattr(self.outer, "hub_request", None)
        if hub_request is not None:  # the client's request is an Anthropic one already
            checked, headers = hub_request(request, self.provider_api)
            upstream = self.inner.request(checked, target)
            return replace(upstream, headers=(*upstream.headers, *headers)) if headers else upstream
        hub = self.outer.request(request, target)
        body: Any = orjson.loads(hub.body)
        raw = hub.body
        schema = _answer_schema(request)
        if schema is not None:
            # The outer asks for JSON in the system prompt (an Anthropic provider has no JSON mode
            # every model takes), but the hub can carry the schema itself: every inner translator
            # gives its provider output_config.format as that provider's own structured output.
            body["output_config"] = {
                **(body.get("output_config") or {}),
                "format": {"type": "json_schema", "schema": schema},
            }
            raw = orjson.dumps(body)
        return self.inner.request(parse_request(Api.ANTHROPIC, body, raw=raw), target)

    def prime(self, context: ResponseContext) -> None:
        for translator in (self.inner, self.outer):
            prime = getattr(translator, "prime", None)
            if prime is not None:
                cast(Primable, translator).prime(context)

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        # The outer sees the headers of the Anthropic answer the inner makes: the provider's, with
        # the inner's changes (a JSON answer becoming SSE and the reverse).
        inner = self.inner.response_headers(status, headers)
        hub = {**{name.lower(): value for name, value in headers.items()}, **dict(inner)}
        outer = self.outer.response_headers(status, hub)
        return tuple({**dict(inner), **dict(outer)}.items())

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        hub = self.inner.response_body(chunk, end_of_stream)
        if not hub.body and not end_of_stream:
            return TranslatedChunk(body=b"", usage=hub.usage)
        client = self.outer.response_body(hub.body, end_of_stream)
        return TranslatedChunk(body=client.body, usage=hub.usage)

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        hub = self.inner.response_error(status, body)
        return self.outer.response_error(hub.status, hub.body)


def _answer_schema(request: ClientRequest) -> Mapping[str, Any] | None:
    """The JSON schema a Chat or Responses client's answer must follow (json_schema format), if any."""
    if isinstance(request, AnthropicRequest) or request.response_format != "json_schema":
        return None
    return request.response_schema
