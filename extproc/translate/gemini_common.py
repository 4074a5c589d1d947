"""What both Gemini translators share: upstream paths, the Gemini response reader and the response
phases built on it (``GeminiResponse``), usage, finish reasons, tool-call ids, media parts and error
bodies.

The reader (``GeminiReader``) turns Gemini's answer -- one JSON ``GenerateContentResponse``, or an SSE
stream (``streamGenerateContent?alt=sse``) whose every ``data:`` is such a response holding only the
new parts -- into a flat list of ``GeminiEvent``s. Each client format then only renders those:

    START    first payload seen (``meta``: its usageMetadata or None); ``reader.model`` and
             ``reader.response_id`` are set. Render from the event, not from ``reader.meta``: a
             chunk may hold several payloads, and output must not depend on how the stream was split.
    TEXT     ``text``: visible text
    THOUGHT  ``text``: thought-summary text (``"thought": true`` parts)
    CALL     ``index``, ``name``, ``args``: one complete function call (Gemini never splits a call)
    FINISH   ``text``: Gemini's ``finishReason`` (or a ``promptFeedback.blockReason``); last event
    ERROR    ``status``, ``text``: an error payload, or a payload that is not a JSON object; last event

Gemini has no ``[DONE]``: the stream ends with the chunk carrying ``finishReason`` (whose
``usageMetadata`` is final) and the connection closing. Anything after FINISH or ERROR is ignored.
Gemini's ``thoughtSignature`` is opaque and only Gemini can check it; it has no Anthropic or OpenAI
field, so it is dropped (see ``SKIP_SIGNATURE`` for the way back).
"""

from __future__ import annotations

import enum
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.sse import SSEDecoder
from extproc.translate.base import (
    Target,
    TranslatedChunk,
    UpstreamProtocolError,
    Usage,
)
from extproc.translate.buffering import NOTHING_YET, ResponsePhases
from extproc.translate.client_request import AnthropicRequest, ClientRequest, OpenAIRequest, Tool, ToolChoice
from extproc.translate.gemini_schema import memoized_tools


class EventKind(enum.Enum):
    START = "start"
    TEXT = "text"
    THOUGHT = "thought"
    CALL = "call"
    FINISH = "finish"
    ERROR = "error"


START, TEXT, THOUGHT, CALL, FINISH, ERROR = EventKind


@dataclass(frozen=True, slots=True)
class GeminiEvent:
    """One thing the reader found in Gemini's answer; which fields mean something depends on ``kind``
    (see the module docstring)."""

    kind: EventKind
    text: str = ""
    index: int = 0
    name: str = ""
    args: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None
    status: int = 0


# Gemini 3 rejects a replayed model turn whose functionCall part lacks the thoughtSignature it was
# generated with ("Function call is missing a thought_signature"). Clients of the Anthropic/OpenAI
# formats cannot carry that signature back, so replayed calls carry the value Google documents for
# history it did not generate (https://ai.google.dev/gemini-api/docs/thought-signatures); earlier
# models accept it too. It goes on the first functionCall of each model turn, as Gemini puts it.
SKIP_SIGNATURE = "skip_thought_signature_validator"

# Finish reasons where the model declined or was stopped by a content filter.
REFUSALS = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "OTHER_BLOCK"})
_BLOCK_REASONS = {"SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"}

MAX_STOP_SEQUENCES = 5  # Gemini rejects more
# A client's tool choice mode (extproc.translate.client_request.ToolChoice) as Gemini's.
TOOL_CHOICE_MODES = {"auto": "AUTO", "any": "ANY", "none": "NONE"}
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# Google's own OpenAI-compatibility mapping of reasoning_effort to thinking budgets; Anthropic's
# output_config.effort uses it too ("max" as OpenAI's "xhigh").
EFFORT_BUDGETS = {
    "none": 0,
    "minimal": 128,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}


def upstream_path(target: Target) -> str:
    if target.stream:
        return f"{target.base_path}/models/{target.model}:streamGenerateContent?alt=sse"
    return f"{target.base_path}/models/{target.model}:generateContent"


def content_type(stream: bool, status: int) -> tuple[tuple[str, str], ...]:
    """Client response headers. Gemini already answers with these types; they are set explicitly so
    the client sees its own API's type whatever the upstream says. The processor drops
    ``content-length`` whenever the body is rewritten, so it is not set here."""
    if stream and 200 <= status < 300:
        return (("content-type", "text/event-stream"),)
    return (("content-type", "application/json"),)


def tool_id(prefix: str, turn: int, index: int, name: str) -> str:
    """A deterministic tool-call id: Gemini may not return ids. ``turn`` (the number of assistant
    turns in the request history) keeps ids unique within a conversation; the name makes them
    readable. Only ``[A-Za-z0-9_-]`` is used, as Anthropic requires of tool_use ids."""
    return f"{prefix}{turn}_{index}_{_UNSAFE_ID_CHARS.sub('_', name)[:40]}"


