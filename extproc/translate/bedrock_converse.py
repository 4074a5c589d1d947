"""Anthropic client -> AWS Bedrock's Converse API, for Bedrock's models that are not Anthropic's
(Amazon Nova, Meta Llama, Mistral, ...), and the answer back.

AnthropicToBedrock (extproc.translate.anthropic_bedrock) hands a request to this codec when the
target model is not an Anthropic one (``anthropic_bedrock.uses_converse``): InvokeModel takes each
vendor's own body, Converse one body for all of them.

    POST {base}/model/{model id, URL-encoded}/converse         -> one ConverseResponse (JSON)
    POST {base}/model/{model id, URL-encoded}/converse-stream  -> AWS event-stream frames

Request: see extproc.translate.converse_request (what is mapped, refused and dropped).

Response: ``output.message.content`` -> text / tool_use / thinking blocks (``reasoningContent``;
``signature: ""``, a Converse signature is no Anthropic one), ``stopReason`` -> stop_reason
(guardrail_intervened and content_filtered -> refusal), ``usage`` -> Anthropic usage
(``inputTokens`` excludes cache reads and writes, as Anthropic's ``input_tokens`` does). The message
id is ``msg_bdrk_<x-amzn-requestid>``. Streams: Converse events (messageStart, contentBlockStart /
Delta / Stop, messageStop, then metadata with the usage) -> one ``message_start`` (input tokens
estimated from the request size: Converse reports them only at the end), ``ping``, blocks in order
(text deltas, tool_use with ``input_json_delta``s, thinking), ``message_delta`` with the stop reason
and the exact usage, ``message_stop``. Exception frames end the stream with an Anthropic ``error``
event, as for InvokeModel streams. The usage is reported once, at the end (``TranslatedChunk.usage``).

Requests are signed (SigV4) by Envoy, never here. One instance per request; not thread-safe.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from extproc.sse import encode_event
from extproc.translate import anthropic_schema as A
from extproc.translate.anthropic_bedrock import FramedStream, bedrock_error, bedrock_error_status, payload_message
from extproc.translate.aws_eventstream import Message
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
from extproc.translate.buffering import IMAGE_TOKENS, ResponsePhases
from extproc.translate.client_request import AnthropicRequest
from extproc.translate.converse_request import ConverseRequest
from extproc.translate.wire import as_int

log = logging.getLogger("ccr.extproc.translate")

# Converse's stopReason -> Anthropic's stop_reason; anything else (malformed_model_output,
# malformed_tool_use, a reason added later) ends the turn.
STOP_REASONS = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "guardrail_intervened": "refusal",
    "content_filtered": "refusal",
    "model_context_window_exceeded": "model_context_window_exceeded",
}


def converse_path(base_path: str, model: str, stream: bool) -> str:
    action = "converse-stream" if stream else "converse"
    return f"{base_path}/model/{quote(model, safe='')}/{action}"


def stop_reason(reason: Any) -> str:
    return STOP_REASONS.get(reason, "end_turn") if isinstance(reason, str) else "end_turn"


def usage_of(usage: Any) -> Usage:
    """Converse's TokenUsage: its inputTokens leave out the cache reads and writes counted beside."""
    if not isinstance(usage, dict):
        return Usage()
    return Usage(
        input_tokens=as_int(usage.get("inputTokens")),
        output_tokens=as_int(usage.get("outputTokens")),
        cache_read_input_tokens=as_int(usage.get("cacheReadInputTokens")),
        cache_creation_input_tokens=as_int(usage.get("cacheWriteInputTokens")),
    )


