"""The one narrow interface every translator implements, and the values it trades in.

A translator converts one request and its response between a client API (what the caller speaks:
Anthropic Messages, OpenAI Chat Completions or OpenAI Responses) and a provider API (what the
upstream speaks). It is sans-IO: dicts and bytes in, dicts and bytes out, no sockets, no clocks, no
globals. One instance serves one HTTP request; instances are not thread-safe and keep their
streaming state on `self`.

Phases, in the order the ext_proc processor calls them:

1. ``request(request, target)`` -> ``UpstreamRequest`` (path, body bytes, extra headers).
   ``request`` is the client's request already checked and typed (extproc.translate.client_request:
   whatever the client API itself refuses never reaches a translator); a translator raises
   ``ClientRequestError`` only for what its provider cannot take. Must not mutate the request's
   JSON: on a fallback attempt the same parsed body is translated again.
2. ``response_headers(status, headers)`` -> headers to set on the client response (e.g.
   ``content-type`` when a JSON upstream answer becomes SSE, or the reverse).
3. ``response_body(chunk, end_of_stream)`` -> ``TranslatedChunk``; called once with the whole body
   for buffered responses, or once per upstream chunk for streams (chunks split anywhere, even inside
   a UTF-8 sequence or an SSE line). On ``end_of_stream`` it flushes and closes what is still open.
4. ``response_error(status, body)`` -> ``TranslatedBody``: a non-2xx upstream answer rewritten into
   the client's error shape.

Two error kinds, as in h11: ``ClientRequestError`` (the caller sent something we cannot serve: 4xx
in the caller's format) and ``UpstreamProtocolError`` (the provider broke its own API). Anything
else escaping a translator is a bug in the translator.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the typed request is built from these values' module: no import cycle at runtime
    from extproc.translate.client_request import ClientRequest


class Api(enum.StrEnum):
    """Wire formats. Clients speak ANTHROPIC, OPENAI (Chat Completions), RESPONSES (OpenAI's
    Responses API) or BEDROCK (InvokeModel's paths, an Anthropic body: extproc.translate.bedrock_client);
    providers speak any of these, GEMINI or VERTEX."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    GEMINI = "gemini"
    RESPONSES = "responses"
    VERTEX = "vertex"  # provider-only: Google Vertex AI's rawPredict for Anthropic models
    BEDROCK = "bedrock"  # AWS Bedrock's InvokeModel for Anthropic models (a provider's, or a client's)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the translated request goes: what the router decided, in the translator's terms."""

    model: str  # the provider's own model id
    base_path: str = ""  # path prefix of the provider's base URL, no trailing slash ("" or "/v1beta")
    stream: bool = False  # whether the client asked for a stream
    max_output_tokens: int | None = None  # clamp for max_tokens; None = no clamp known
    capabilities: frozenset[str] = frozenset()  # e.g. {"tools", "vision", "thinking"}


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    path: str  # full upstream path incl. base_path and query, e.g. "/v1/chat/completions"
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers to set (never auth)
    unchanged: bool = False  # ``body`` is the client's own bytes: the transport can leave them in place


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as reported by the provider (never invented)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt, cached parts included (what the next turn's long-context check reads)."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


@dataclass(frozen=True, slots=True)
class TranslatedChunk:
    body: bytes  # bytes to send to the client now (may be b"")
    usage: Usage | None = None  # set once the provider's final usage is known


@dataclass(frozen=True, slots=True)
class TranslatedBody:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=(("content-type", "application/json"),))


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """What a translator's response phases need to know of the request, without translating it: a
    fallback chain's answer is read by a translator for whichever provider answered, primed with
    this (extproc.plan computes it once from the client's body)."""

    model: str  # the provider's model id, the fallback for a response that names none
    stream: bool
    estimate: int = 0  # input tokens guessed before the provider reports its own
    show_thinking: bool = True  # Anthropic clients: thinking.display != "omitted"
    include_usage: bool = False  # OpenAI clients: stream_options.include_usage
    turn: int = 0  # assistant turns in the history (part of the tool ids Gemini translators make)
    # Responses clients: names of the freeform (``custom``) tools, e.g. the Codex CLI's apply_patch,
    # whose calls go back as custom_tool_call items rather than function calls.
    custom_tools: frozenset[str] = frozenset()


class ClientRequestError(Exception):
    """The client's request cannot be served; answered in the client's error format."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UpstreamProtocolError(Exception):
    """The provider answered something its own API does not allow."""


class Translator(Protocol):
    """One instance per HTTP request; not thread-safe."""

    client_api: Api
    provider_api: Api

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest: ...

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]: ...

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk: ...

    def response_error(self, status: int, body: bytes) -> TranslatedBody: ...

    @property
    def rewrites_response(self) -> bool:
        """False when the response can go to the client untouched (no body messages needed)."""
        ...


class Primable(Protocol):
    """The optional ability of a translator that rewrites responses: set the response state that
    ``request`` would have set, from a ResponseContext, without translating the request."""

    def prime(self, context: ResponseContext) -> None: ...
