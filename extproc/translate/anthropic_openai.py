"""Client speaks Anthropic Messages, provider speaks OpenAI Chat Completions.

Request: system -> a system message; ``system``-role messages inside ``messages`` (Claude Code sends
its environment block as one after the first user turn) -> system messages in place; content blocks ->
OpenAI parts; ``tool_use`` -> ``tool_calls``; ``tool_result`` -> ``tool`` messages placed right after
the assistant message that called them (the rest of that user turn follows them). Choices made where
the formats differ:

- ``thinking`` / ``output_config.effort`` -> ``reasoning_effort`` only for targets with the
  ``thinking`` capability (budget <= 4096 low, <= 16384 medium, above high; adaptive thinking uses
  the effort, default medium). Thinking blocks in history are dropped: unsigned reasoning from
  another provider must never be replayed as if it were the model's own. With ``thinking.display:
  "omitted"`` the provider's reasoning text is not sent to the client.
- ``output_config.format`` (a JSON schema) -> ``response_format`` json_schema.
- Tools with ``defer_loading`` are offered only once a ``tool_reference`` in a tool result loaded
  them (Claude Code's ToolSearch); the reference itself becomes a line of text.
- Claude Code's ``x-anthropic-billing-header`` system block is attribution, not prompt: dropped.
- ``max_tokens`` -> ``max_completion_tokens`` (``max_tokens`` instead for targets with the
  ``max_tokens`` capability: older OpenAI-compatible servers), clamped to the target's limit.
- ``metadata.user_id`` -> ``user``; Claude Code puts a JSON document there, so values over OpenAI's
  64 characters become their SHA-256 hex digest (stable per value, 64 characters).
- ``tool_result`` with ``is_error`` -> content prefixed with ``"Error: "``. Images in a tool result
  (OpenAI tool messages carry text only) go into the user message that follows the tool messages.
- Anthropic server tools (web search, code execution...) cannot run at an OpenAI provider: dropped.
- Anthropic-only fields (top_k, context_management, container, mcp_servers, service_tier, betas,
  cache_control, speed...) are dropped.

Response: OpenAI -> Anthropic, both as a whole message and as a stream state machine (`_Stream`).
Thinking from ``reasoning_content`` becomes a thinking block with an empty signature (never a
fabricated one). Unparseable tool arguments: see ``openai_schema.parse_arguments``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from extproc.sse import SSEEvent
from extproc.translate import anthropic_schema as A
from extproc.translate import openai_schema as O
from extproc.translate.base import (
    Api,
    ClientRequestError,
    Target,
    TranslatedChunk,
    UpstreamProtocolError,
    Usage,
)
from extproc.translate.buffering import FromAnthropicClient, SseStreamMachine
from extproc.translate.client_request import AnthropicRequest
from extproc.translate.wire import error_message, error_status, short

_USER_ID_LIMIT = 64
_EFFORT_VALUES = ("low", "medium", "high", "max")
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _effort(request: AnthropicRequest) -> str | None:
    """OpenAI's reasoning_effort for Anthropic's thinking and effort settings."""
    effort = A.EFFORT_TO_OPENAI[request.effort] if request.effort in _EFFORT_VALUES else None
    thinking = request.thinking
    if thinking is None:
        return effort
    if thinking.mode == "disabled":
        return None
    if thinking.mode == "adaptive":
        return effort or "medium"
    assert thinking.budget is not None  # "enabled" (parse_request checked it)
    return effort or A.effort_for_budget(thinking.budget)


class _RequestBuilder(A.UserBlocks):
    """One Anthropic request -> one OpenAI request body. Tracks a cheap input-token estimate."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target

    # --- top level ---------------------------------------------------------------------------

    def build(self, request: AnthropicRequest) -> dict[str, Any]:
        target = self.target
        out: dict[str, Any] = {"model": target.model}
        messages: list[dict[str, Any]] = []
        system = "\n\n".join(request.system)
        if system:
            messages.append({"role": "system", "content": system})
        self.messages(request.messages, messages)
        out["messages"] = messages

        max_tokens = request.max_tokens
        assert max_tokens is not None  # a generate request (parse_request checked it)
        if target.max_output_tokens is not None:
            max_tokens = min(max_tokens, target.max_output_tokens)
        out["max_tokens" if "max_tokens" in target.capabilities else "max_completion_tokens"] = max_tokens
        if request.temperature is not None:
            out["temperature"] = request.temperature
        if request.top_p is not None:
            out["top_p"] = request.top_p
        if request.stop:
            out["stop"] = list(request.stop)
        user_id = request.user_id
        if user_id is not None:
            out["user"] = hashlib.sha256(user_id.encode()).hexdigest() if len(user_id) > _USER_ID_LIMIT else user_id
        self.tools(request, out)
        if request.answer_schema is not None:
            schema = request.answer_schema
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        effort = _effort(request)
        if effort is not None and "thinking" in target.capabilities:
            out["reasoning_effort"] = effort
        if target.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return out

    # --- tools -------------------------------------------------------------------------------

    def tools(self, request: AnthropicRequest, out: dict[str, Any]) -> None:
        """Anthropic's server tools and deferred tools not yet loaded are left out (see the module
        docstring); a tool choice naming one of them is dropped with it."""
        if not request.tools:
            return
        functions = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description:
                function["description"] = tool.description
            function["parameters"] = tool.schema
            if tool.strict is not None:
                function["strict"] = tool.strict
            functions.append({"type": "function", "function": function})
        out["tools"] = functions
        choice = request.tool_choice
        if choice is None or (choice.mode == "tool" and choice.name in request.dropped_tools):
            return
        out["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "tool"
            else _TOOL_CHOICES[choice.mode]
        )
        if not request.parallel_tool_calls and choice.mode != "none":
            out["parallel_tool_calls"] = False

    # --- messages ----------------------------------------------------------------------------

    def messages(self, messages: Sequence[Mapping[str, Any]], out: list[dict[str, Any]]) -> None:
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "user":
                self.user_message(i, content, out)
            elif role == "assistant":
                self.assistant_message(i, content, out)
            else:  # "system": Claude Code's environment block after the first user turn
                text = "\n\n".join(A.system_texts(content, f"messages.{i}.content"))
                if text:
                    out.append({"role": "system", "content": text})

    def user_message(self, i: int, content: Any, out: list[dict[str, Any]]) -> None:
        if isinstance(content, str):
            out.append({"role": "user", "content": content})
            return
        parts: list[dict[str, Any]] = []
        tool_parts: list[dict[str, Any]] = []  # images/files returned by tools, after the tool messages
        for j, block in enumerate(content):
            kind = block["type"]
            if kind == "tool_result":
                out.append(self.tool_result(f"messages.{i}.content.{j}", block, tool_parts))
            elif kind in A.DROPPED_BLOCKS:
                continue
            else:
                parts.extend(self.content_block(f"messages.{i}.content.{j}", block))
        parts = tool_parts + parts
        if not parts:
            return
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})

    def assistant_message(self, i: int, content: Any, out: list[dict[str, Any]]) -> None:
        if isinstance(content, str):
            if content:
                out.append({"role": "assistant", "content": content})
            return
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block["type"]
            path = f"messages.{i}.content.{j}"
            if kind == "text":
                text = self.text(path, block)
                if text:
                    texts.append(text)
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input", {})).decode()
                function = {"name": block["name"], "arguments": arguments}
                calls.append({"id": block["id"], "type": "function", "function": function})
            elif kind in A.DROPPED_BLOCKS:
                continue
            else:
                raise ClientRequestError(f"{path}: unknown block type {short(kind)}")
        if not texts and not calls:
            return  # e.g. a turn that only held thinking
        message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
        if calls:
            message["tool_calls"] = calls
        out.append(message)

    def tool_result(self, path: str, block: Mapping[str, Any], tool_parts: list[dict[str, Any]]) -> dict[str, Any]:
        tool_id = block["tool_use_id"]
        content = block.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            attached: list[dict[str, Any]] = []
            for k, inner in enumerate(content):
                inner_path = f"{path}.content.{k}"
                if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
                    raise ClientRequestError(f"{inner_path}: must be an object with a string 'type'")
                for part in self.content_block(inner_path, inner):
                    if part["type"] == "text":
                        texts.append(part["text"])
                    else:
                        attached.append(part)
            if attached:
                tool_parts.append({"type": "text", "text": f"Attachments returned by tool call {tool_id}:"})
                tool_parts.extend(attached)
                if not texts:
                    texts.append("(attachments follow in the next message)")
        elif content is not None:
            raise ClientRequestError(f"{path}.content: must be a string or an array of content blocks")
        text = "\n".join(texts)
        if block.get("is_error") is True:
            text = "Error: " + text
        return {"role": "tool", "tool_call_id": tool_id, "content": text}