class AnthropicToConverse(ResponsePhases):
    client_api = Api.ANTHROPIC
    provider_api = Api.BEDROCK
    rewrites_response = True

    def __init__(self) -> None:
        super().__init__()
        self._eventstream = False  # what the provider actually sends, known from its content-type
        self._machine: ConverseStream | None = None
        self._show_thinking = True
        # Converse's answer has no id: Bedrock's request id names it (response_headers), else a fresh
        # one (clients such as Claude Code tell messages apart by id).
        self._message_id = "msg_bdrk_" + uuid.uuid4().hex[:24]

    def request(self, request: AnthropicRequest, target: Target) -> UpstreamRequest:
        builder = ConverseRequest()
        raw = orjson.dumps(builder.build(request, target))
        self._model = target.model
        self._stream = self._eventstream = target.stream
        self._show_thinking = request.thinking is None or request.thinking.shown
        # ~4 characters per token for text and JSON; base64 payloads count as a flat per-image cost.
        self._estimate = max(1, (len(raw) - builder.binary_chars) // 4 + builder.images * IMAGE_TOKENS)
        return UpstreamRequest(path=converse_path(target.base_path, target.model, target.stream), body=raw)

    def prime(self, context: ResponseContext) -> None:
        self._model = context.model
        self._stream = self._eventstream = context.stream
        self._show_thinking = context.show_thinking
        self._estimate = context.estimate

    # --- response ---------------------------------------------------------------------------

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        request_id = headers.get("x-amzn-requestid")
        if request_id:
            self._message_id = "msg_bdrk_" + re.sub(r"[^A-Za-z0-9_-]", "", request_id)[:64]
        if status >= 300 or not self._stream:
            return (("content-type", "application/json"),)
        # converse-stream always frames; a JSON answer is replayed as the stream.
        self._eventstream = "json" not in headers.get("content-type", "").lower()
        return (("content-type", "text/event-stream"), ("cache-control", "no-cache"))

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        return bedrock_error(self.client_api, status, body)

    def _streaming(self) -> bool:
        return self._stream and self._eventstream

    def _stream_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        if self._machine is None:
            self._machine = ConverseStream(self._message_id, self._model, self._estimate, self._show_thinking)
        return self._machine.feed(chunk, end_of_stream)

    def _whole_body(self, raw: bytes) -> TranslatedChunk:
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"invalid JSON from Bedrock: {exc}") from None
        if not self._stream:
            message, usage = message_from_converse(answer, self._message_id, self._model, self._show_thinking)
            return TranslatedChunk(body=orjson.dumps(message), usage=usage)
        try:
            message, usage = message_from_converse(answer, self._message_id, self._model, self._show_thinking)
            events = A.events_from_message(message)
        except UpstreamProtocolError as exc:
            return TranslatedChunk(body=A.error_frame(502, str(exc)))
        frames = [encode_event(orjson.dumps(event), event["type"]) for event in events]
        frames.insert(1, A.PING_FRAME)  # after message_start, as in Anthropic's own streams
        return TranslatedChunk(body=b"".join(frames), usage=usage)


# --- the answer -------------------------------------------------------------------------------------


def message_from_converse(
    answer: Any, message_id: str, model: str, show_thinking: bool
) -> tuple[dict[str, Any], Usage]:
    """A ConverseResponse -> an Anthropic Message (and the provider's usage)."""
    output = answer.get("output") if isinstance(answer, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise UpstreamProtocolError("Bedrock's Converse answer has no output.message.content array")
    blocks: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        text = block.get("text")
        use = block.get("toolUse")
        reasoning = block.get("reasoningContent")
        citations = block.get("citationsContent")
        if isinstance(text, str):
            blocks.append({"type": "text", "text": text})
        elif isinstance(use, dict):
            tool_input = use.get("input")
            blocks.append(
                {
                    "type": "tool_use",
                    "id": str(use.get("toolUseId", "")),
                    "name": str(use.get("name", "")),
                    "input": tool_input if isinstance(tool_input, dict) else {},
                }
            )
        elif isinstance(reasoning, dict) and show_thinking:
            found = reasoning.get("reasoningText")
            thought = found.get("text") if isinstance(found, dict) else None
            if isinstance(thought, str) and thought:
                blocks.append({"type": "thinking", "thinking": thought, "signature": ""})
        elif isinstance(citations, dict):
            generated = citations.get("content")
            texts = [c.get("text") for c in generated or () if isinstance(c, dict)]
            joined = "".join(t for t in texts if isinstance(t, str))
            if joined:
                blocks.append({"type": "text", "text": joined})
        # image, document or video output blocks have no Anthropic content block
    usage = usage_of(answer.get("usage"))
    anthropic_message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason(answer.get("stopReason")),
        "stop_sequence": None,  # Converse does not say which sequence stopped the model
        "usage": A.anthropic_usage(usage),
    }
    return anthropic_message, usage


