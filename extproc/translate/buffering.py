"""Response-body plumbing the translators share, so each one keeps only its own rendering.

- ``BodyBuffer``: a buffered (non-stream) answer arrives from ext_proc in any number of chunks, but
  can only be translated whole.
- ``SseStreamMachine``: the loop that feeds upstream SSE bytes to a per-request stream state machine
  and flushes it at end of stream.
- ``ResponsePhases``: the response phases every rewriting translator shares (a buffered answer
  gathered and translated whole, a stream translated chunk by chunk, an error in the client's
  format); subclasses supply the three renderings.
- ``JsonOrSseResponse``: the response phases of a translator whose provider streams SSE but may answer
  a stream request with one JSON body anyway (OpenAI-compatible servers that ignore ``stream``); the
  JSON is then replayed through the stream machine so the client still gets the stream it asked for.
  (Gemini's, on the same base: extproc.translate.gemini_common.GeminiResponse.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import orjson

from extproc.sse import SSEDecoder, SSEEvent
from extproc.translate.base import (
    Api,
    ResponseContext,
    Target,
    TranslatedBody,
    TranslatedChunk,
    UpstreamProtocolError,
    UpstreamRequest,
    Usage,
)
from extproc.translate.errors import error_body
from extproc.translate.wire import upstream_error_message

NOTHING_YET = TranslatedChunk(body=b"")


class BodyBuffer:
    """Collects the chunks of a buffered response body until end of stream."""

    __slots__ = ("_pieces",)

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        """The whole body once ``end_of_stream`` is set, None before."""
        self._pieces.append(chunk)
        if not end_of_stream:
            return None
        body = b"".join(self._pieces)
        self._pieces.clear()
        return body


class SseStreamMachine:
    """Base of the stream state machines: SSE bytes in, client frames out. Subclasses handle one
    decoded event (``sse_event``) and close the stream (``finish``); both append to ``out``."""

    __slots__ = ("decoder",)

    def __init__(self) -> None:
        self.decoder = SSEDecoder()

    def replay(self, events_of: Callable[[Any], Iterable[dict[str, Any]]], answer: Any) -> TranslatedChunk:
        """A provider's JSON answer to a stream request, fed through ``event`` as the stream events
        it stands for (``events_of``); one it cannot stand for fails the stream with a 502."""
        out: list[bytes] = []
        usage = None
        try:
            events = events_of(answer)
        except UpstreamProtocolError as exc:
            self.fail(out, 502, str(exc))
            events = []
        for event in events:
            usage = self.event(event, out) or usage
        return TranslatedChunk(body=b"".join(out), usage=usage)

    def event(self, obj: dict[str, Any], out: list[bytes]) -> Usage | None:
        """One decoded event's JSON (the machines that ``replay`` answers implement it)."""
        raise NotImplementedError

    def fail(self, out: list[bytes], status: int, message: str) -> None:
        """End the stream with an error event in the client's format."""
        raise NotImplementedError

    def feed(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        out: list[bytes] = []
        usage = None
        for event in self.decoder.feed(chunk):
            usage = self.sse_event(event, out) or usage
        if end_of_stream:
            for event in self.decoder.close():
                usage = self.sse_event(event, out) or usage
            usage = self.finish(out) or usage
        return TranslatedChunk(body=b"".join(out), usage=usage)

    def sse_event(self, event: SSEEvent, out: list[bytes]) -> Usage | None:
        raise NotImplementedError

    def finish(self, out: list[bytes]) -> Usage | None:
        raise NotImplementedError


Machine = TypeVar("Machine", bound=SseStreamMachine)
IMAGE_TOKENS = 1600  # rough cost of one image, for the input-token estimate only


class ResponsePhases:
    """The response phases of every translator that rewrites responses. A buffered answer is
    gathered and rendered whole (``_whole_body``); a stream is rendered as it comes
    (``_stream_body``); a provider error becomes the client's error shape (``_error_message`` reads
    the provider's message). ``_streaming`` says which applies; the subclass sets ``_model`` and
    ``_stream`` in ``request`` (or ``prime``)."""

    client_api: Api

    def __init__(self) -> None:
        self._model = ""
        self._stream = False
        self._estimate = 0  # input tokens guessed from the translated request (0: none)
        self._buffer = BodyBuffer()

    @property
    def estimate(self) -> int:
        """The input-token guess ``request`` made (an Anthropic client's stream shows it before
        the provider reports its own count); a translator primed elsewhere gets this one."""
        return self._estimate

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        if self._streaming():
            return self._stream_body(chunk, end_of_stream)
        raw = self._buffer.feed(chunk, end_of_stream)
        return NOTHING_YET if raw is None else self._whole_body(raw)

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        return TranslatedBody(
            status=status, body=error_body(self.client_api, status, self._error_message(status, body))
        )

    def _streaming(self) -> bool:
        return self._stream

    def _stream_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        raise NotImplementedError

    def _whole_body(self, raw: bytes) -> TranslatedChunk:
        raise NotImplementedError

    def _error_message(self, status: int, body: bytes) -> str:
        return upstream_error_message(status, body)


class JsonOrSseResponse(ResponsePhases, Generic[Machine]):
    """Response phases for a provider that streams SSE and otherwise answers one JSON body.

    The subclass sets ``_model``, ``_stream`` and ``_upstream_sse`` in ``request`` and supplies the
    three renderings: a new stream machine, a JSON answer replayed as a stream, a JSON answer whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._upstream_sse = False  # what the provider actually sends, known from its content-type
        self._machine: Machine | None = None

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """Headers to set on the client response. The processor removes ``content-length``: the
        translated body has a different size."""
        if status >= 300 or not self._stream:
            return (("content-type", "application/json"),)
        # A provider that ignored stream=true answers JSON; the stream machine replays it as SSE.
        self._upstream_sse = "json" not in headers.get("content-type", "").lower()
        return (("content-type", "text/event-stream"), ("cache-control", "no-cache"))

    def _streaming(self) -> bool:
        return self._stream and self._upstream_sse

    def _stream_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        return self._stream_machine().feed(chunk, end_of_stream)

    def _whole_body(self, raw: bytes) -> TranslatedChunk:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"invalid JSON from upstream: {exc}") from None
        if self._stream:
            return self._replay_as_stream(self._stream_machine(), parsed)
        return self._whole(parsed)

    def _stream_machine(self) -> Machine:
        if self._machine is None:
            self._machine = self._new_stream_machine()
        return self._machine

    def _new_stream_machine(self) -> Machine:
        raise NotImplementedError

    def _replay_as_stream(self, machine: Machine, parsed: Any) -> TranslatedChunk:
        """A JSON answer to a stream request, sent on as the stream the client asked for."""
        raise NotImplementedError

    def _whole(self, parsed: Any) -> TranslatedChunk:
        """A JSON answer to a buffered request, in the client's format."""
        raise NotImplementedError


class RequestBuilder(Protocol):
    """What FromAnthropicClient needs of a translator's request builder."""

    binary_chars: int  # characters of base64 payloads in the upstream body (not counted as text)
    images: int

    def build(self, request: Any) -> dict[str, Any]: ...


class FromAnthropicClient(JsonOrSseResponse[Machine]):
    """The request phase and priming of a translator whose client speaks Anthropic Messages and
    whose provider answers one JSON body or an SSE stream (OpenAI Chat, Responses): the subclass
    names the upstream path, its request builder and its stream machine."""

    client_api = Api.ANTHROPIC
    rewrites_response = True
    upstream_path = ""  # after the target's base path, e.g. "/chat/completions"

    def __init__(self) -> None:
        super().__init__()
        self._show_thinking = True

    def _builder(self, target: Target) -> RequestBuilder:
        raise NotImplementedError

    def _machine_for(self, model: str, estimate: int, show_thinking: bool) -> Machine:
        raise NotImplementedError

    def request(self, request: Any, target: Target) -> UpstreamRequest:
        builder = self._builder(target)
        upstream = orjson.dumps(builder.build(request))
        self._model = target.model
        self._stream = self._upstream_sse = target.stream
        self._show_thinking = request.thinking is None or request.thinking.shown
        # ~4 characters per token for text and JSON; base64 payloads count as a flat per-image cost.
        self._estimate = (len(upstream) - builder.binary_chars) // 4 + builder.images * IMAGE_TOKENS
        return UpstreamRequest(path=target.base_path + self.upstream_path, body=upstream)

    def prime(self, context: ResponseContext) -> None:
        self._model = context.model
        self._stream = self._upstream_sse = context.stream
        self._show_thinking = context.show_thinking
        self._estimate = context.estimate

    def _new_stream_machine(self) -> Machine:
        return self._machine_for(self._model, self._estimate, self._show_thinking)