class _Stream(SseStreamMachine):
    """OpenAI ``chat.completion.chunk`` SSE -> Anthropic stream events. All stream state lives here.

    Blocks are opened lazily and closed before the next one opens, so every content_block_start is
    matched by its stop in order. Tool calls are keyed by the upstream ``index``; a fragment for a
    call whose block is already closed (no known provider interleaves calls) is still sent, to that
    call's block index, rather than dropped: clients accumulate input by index.
    """

    __slots__ = (
        "blocks",
        "done",
        "estimate",
        "finish_reason",
        "message_id",
        "model",
        "open_tool",
        "out_chars",
        "refusal",
        "show_thinking",
        "started",
        "tools",
        "upstream_usage",
    )

    def __init__(self, model: str, estimate: int, show_thinking: bool = True) -> None:
        super().__init__()
        self.model = model
        self.estimate = estimate
        self.show_thinking = show_thinking
        self.started = False
        self.done = False
        self.message_id = "msg_unknown"
        self.blocks = A.BlockWriter()
        self.open_tool: Any = None
        self.tools: dict[Any, int] = {}  # upstream tool-call key -> Anthropic block index
        self.finish_reason: Any = None
        self.refusal = False
        self.upstream_usage: Any = None
        self.out_chars = 0

    def sse_event(self, event: SSEEvent, out: list[bytes]) -> Usage | None:
        if self.done:
            return None
        data = event.data
        if not data:
            return None
        if data == "[DONE]":
            return self.finish(out)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail(out, 502, "upstream sent an invalid stream chunk")
        if not isinstance(obj, dict):
            return self.fail(out, 502, "upstream sent an invalid stream chunk")
        if event.event == "error" or obj.get("error") is not None:
            return self.fail(out, error_status(obj), error_message(obj) or "upstream stream error")
        self.chunk(obj, out)
        return None

    def fail(self, out: list[bytes], status: int, message: str) -> None:
        out.append(A.error_frame(status, message))
        self.done = True

    def chunk(self, obj: dict[str, Any], out: list[bytes]) -> None:
        if not self.started:
            self.started = True
            self.message_id = O.anthropic_message_id(obj.get("id"))
            model = obj.get("model")
            out.append(
                A.message_start_frame(
                    self.message_id, model if isinstance(model, str) and model else self.model, self.estimate
                )
            )
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.upstream_usage = usage
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = O.reasoning_of(delta)
            if reasoning and isinstance(reasoning, str) and self.show_thinking:
                self.thinking(reasoning, out)
            content = delta.get("content")
            if content and isinstance(content, str):
                self.text(content, out)
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):
                self.refusal = True
                self.text(refusal, out)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self.tool(call, out)
            elif isinstance(delta.get("function_call"), dict):
                self.tool({"index": 0, "id": "call_0", "function": delta["function_call"]}, out)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self.finish_reason = finish_reason
            self.blocks.close(out)

    def text(self, text: str, out: list[bytes]) -> None:
        self.out_chars += len(text)
        self.blocks.text(text, out)

    def thinking(self, text: str, out: list[bytes]) -> None:
        self.out_chars += len(text)
        self.blocks.thinking(text, out)

    def tool(self, call: dict[str, Any], out: list[bytes]) -> None:
        key = call.get("index")
        call_id = call.get("id")
        if not isinstance(key, int) or isinstance(key, bool):
            # No index: a new id starts a new call, otherwise it continues the open one.
            if isinstance(call_id, str) and call_id and call_id not in self.tools:
                key = call_id
            else:
                key = self.open_tool if self.blocks.kind == A.BlockWriter.TOOL else call_id
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        index = self.tools.get(key)
        if index is None:
            if not isinstance(call_id, str) or not call_id:
                call_id = f"toolu_{self.message_id.removeprefix('msg_')}_{self.blocks.index + 1}"
            name = function.get("name")
            index = self.blocks.tool(call_id, name if isinstance(name, str) else "", out)
            self.tools[key] = index
            self.open_tool = key
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()  # some servers send the object itself
        if arguments:
            self.out_chars += len(arguments)
            self.blocks.tool_input(index, arguments, out)

    def finish(self, out: list[bytes]) -> Usage | None:
        if self.done:
            return None
        if not self.started:
            self.fail(out, 502, "upstream closed the stream without a response")
            return None
        self.blocks.close(out)
        self.done = True
        stop_reason = "refusal" if self.refusal else O.anthropic_stop_reason(self.finish_reason, bool(self.tools))
        if self.upstream_usage is not None:
            usage = A.usage_from_openai(self.upstream_usage)
            out.append(A.message_delta_frame(stop_reason, A.anthropic_usage(usage)))
            out.append(A.MESSAGE_STOP_FRAME)
            return usage
        # No usage from the provider: the frame needs numbers, so estimates go to the client, but
        # nothing is reported as the provider's usage.
        estimate = Usage(input_tokens=self.estimate, output_tokens=self.out_chars // 4)
        out.append(A.message_delta_frame(stop_reason, A.anthropic_usage(estimate)))
        out.append(A.MESSAGE_STOP_FRAME)
        return None


class AnthropicToOpenAI(FromAnthropicClient[_Stream]):
    """One instance per request; not thread-safe."""

    provider_api = Api.OPENAI
    upstream_path = "/chat/completions"

    def _builder(self, target: Target) -> _RequestBuilder:
        return _RequestBuilder(target)

    def _machine_for(self, model: str, estimate: int, show_thinking: bool) -> _Stream:
        return _Stream(model, estimate, show_thinking)

    def _replay_as_stream(self, machine: _Stream, completion: Any) -> TranslatedChunk:
        out: list[bytes] = []
        try:
            synthetic = O.chunk_from_completion(completion)
        except UpstreamProtocolError as exc:
            machine.fail(out, 502, str(exc))
            return TranslatedChunk(body=b"".join(out))
        machine.chunk(synthetic, out)
        usage = machine.finish(out)
        return TranslatedChunk(body=b"".join(out), usage=usage)

    def _whole(self, completion: Any) -> TranslatedChunk:
        message, usage = O.message_from_completion(completion, self._model)
        if not self._show_thinking:
            message["content"] = [block for block in message["content"] if block.get("type") != "thinking"]
        return TranslatedChunk(body=orjson.dumps(message), usage=usage)