def generate_content(
    contents: list[dict[str, Any]],
    system: list[dict[str, Any]],
    request: ClientRequest,
    generation: dict[str, Any],
) -> dict[str, Any]:
    """A ``generateContent`` body: the converted turns and system parts, the client's tools and
    tool choice, the generation config; what is empty is left out (Gemini rejects some empties)."""
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = memoized_tools(request.tools, request.web_search)
    if tools is not None:
        out["tools"] = tools
    config = tool_config(request.tools, request.tool_choice)
    if config is not None:
        out["toolConfig"] = config
    if generation:
        out["generationConfig"] = generation
    return out


def generation_start(request: ClientRequest, target: Target) -> tuple[dict[str, Any], int | None]:
    """The part of a ``generationConfig`` both client APIs fill alike (the output limit clamped to
    the target's, temperature, top_p, stop sequences), and that limit."""
    max_tokens = request.max_tokens
    if max_tokens is not None and target.max_output_tokens is not None and max_tokens > target.max_output_tokens:
        max_tokens = target.max_output_tokens
    config: dict[str, Any] = {}
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if isinstance(request, OpenAIRequest) and request.seed is not None:
        config["seed"] = request.seed
    elif isinstance(request, AnthropicRequest) and request.top_k is not None:
        config["topK"] = request.top_k
    stops = [s for s in request.stop if s][:MAX_STOP_SEQUENCES]  # Gemini rejects more
    if stops:
        config["stopSequences"] = stops
    return config, max_tokens


def tool_config(tools: Sequence[Tool], choice: ToolChoice | None) -> dict[str, Any] | None:
    """Gemini's ``toolConfig`` for the client's tool choice; None: Gemini's default (auto)."""
    if choice is None or not tools:
        return None
    if choice.mode == "tool":
        if all(tool.name != choice.name for tool in tools):  # a tool this provider does not get
            return None
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice.name]}}
    config: dict[str, Any] = {"mode": TOOL_CHOICE_MODES[choice.mode]}
    if choice.allowed and choice.mode == "any":
        config["allowedFunctionNames"] = list(choice.allowed)  # Gemini only restricts names in ANY mode
    return {"functionCallingConfig": config}