class ConverseStream(FramedStream):
    """ConverseStream's event-stream frames in, Anthropic SSE out. The usage is reported once, at the
    end. Converse sends the usage in a ``metadata`` event after ``messageStop``, so the closing
    ``message_delta`` waits for both (or for the end of the stream)."""

    __slots__ = (
        "_blocks",
        "_estimate",
        "_message_id",
        "_model",
        "_open",
        "_reported",
        "_show_thinking",
        "_started",
        "_stop",
        "_usage",
    )

    def __init__(self, message_id: str, model: str, estimate: int, show_thinking: bool) -> None:
        super().__init__()
        self._blocks = A.BlockWriter()
        self._message_id = message_id
        self._model = model
        self._estimate = estimate
        self._show_thinking = show_thinking
        self._started = False  # message_start sent
        self._open: int | None = None  # Converse's index of the block open now (BlockWriter's is its own)
        self._stop: str | None = None  # Anthropic's stop_reason, once messageStop came
        self._usage: Usage | None = None  # once metadata came
        self._reported = False  # the usage went out with a chunk

    def feed(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        out: list[bytes] = []
        self._decode(chunk, end_of_stream, out)
        if end_of_stream and not self._done:
            if self._stop is not None:  # messageStop came, the metadata event did not
                self._finish(out)
            else:
                self._fail(out, 502, "upstream closed the stream before the message completed")
        usage = None
        if (self._done or end_of_stream) and not self._reported:
            usage, self._reported = self._usage, True
        return TranslatedChunk(body=b"".join(out), usage=usage)

    def _frame(self, message: Message, out: list[bytes]) -> None:
        kind = message.message_type
        if kind == "exception":
            status = bedrock_error_status(message.event_type, 502, stream=True)
            self._fail(
                out, status, payload_message(message.payload) or message.event_type or "Bedrock stream exception"
            )
            return
        if kind == "error":
            text = message.headers.get(":error-message")
            self._fail(out, 502, f"Bedrock stream error {message.event_type}: {text}")
            return
        try:
            event = orjson.loads(message.payload)
        except orjson.JSONDecodeError as exc:
            self._fail(out, 502, f"invalid {message.event_type or 'event'} from Bedrock: {exc}")
            return
        if not isinstance(event, dict):
            self._fail(out, 502, f"invalid {message.event_type or 'event'} from Bedrock: not a JSON object")
            return
        name = message.event_type
        if name in ("messageStart", "contentBlockStart", "contentBlockDelta") and not self._started:
            self._started = True
            out.append(A.message_start_frame(self._message_id, self._model, self._estimate))
        if name == "contentBlockStart":
            self._block_start(event, out)
        elif name == "contentBlockDelta":
            self._delta(event, out)
        elif name == "contentBlockStop":
            if self._open == event.get("contentBlockIndex"):
                self._blocks.close(out)
                self._open = None
        elif name == "messageStop":
            self._blocks.close(out)
            self._open = None
            self._stop = stop_reason(event.get("stopReason"))
            if self._usage is not None:
                self._finish(out)
        elif name == "metadata":
            self._usage = usage_of(event.get("usage"))
            if self._stop is not None:
                self._finish(out)
        elif name != "messageStart":
            log.debug("Converse stream event %r skipped", name)

    def _block_start(self, event: Mapping[str, Any], out: list[bytes]) -> None:
        start = event.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict):
            return  # an image or tool result output block: no Anthropic block
        self._open = event.get("contentBlockIndex")
        self._blocks.tool(str(use.get("toolUseId", "")), str(use.get("name", "")), out)

    def _delta(self, event: Mapping[str, Any], out: list[bytes]) -> None:
        delta = event.get("delta")
        index = event.get("contentBlockIndex")
        if not isinstance(delta, dict):
            self._fail(out, 502, "invalid contentBlockDelta from Bedrock: no delta object")
            return
        blocks = self._blocks
        text, use, reasoning = delta.get("text"), delta.get("toolUse"), delta.get("reasoningContent")
        if isinstance(use, dict):
            partial = use.get("input")
            if blocks.kind != A.BlockWriter.TOOL or self._open != index:
                self._fail(out, 502, "invalid contentBlockDelta from Bedrock: tool input for a block never started")
            elif isinstance(partial, str) and partial:
                blocks.tool_input(blocks.index, partial, out)
            return
        if isinstance(text, str):
            self._switch(index, A.BlockWriter.TEXT, out)
            if text:
                blocks.text(text, out)
        elif isinstance(reasoning, dict) and self._show_thinking:
            thought = reasoning.get("text")  # a signature or redacted content has no Anthropic field here
            if isinstance(thought, str) and thought:
                self._switch(index, A.BlockWriter.THINKING, out)
                blocks.thinking(thought, out)

    def _switch(self, index: Any, kind: int, out: list[bytes]) -> None:
        """Close the open block when the next delta belongs to another Converse block, even one of
        the same kind (two text blocks in a row stay two)."""
        if self._open != index or self._blocks.kind != kind:
            self._blocks.close(out)
            self._open = index

    def _finish(self, out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            out.append(A.message_start_frame(self._message_id, self._model, self._estimate))
        self._blocks.close(out)
        usage = self._usage or Usage()
        out.append(A.message_delta_frame(self._stop or "end_turn", A.anthropic_usage(usage)))
        out.append(A.MESSAGE_STOP_FRAME)
        self._done = True

    def _fail(self, out: list[bytes], status: int, message: str) -> None:
        self._blocks.close(out)
        out.append(A.error_frame(status, message))
        self._done = True
