"""Client speaks OpenAI Chat Completions, provider speaks Anthropic Messages.

Request: system/developer messages -> ``system`` text blocks (hoisted, in order); content parts ->
Anthropic blocks; ``tool_calls`` -> ``tool_use``; ``tool`` (and legacy ``function``) messages ->
``tool_result`` blocks in one user message; consecutive same-role messages merge (tool results
first, as Anthropic requires). Choices made where the formats differ:

- ``max_tokens`` is required by Anthropic: ``max_completion_tokens`` or ``max_tokens``, else 4096
  (plus the thinking budget when thinking is on), clamped to the target's limit.
- ``temperature`` is clamped to Anthropic's 0..1. When both ``temperature`` and ``top_p`` are set,
  ``top_p`` is dropped (current Claude models reject the pair).
- ``reasoning_effort`` -> ``thinking.budget_tokens`` (minimal 1024, low 2048, medium 8192, high
  24576, xhigh 32000; half of max_tokens when it does not fit below it; under 1024 thinking is
  off), only for targets with the ``thinking`` capability, and not when the tool choice forces a
  tool or the request is in the middle of a tool loop (Anthropic then requires the signed thinking
  block of the previous turn, which an OpenAI client cannot send back). With thinking on,
  temperature/top_p are dropped.
- Whitespace-only stop sequences and empty text parts are dropped (Anthropic rejects them).
- ``response_format`` json_object/json_schema -> an instruction appended to the system prompt.
- ``n`` > 1 and audio input are refused; logprobs, seed, penalties, logit_bias are dropped.

Response: Anthropic -> ``chat.completion`` or a ``chat.completion.chunk`` stream (`_Stream`).
Thinking becomes ``reasoning_content``; text blocks are joined with a blank line in both forms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from extproc.sse import SSEEvent
from extproc.translate import anthropic_schema as A
from extproc.translate import openai_schema as O
from extproc.translate import to_anthropic as T
from extproc.translate.base import (
    Api,
    ClientRequestError,
    ResponseContext,
    Target,
    TranslatedChunk,
    UpstreamRequest,
    Usage,
)
from extproc.translate.buffering import JsonOrSseResponse, SseStreamMachine
from extproc.translate.client_request import OpenAIRequest
from extproc.translate.wire import error_message, error_status

_HEADERS = (("anthropic-version", A.ANTHROPIC_VERSION),)


class _RequestBuilder:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.system: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.function_call_id: str | None = None  # legacy function calling has no ids: make them

    def build(self, request: OpenAIRequest) -> dict[str, Any]:
        target = self.target
        self.convert_messages(request.messages)
        self.response_format(request)

        out: dict[str, Any] = {"model": target.model}
        if self.system:
            out["system"] = self.system
        out["messages"] = self.messages
        choice = T.tool_choice(request.tool_choice, request.parallel_tool_calls) if request.tools else None
        if request.tools:
            out["tools"] = [T.tool(tool) for tool in request.tools]
            if choice is not None:
                out["tool_choice"] = choice

        budget = T.thinking_budget(target, self.messages, request.reasoning_effort, choice)
        max_tokens = request.max_tokens or T.DEFAULT_MAX_TOKENS + (budget or 0)
        T.settle_limits(out, target, max_tokens, budget, request.temperature, request.top_p)
        stop = [s for s in request.stop if s.strip()]
        if stop:
            out["stop_sequences"] = stop
        metadata = T.user_metadata(request.user)
        if metadata is not None:
            out["metadata"] = metadata
        if target.stream:
            out["stream"] = True
        return out

    # --- messages ----------------------------------------------------------------------------

    def push(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": blocks})

    def convert_messages(self, messages: Sequence[Mapping[str, Any]]) -> None:
        for i, message in enumerate(messages):
            role = message["role"]
            content = message.get("content")
            path = f"messages.{i}"
            if role in ("system", "developer"):
                self.system.extend(O.content_blocks(path, content, text_only=True))
            elif role == "user":
                self.push("user", O.content_blocks(path, content, text_only=False))
            elif role == "assistant":
                self.push("assistant", self.assistant(path, message))
            elif role == "tool":
                self.push("user", [self.tool_result(path, message["tool_call_id"], content)])
            else:  # "function": the older function-calling API, answering the last function_call
                if self.function_call_id is None:
                    raise ClientRequestError(f"{path}: function message without a preceding function_call")
                self.push("user", [self.tool_result(path, self.function_call_id, content)])
                self.function_call_id = None
        if not self.messages:
            raise ClientRequestError("messages: no user or assistant message with content")

    def tool_result(self, path: str, tool_id: str, content: Any) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id}
        if isinstance(content, str):
            if content:
                block["content"] = content
        elif content is not None:
            parts = O.content_blocks(path, content, text_only=False)
            if parts:
                block["content"] = parts
        return block

    def assistant(self, path: str, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        content = message.get("content")
        blocks: list[dict[str, Any]] = []
        if isinstance(content, list):  # text and refusal parts
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                    raise ClientRequestError(f"{path}.content.{j}: must be a text or refusal part")
                text = part.get(part["type"])
                if not isinstance(text, str):
                    raise ClientRequestError(f"{path}.content.{j}.{part['type']}: required, must be a string")
                if text.strip():
                    blocks.append({"type": "text", "text": text})
        elif isinstance(content, str) and content.strip():
            blocks.append({"type": "text", "text": content})
        for k, call in enumerate(message.get("tool_calls") or ()):
            blocks.append(self.tool_use(f"{path}.tool_calls.{k}", call["id"], call["function"]))
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            self.function_call_id = f"call_{path.rpartition('.')[2]}"
            blocks.append(self.tool_use(f"{path}.function_call", self.function_call_id, legacy))
        return blocks

    def tool_use(self, path: str, call_id: str, function: Any) -> dict[str, Any]:
        """A tool call, or a legacy ``function_call`` (which only this check sees)."""
        if not isinstance(function, dict):
            raise ClientRequestError(f"{path}.function: required, must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ClientRequestError(f"{path}.function.name: required, must be a non-empty string")
        return {"type": "tool_use", "id": call_id, "name": name, "input": O.parse_arguments(function.get("arguments"))}

    def response_format(self, request: OpenAIRequest) -> None:
        instruction = T.json_instruction(request.response_format, request.response_schema)
        if instruction is not None:
            self.system.append(instruction)


_TEXT, _THINKING, _IGNORED = -1, -2, -3  # block kinds; a tool_use block's kind is its tool position


class _Stream(SseStreamMachine):
    """Anthropic stream events -> ``chat.completion.chunk`` SSE. All stream state lives here."""

    __slots__ = (
        "blocks",
        "created",
        "done",
        "finish_sent",
        "include_usage",
        "model",
        "separate",
        "stop_reason",
        "tool_count",
        "usage",
        "writer",
        "wrote",
    )

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__()
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.writer: O.ChunkWriter | None = None
        self.blocks: dict[int, int] = {}  # Anthropic block index -> kind
        self.tool_count = 0
        self.wrote: set[int] = set()  # fields (text, reasoning) that got some output
        self.separate: set[int] = set()  # fields whose next output starts a new block
        self.stop_reason: Any = None
        self.usage = Usage()
        self.finish_sent = False
        self.done = False

    def sse_event(self, event: SSEEvent, out: list[bytes]) -> Usage | None:
        if self.done or not event.data:
            return None
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            self.fail(out, 502, "upstream sent an invalid stream event")
            return None
        if not isinstance(obj, dict):
            self.fail(out, 502, "upstream sent an invalid stream event")
            return None
        return self.event(obj, out)

    def fail(self, out: list[bytes], status: int, message: str, code: str | None = None) -> None:
        out.append(O.error_frame(status, message, code))
        self.done = True

    def start(self, message: Any, out: list[bytes]) -> None:
        message = message if isinstance(message, dict) else {}
        model = message.get("model")
        if isinstance(model, str) and model:
            self.model = model
        self.usage = A.usage_from_anthropic(message.get("usage"))
        self.writer = O.ChunkWriter(A.completion_id(message.get("id")), self.created, self.model)
        out.append(self.writer.delta({"role": "assistant", "content": ""}))

    def event(self, obj: dict[str, Any], out: list[bytes]) -> Usage | None:
        kind = obj.get("type")
        if kind == "error":
            err = obj.get("error")
            code = err.get("type") if isinstance(err, dict) and isinstance(err.get("type"), str) else None
            self.fail(out, error_status(obj), error_message(obj) or "upstream stream error", code)
            return None
        if kind == "ping":
            return None
        writer = self.writer
        if writer is None:
            self.start(obj.get("message") if kind == "message_start" else None, out)
            writer = self.writer
            if kind == "message_start":
                return None
        assert writer is not None
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                return None
            index = obj.get("index")
            block = self.blocks.get(index) if isinstance(index, int) else None
            dtype = delta.get("type")
            if dtype == "text_delta":
                self.text(_TEXT, delta.get("text"), out)
            elif dtype == "thinking_delta":
                self.text(_THINKING, delta.get("thinking"), out)
            elif dtype == "input_json_delta":
                fragment = delta.get("partial_json")
                if fragment and isinstance(fragment, str) and isinstance(block, int) and block >= 0:
                    out.append(writer.tool_arguments(block, fragment))
            return None
        if kind == "content_block_start":
            self.block_start(obj.get("index"), obj.get("content_block"), out)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            self.usage = A.usage_from_anthropic(obj.get("usage"), self.usage)
            if self.finish_sent:
                return None
            out.append(writer.finish(A.finish_reason(self.stop_reason)))
            self.finish_sent = True
            return self.usage
        elif kind == "message_stop":
            self.finish(out)
        return None

    def block_start(self, index: Any, block: Any, out: list[bytes]) -> None:
        assert self.writer is not None
        if not isinstance(block, dict) or not isinstance(index, int):
            return
        kind = block.get("type")
        if kind in ("text", "thinking"):
            field = _TEXT if kind == "text" else _THINKING
            self.blocks[index] = field
            if field in self.wrote:
                self.separate.add(field)
            self.text(field, block.get(kind), out)
        elif kind == "tool_use":
            position = self.tool_count
            self.tool_count += 1
            self.blocks[index] = position
            tool_input = block.get("input")
            arguments = orjson.dumps(tool_input).decode() if isinstance(tool_input, dict) and tool_input else ""
            call = {
                "index": position,
                "id": str(block.get("id", "")),
                "type": "function",
                "function": {"name": str(block.get("name", "")), "arguments": arguments},
            }
            out.append(self.writer.delta({"tool_calls": [call]}))
        else:
            self.blocks[index] = _IGNORED  # redacted thinking, server tools: nothing to show

    def text(self, field: int, text: Any, out: list[bytes]) -> None:
        """Text or reasoning; consecutive blocks of one kind are joined by a blank line, as in
        ``completion_from_message``."""
        if not text or not isinstance(text, str):
            return
        assert self.writer is not None
        if field in self.separate:
            text = "\n\n" + text
            self.separate.discard(field)
        self.wrote.add(field)
        out.append(self.writer.content(text) if field == _TEXT else self.writer.reasoning(text))

    def finish(self, out: list[bytes]) -> Usage | None:
        if self.done:
            return None
        if self.writer is None:
            self.fail(out, 502, "upstream closed the stream without a response")
            return None
        self.done = True
        usage = None
        if not self.finish_sent:
            out.append(self.writer.finish(A.finish_reason(self.stop_reason)))
            usage = self.usage
        if self.include_usage:
            out.append(self.writer.usage(A.openai_usage(self.usage)))
        out.append(O.DONE_FRAME)
        return usage


class OpenAIToAnthropic(JsonOrSseResponse[_Stream]):
    """One instance per request; not thread-safe. ``clock`` gives ``created`` (injectable for tests)."""

    client_api = Api.OPENAI
    provider_api = Api.ANTHROPIC
    rewrites_response = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._include_usage = False

    def request(self, request: OpenAIRequest, target: Target) -> UpstreamRequest:
        upstream = _RequestBuilder(target).build(request)
        self._include_usage = request.include_usage
        self._model = target.model
        self._stream = self._upstream_sse = target.stream
        return UpstreamRequest(path=target.base_path + "/v1/messages", body=orjson.dumps(upstream), headers=_HEADERS)

    def prime(self, context: ResponseContext) -> None:
        self._include_usage = context.include_usage
        self._model = context.model
        self._stream = self._upstream_sse = context.stream

    def _new_stream_machine(self) -> _Stream:
        return _Stream(self._model, int(self._clock()), self._include_usage)

    def _replay_as_stream(self, machine: _Stream, message: Any) -> TranslatedChunk:
        return machine.replay(A.events_from_message, message)

    def _whole(self, message: Any) -> TranslatedChunk:
        completion, usage = A.completion_from_message(message, int(self._clock()), self._model)
        return TranslatedChunk(body=orjson.dumps(completion), usage=usage)