def openai_usage(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Gemini ``usageMetadata`` -> OpenAI ``usage`` (prompt_tokens includes cached tokens there)."""
    meta = meta or {}
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    completion = _count(meta, "candidatesTokenCount") + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(meta, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def thinking_config(budget: int, max_output_tokens: int | None) -> dict[str, Any]:
    """``thinkingConfig`` with thought summaries on. Gemini counts thoughts against
    ``maxOutputTokens`` (as Anthropic counts thinking against ``max_tokens``), so a budget that no
    longer fits under a clamped limit is halved to leave room for the answer. -1 = dynamic."""
    if max_output_tokens is not None and budget >= max_output_tokens:
        budget = max_output_tokens // 2
    return {"thinkingBudget": budget, "includeThoughts": True}


def guess_mime(uri: str, default: str) -> str:
    guessed, _ = mimetypes.guess_type(uri.split("?", 1)[0], strict=False)
    return guessed or default


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` -> (mime, data); None for anything else."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    return header[:-7].split(";", 1)[0] or "application/octet-stream", data


def usage_of(meta: Mapping[str, Any] | None) -> Usage:
    """Gemini ``usageMetadata`` -> Usage. ``promptTokenCount`` includes cached tokens, so they are
    taken out of ``input_tokens`` (Anthropic's meaning); prompt tokens spent on tool use (e.g. Google
    Search results) are input too. Thought tokens are billed as output."""
    if not meta:
        return Usage()
    cached = _count(meta, "cachedContentTokenCount")
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    output = _count(meta, "candidatesTokenCount") + _count(meta, "thoughtsTokenCount")
    return Usage(input_tokens=max(prompt - cached, 0), output_tokens=output, cache_read_input_tokens=cached)


def _count(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def error_message(body: bytes) -> str:
    """The ``message`` of a Gemini error body (``{"error": {...}}``, or a one-element list of it, as
    non-SSE streaming errors come), else the body text itself."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:2000] or "upstream error"
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        status = error.get("status")
        return f"{status}: {error['message']}" if isinstance(status, str) and status else error["message"]
    return body.decode("utf-8", "replace")[:2000] or "upstream error"


class GeminiReader:
    """Gemini response bytes -> flat events (see the module docstring). Not thread-safe."""

    __slots__ = ("_decoder", "calls", "done", "finish", "meta", "model", "response_id", "started")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.started = False
        self.done = False  # FINISH or ERROR was emitted
        self.calls = 0  # function calls seen so far
        self.finish: str | None = None
        self.meta: dict[str, Any] | None = None  # latest usageMetadata (cumulative in Gemini)
        self.model: str | None = None
        self.response_id: str | None = None

    def feed_sse(self, chunk: bytes, end_of_stream: bool) -> list[GeminiEvent]:
        events = self._decoder.feed(chunk) if chunk else []
        if end_of_stream:
            events.extend(self._decoder.close())
        out: list[GeminiEvent] = []
        for event in events:
            if self.done:
                break
            data = event.data
            if not data or data == "[DONE]":
                continue
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                out.append(GeminiEvent(ERROR, "upstream sent a stream chunk that is not JSON", status=502))
                self.done = True
                break
            self.payload(payload, out)
        return out

    def whole(self, body: bytes) -> list[GeminiEvent]:
        """A buffered (non-stream) answer. The status line already went out as 2xx, so an answer
        that is not a GenerateContentResponse is the provider breaking its API."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"Gemini answered with invalid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("Gemini answered with JSON that is not an object")
        if isinstance(payload.get("error"), dict):
            raise UpstreamProtocolError(f"Gemini answered 2xx with an error: {error_message(body)}")
        out: list[GeminiEvent] = []
        self.payload(payload, out)
        if not self.done:
            out.append(GeminiEvent(FINISH))
            self.done = True
        return out

    def payload(self, payload: Any, out: list[GeminiEvent]) -> None:
        if not isinstance(payload, dict):
            out.append(GeminiEvent(ERROR, "upstream sent a stream chunk that is not a JSON object", status=502))
            self.done = True
            return
        error = payload.get("error")
        if error is not None:
            out.append(_error_event(error))
            self.done = True
            return
        meta = payload.get("usageMetadata")
        if isinstance(meta, dict):
            self.meta = meta
        if not self.started:
            self.started = True
            model, rid = payload.get("modelVersion"), payload.get("responseId")
            self.model = model if isinstance(model, str) and model else None
            self.response_id = rid if isinstance(rid, str) and rid else None
            out.append(GeminiEvent(START, meta=self.meta))
        candidates = payload.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            feedback = payload.get("promptFeedback")
            reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if isinstance(reason, str) and reason:
                self._finish("SAFETY" if reason in _BLOCK_REASONS else reason, out)
            return
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list):
            for part in parts:
                if isinstance(part, dict):
                    self._part(part, out)
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason and reason != "FINISH_REASON_UNSPECIFIED":
            self._finish(reason, out)

    def _part(self, part: dict[str, Any], out: list[GeminiEvent]) -> None:
        call = part.get("functionCall")
        if isinstance(call, dict):
            name = call.get("name")
            args = call.get("args")
            name = name if isinstance(name, str) else ""
            out.append(GeminiEvent(CALL, index=self.calls, name=name, args=args if isinstance(args, dict) else {}))
            self.calls += 1
            return
        text = part.get("text")
        if isinstance(text, str) and text:  # signature-only parts carry text "" and are skipped
            out.append(GeminiEvent(THOUGHT if part.get("thought") is True else TEXT, text))
        # inlineData / executableCode / codeExecutionResult output parts have no client field

    def _finish(self, reason: str, out: list[GeminiEvent]) -> None:
        self.finish = reason
        self.done = True
        out.append(GeminiEvent(FINISH, reason))


def _error_event(error: Any) -> GeminiEvent:
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        text = message if isinstance(message, str) and message else "upstream error"
        name = error.get("status")
        return GeminiEvent(ERROR, f"{name}: {text}" if isinstance(name, str) and name else text, status=status)
    return GeminiEvent(ERROR, str(error) or "upstream error", status=500)


class GeminiResponse(ResponsePhases):
    """The response phases both Gemini translators share: feeding the reader, closing the stream.
    A subclass sets ``_model``, ``_stream`` and ``_turn`` in ``request`` and renders the reader's
    events in its client's format: a whole answer (``_whole``), START / TEXT / THOUGHT / CALL events
    (``_render``), the end of the stream (``_finish``) and a stream error frame (``_error_frame``)."""

    def __init__(self) -> None:
        super().__init__()
        self._turn = 0  # assistant turns in the request history: part of generated tool ids
        self._reader = GeminiReader()
        self._closed = False  # the stream's last frame was sent

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return content_type(self._stream, status)

    def _whole_body(self, raw: bytes) -> TranslatedChunk:
        return self._whole(raw)

    def _stream_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        if self._closed:
            return NOTHING_YET
        out: list[bytes] = []
        usage = None
        for event in self._reader.feed_sse(chunk, end_of_stream):
            kind = event.kind
            if kind is FINISH:
                usage = self._finish(out)
            elif kind is ERROR:
                self._error(event.status, event.text, out)
            else:
                self._render(event, out)
        if end_of_stream and not self._closed:
            if self._reader.started:
                usage = self._finish(out)
            else:
                self._error(502, "upstream closed the stream without sending a response", out)
        return TranslatedChunk(body=b"".join(out), usage=usage)

    def _error_message(self, status: int, body: bytes) -> str:
        return error_message(body)

    def _error(self, status: int, message: str, out: list[bytes]) -> None:
        # An error frame ends the stream: the client SDKs raise on it, so nothing may follow.
        out.append(self._error_frame(status, message))
        self._closed = True

    def _whole(self, body: bytes) -> TranslatedChunk:
        raise NotImplementedError

    def _render(self, event: GeminiEvent, out: list[bytes]) -> None:
        raise NotImplementedError

    def _finish(self, out: list[bytes]) -> Usage:
        raise NotImplementedError

    def _error_frame(self, status: int, message: str) -> bytes:
        raise NotImplementedError
