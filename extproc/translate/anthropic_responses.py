"""Client speaks Anthropic Messages, provider speaks the OpenAI Responses API (``POST {base}/responses``).

This is the one codec between Responses and the hub format (Anthropic Messages) on the provider
side; an OpenAI Chat client reaches a Responses provider through it too (extproc.translate.chained).

Request: system -> ``instructions``; messages -> ``input`` items in order: user text, images and
documents -> a user message of ``input_text`` / ``input_image`` / ``input_file`` parts; assistant
text -> an assistant message of ``output_text`` parts; ``tool_use`` -> a ``function_call`` item;
``tool_result`` -> a ``function_call_output`` item (its text, or text and image parts; ``is_error``
prefixes ``"Error: "``); ``system``-role messages inside ``messages`` (Claude Code's environment
block) -> system messages in place. Choices made where the formats differ:

- ``store: false`` always: the gateway never asks a provider to keep state for it.
- Tools -> function tools with ``strict: false`` unless the client asked for strict (Responses
  defaults to strict, which most Anthropic tool schemas do not satisfy). Anthropic's web search
  tool -> the provider's ``web_search`` tool for targets with the ``web_search`` capability (its
  answer's text and citations come back as text; its ``web_search_call`` items have no Anthropic
  block a client could replay); other server tools and deferred tools not yet loaded are left
  out, as for Chat providers.
- ``tool_choice`` auto/any/none/tool -> "auto"/"required"/"none"/``{"type":"function"}``;
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``.
- ``max_tokens`` -> ``max_output_tokens`` (clamped to the target's limit, and at least 16, the
  Responses minimum); ``stop_sequences`` and ``top_k`` have no Responses field: dropped.
- ``thinking`` / ``output_config.effort`` -> ``reasoning: {effort, summary: "auto"}`` for targets
  with the ``thinking`` capability (the same effort scale as for Chat providers); no summary is
  asked for with ``thinking.display: "omitted"``. Thinking blocks in history are dropped (their
  signatures are not OpenAI's, and a Responses provider's reasoning never reached the client).
- ``output_config.format`` -> ``text.format`` json_schema; ``metadata.user_id`` ->
  ``safety_identifier`` (SHA-256 hex when over 64 characters, as for Chat providers).

Response: a ``response`` object or its typed SSE events -> an Anthropic Message or stream.
Reasoning summaries become thinking blocks with an empty signature (never a fabricated one);
a reasoning item's ``encrypted_content`` has no place in an Anthropic client's history: dropped,
with a debug log. ``status: incomplete`` for ``max_output_tokens`` -> ``stop_reason: max_tokens``.
Usage: Responses counts cached tokens inside ``input_tokens``; Anthropic counts them apart.
"""

from __future__ import annotations

import hashlib
import logging
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
from extproc.translate.wire import as_int, error_message, error_status, short

log = logging.getLogger("ccr.extproc.translate")

_USER_ID_LIMIT = 64
_MIN_OUTPUT_TOKENS = 16  # the Responses API refuses a smaller max_output_tokens
_EFFORT_VALUES = ("low", "medium", "high", "max")
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


# --- usage ------------------------------------------------------------------------------------------


def usage_from_responses(usage: Any) -> Usage:
    """A Responses ``usage`` object -> Anthropic-meaning Usage (cached tokens counted apart;
    reasoning tokens are already inside ``output_tokens``)."""
    if not isinstance(usage, dict):
        return Usage()
    total = as_int(usage.get("input_tokens"))
    details = usage.get("input_tokens_details")
    cached = min(as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0, total)
    return Usage(
        input_tokens=total - cached,
        output_tokens=as_int(usage.get("output_tokens")),
        cache_read_input_tokens=cached,
    )


def _effort(request: AnthropicRequest) -> str | None:
    """Responses' reasoning effort for Anthropic's thinking and effort settings (as for Chat)."""
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


# --- request ----------------------------------------------------------------------------------------


def _part(chat_part: dict[str, Any]) -> dict[str, Any]:
    """A Chat content part (what ``A.UserBlocks`` makes) -> a Responses input content part."""
    kind = chat_part["type"]
    if kind == "text":
        return {"type": "input_text", "text": chat_part["text"]}
    if kind == "image_url":
        return {"type": "input_image", "image_url": chat_part["image_url"]["url"], "detail": "auto"}
    file = chat_part["file"]  # "file": a PDF as a data URL
    return {"type": "input_file", "filename": file["filename"], "file_data": file["file_data"]}


class _RequestBuilder(A.UserBlocks):
    """One Anthropic request -> one Responses request body. Tracks a cheap input-token estimate."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target
        self.items: list[dict[str, Any]] = []

    def build(self, request: AnthropicRequest) -> dict[str, Any]:
        target = self.target
        out: dict[str, Any] = {"model": target.model}
        instructions = "\n\n".join(request.system)
        if instructions:
            out["instructions"] = instructions
        for i, message in enumerate(request.messages):
            self.message(i, message["role"], message["content"])
        out["input"] = self.items
        max_tokens = request.max_tokens
        assert max_tokens is not None  # a generate request (parse_request checked it)
        if target.max_output_tokens is not None:
            max_tokens = min(max_tokens, target.max_output_tokens)
        out["max_output_tokens"] = max(max_tokens, _MIN_OUTPUT_TOKENS)
        if request.temperature is not None:
            out["temperature"] = request.temperature
        if request.top_p is not None:
            out["top_p"] = request.top_p
        user_id = request.user_id
        if user_id is not None:
            too_long = len(user_id) > _USER_ID_LIMIT
            out["safety_identifier"] = hashlib.sha256(user_id.encode()).hexdigest() if too_long else user_id
        self.tools(request, out)
        if request.answer_schema is not None:
            out["text"] = {
                "format": {"type": "json_schema", "name": "answer", "schema": request.answer_schema, "strict": False}
            }
        effort = _effort(request)
        if effort is not None and "thinking" in target.capabilities:
            reasoning: dict[str, Any] = {"effort": effort}
            if request.thinking is None or request.thinking.shown:
                reasoning["summary"] = "auto"
            out["reasoning"] = reasoning
        out["store"] = False
        if target.stream:
            out["stream"] = True
        return out

    def tools(self, request: AnthropicRequest, out: dict[str, Any]) -> None:
        # Anthropic's web search server tool -> the provider's own, where the policy says it has one.
        search = request.web_search and "web_search" in self.target.capabilities
        if not request.tools and not search:
            return
        functions: list[dict[str, Any]] = [{"type": "web_search"}] if search else []
        for tool in request.tools:
            function: dict[str, Any] = {"type": "function", "name": tool.name}
            if tool.description:
                function["description"] = tool.description
            function["parameters"] = tool.schema
            function["strict"] = tool.strict is True
            functions.append(function)
        out["tools"] = functions
        choice = request.tool_choice
        if choice is None or (choice.mode == "tool" and choice.name in request.dropped_tools):
            return
        if choice.mode == "tool":
            out["tool_choice"] = {"type": "function", "name": choice.name}
        else:
            out["tool_choice"] = _TOOL_CHOICES[choice.mode]
        if not request.parallel_tool_calls and choice.mode != "none":
            out["parallel_tool_calls"] = False

    # --- messages ----------------------------------------------------------------------------

    def message(self, i: int, role: str, content: Any) -> None:
        if role == "system":  # Claude Code's environment block after the first user turn
            text = "\n\n".join(A.system_texts(content, f"messages.{i}.content"))
            if text:
                self.items.append(_message("system", [{"type": "input_text", "text": text}]))
            return
        if isinstance(content, str):
            if content:
                kind = "input_text" if role == "user" else "output_text"
                self.items.append(_message(role, [{"type": kind, "text": content}]))
            return
        if role == "user":
            self.user(i, content)
        else:
            self.assistant(i, content)

    def user(self, i: int, content: Sequence[Mapping[str, Any]]) -> None:
        parts: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            path = f"messages.{i}.content.{j}"
            if block["type"] == "tool_result":
                self.flush("user", parts)
                self.items.append(self.tool_result(path, block))
            else:
                parts.extend(_part(p) for p in self.content_block(path, block))
        self.flush("user", parts)

    def assistant(self, i: int, content: Sequence[Mapping[str, Any]]) -> None:
        parts: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block["type"]
            path = f"messages.{i}.content.{j}"
            if kind == "text":
                text = self.text(path, block)
                if text:
                    parts.append({"type": "output_text", "text": text})
            elif kind == "tool_use":
                self.flush("assistant", parts)
                arguments = orjson.dumps(block.get("input", {})).decode()
                self.items.append(
                    {"type": "function_call", "call_id": block["id"], "name": block["name"], "arguments": arguments}
                )
            elif kind not in A.DROPPED_BLOCKS:
                raise ClientRequestError(f"{path}: unknown block type {short(kind)}")
        self.flush("assistant", parts)

    def flush(self, role: str, parts: list[dict[str, Any]]) -> None:
        if parts:
            self.items.append(_message(role, list(parts)))
            parts.clear()

    def tool_result(self, path: str, block: Mapping[str, Any]) -> dict[str, Any]:
        content = block.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "input_text", "text": content})
        elif isinstance(content, list):
            for k, inner in enumerate(content):
                inner_path = f"{path}.content.{k}"
                if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
                    raise ClientRequestError(f"{inner_path}: must be an object with a string 'type'")
                parts.extend(_part(p) for p in self.content_block(inner_path, inner))
        elif content is not None:
            raise ClientRequestError(f"{path}.content: must be a string or an array of content blocks")
        error = block.get("is_error") is True
        output: str | list[dict[str, Any]]
        if all(p["type"] == "input_text" for p in parts):
            output = "\n".join(p["text"] for p in parts)
            output = "Error: " + output if error else output
        else:  # images or files: the parts themselves (a function_call_output may carry them)
            output = [{"type": "input_text", "text": "Error:"}, *parts] if error else parts
        return {"type": "function_call_output", "call_id": block["tool_use_id"], "output": output}


def _message(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": content}


# --- response: a whole Response object --------------------------------------------------------------


def message_id(response_id: Any) -> str:
    if not isinstance(response_id, str) or not response_id:
        return "msg_unknown"
    return "msg_" + response_id.removeprefix("resp_")


def _stop_reason(response: Mapping[str, Any], has_tools: bool, refused: bool) -> str:
    if refused:
        return "refusal"
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if response.get("status") == "incomplete" or reason is not None:
        if reason == "max_output_tokens":
            return "max_tokens"
        if reason == "content_filter":
            return "refusal"
    return "tool_use" if has_tools else "end_turn"


def _drop_encrypted(item: Mapping[str, Any]) -> None:
    if item.get("encrypted_content"):
        log.debug("reasoning item %s: encrypted_content dropped (an Anthropic client cannot carry it)", item.get("id"))


def _reasoning_text(item: Mapping[str, Any]) -> str:
    """The summary of a reasoning item (or its raw reasoning text, which open-weight servers send)."""
    _drop_encrypted(item)
    texts = [s["text"] for s in item.get("summary") or () if isinstance(s, dict) and isinstance(s.get("text"), str)]
    if not texts:
        texts = [c["text"] for c in item.get("content") or () if isinstance(c, dict) and isinstance(c.get("text"), str)]
    return "\n\n".join(t for t in texts if t)


def _check_response(response: Any) -> dict[str, Any]:
    if not isinstance(response, dict):
        raise UpstreamProtocolError("response is not a JSON object")
    if response.get("status") == "failed" or ("error" in response and "output" not in response):
        raise UpstreamProtocolError(f"upstream error: {error_message(response.get('error')) or 'unknown'}")
    if not isinstance(response.get("output"), list):
        raise UpstreamProtocolError("response has no output array")
    return response


def message_from_response(response: Any, fallback_model: str, show_thinking: bool) -> tuple[dict[str, Any], Usage]:
    """A whole Responses ``response`` -> an Anthropic Message (and the provider's usage)."""
    response = _check_response(response)
    content: list[dict[str, Any]] = []
    refused = False
    for n, item in enumerate(response["output"]):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "reasoning":
            text = _reasoning_text(item)
            if text and show_thinking:
                content.append({"type": "thinking", "thinking": text, "signature": ""})
        elif kind == "message":
            for part in item.get("content") or ():
                if not isinstance(part, dict):
                    continue
                text = part.get("text") if part.get("type") == "output_text" else part.get("refusal")
                refused = refused or (part.get("type") == "refusal" and bool(text))
                if isinstance(text, str) and text:
                    if content and content[-1]["type"] == "text":
                        content[-1]["text"] += "\n\n" + text
                    else:
                        content.append({"type": "text", "text": text})
        elif kind == "function_call":
            call_id = item.get("call_id") if isinstance(item.get("call_id"), str) and item["call_id"] else f"call_{n}"
            name = item.get("name") if isinstance(item.get("name"), str) else ""
            content.append(
                {"type": "tool_use", "id": call_id, "name": name, "input": O.parse_arguments(item.get("arguments"))}
            )
    has_tools = any(block["type"] == "tool_use" for block in content)
    usage = usage_from_responses(response.get("usage"))
    model = response.get("model")
    message = {
        "id": message_id(response.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) and model else fallback_model,
        "content": content,
        "stop_reason": _stop_reason(response, has_tools, refused),
        "stop_sequence": None,
        "usage": A.anthropic_usage(usage),
    }
    return message, usage


def events_from_response(response: Any) -> list[dict[str, Any]]:
    """A whole ``response`` as the typed events a Responses stream would have carried: lets the
    stream machine answer a streaming client when the provider answered JSON."""
    response = _check_response(response)
    start = {**response, "output": [], "usage": None, "status": "in_progress"}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": start}]
    for n, item in enumerate(response["output"]):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            events.append({"type": "response.output_item.added", "output_index": n, "item": {**item, "content": []}})
            for c, part in enumerate(item.get("content") or ()):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    delta = {"type": "response.output_text.delta", "output_index": n, "content_index": c}
                    events.append({**delta, "delta": part.get("text")})
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    delta = {"type": "response.refusal.delta", "output_index": n, "content_index": c}
                    events.append({**delta, "delta": part.get("refusal")})
        elif kind == "reasoning":
            events.append({"type": "response.output_item.added", "output_index": n, "item": {**item, "summary": []}})
            for s, part in enumerate(item.get("summary") or ()):
                if isinstance(part, dict):
                    delta = {"type": "response.reasoning_summary_text.delta", "output_index": n, "summary_index": s}
                    events.append({**delta, "delta": part.get("text")})
            for c, part in enumerate(() if item.get("summary") else item.get("content") or ()):
                if isinstance(part, dict):
                    delta = {"type": "response.reasoning_text.delta", "output_index": n, "content_index": c}
                    events.append({**delta, "delta": part.get("text")})
        elif kind == "function_call":
            events.append({"type": "response.output_item.added", "output_index": n, "item": {**item, "arguments": ""}})
            events.append(
                {"type": "response.function_call_arguments.delta", "output_index": n, "delta": item.get("arguments")}
            )
        events.append({"type": "response.output_item.done", "output_index": n, "item": item})
    terminal = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    events.append({"type": terminal, "response": response})
    return events


# --- response: the typed event stream ---------------------------------------------------------------


class _Stream(SseStreamMachine):
    """Responses SSE events -> Anthropic stream events. All stream state lives here.

    Blocks open lazily and close when their output item is done (or the next block opens), so every
    content_block_start is matched by its stop in order. Function calls are keyed by their
    ``output_index``; arguments a provider only sent in ``function_call_arguments.done`` (or in
    ``output_item.done``) are sent then. A fragment for a call whose block is already closed (no
    known provider interleaves items) still goes to that call's block index rather than being
    dropped: clients accumulate input by index. A stream that ends without ``response.completed`` /
    ``response.incomplete`` was cut short: it ends with an error event, never a made-up stop.
    """

    __slots__ = (
        "blocks",
        "done",
        "estimate",
        "message_id",
        "model",
        "refused",
        "show_thinking",
        "started",
        "summary_part",
        "tool_args",
        "tools",
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
        self.tools: dict[int, int] = {}  # output_index of a function_call -> Anthropic block index
        self.tool_args: dict[int, bool] = {}  # output_index -> some argument text was sent
        self.summary_part: tuple[Any, Any] | None = None  # (output_index, summary_index) last written
        self.refused = False

    def sse_event(self, event: SSEEvent, out: list[bytes]) -> Usage | None:
        if self.done or not event.data:
            return None
        if event.data == "[DONE]":  # not Responses, but some compatible servers end with it
            return None
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self.fail(out, 502, "upstream sent an invalid stream event")
        if not isinstance(obj, dict):
            return self.fail(out, 502, "upstream sent an invalid stream event")
        return self.event(obj, out)

    def fail(self, out: list[bytes], status: int, message: str) -> None:
        out.append(A.error_frame(status, message))
        self.done = True

    def start(self, response: Any, out: list[bytes]) -> None:
        self.started = True
        response = response if isinstance(response, dict) else {}
        self.message_id = message_id(response.get("id"))
        model = response.get("model")
        if isinstance(model, str) and model:
            self.model = model
        out.append(A.message_start_frame(self.message_id, self.model, self.estimate))

    def event(self, obj: dict[str, Any], out: list[bytes]) -> Usage | None:
        kind = obj.get("type")
        if kind == "error":
            return self.fail(out, error_status(obj), error_message(obj) or "upstream stream error")
        if kind == "response.failed":
            response = obj.get("response")
            err = response.get("error") if isinstance(response, dict) else None
            return self.fail(out, error_status(err), error_message(err) or "upstream response failed")
        if not self.started:
            self.start(obj.get("response") if kind in ("response.created", "response.in_progress") else None, out)
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                self.refused = self.refused or kind == "response.refusal.delta"
                self.blocks.text(delta, out)
        elif kind == "response.reasoning_summary_text.delta" or kind == "response.reasoning_text.delta":
            self.thinking(obj, out)
        elif kind == "response.function_call_arguments.delta":
            self.arguments(obj.get("output_index"), obj.get("delta"), out)
        elif kind == "response.function_call_arguments.done":
            self.arguments(obj.get("output_index"), obj.get("arguments"), out, only_if_none_sent=True)
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            self.item(obj.get("output_index"), obj.get("item"), out, done=kind == "response.output_item.done")
        elif kind == "response.completed" or kind == "response.incomplete":
            return self.finish_with(obj.get("response"), out)
        return None

    def thinking(self, obj: dict[str, Any], out: list[bytes]) -> None:
        delta = obj.get("delta")
        if not self.show_thinking or not isinstance(delta, str) or not delta:
            return
        part = (obj.get("output_index"), obj.get("summary_index", obj.get("content_index")))
        if self.blocks.kind == A.BlockWriter.THINKING and self.summary_part not in (None, part):
            delta = "\n\n" + delta  # a new summary part of the same reasoning: one thinking block
        self.summary_part = part
        self.blocks.thinking(delta, out)

    def item(self, index: Any, item: Any, out: list[bytes], done: bool) -> None:
        if not isinstance(item, dict) or not isinstance(index, int):
            return
        kind = item.get("type")
        if kind == "function_call":
            self.open_tool(index, item, out)
            if done:
                self.arguments(index, item.get("arguments"), out, only_if_none_sent=True)
        elif kind == "reasoning" and done:
            _drop_encrypted(item)
        if done:
            self.blocks.close(out)

    def open_tool(self, index: int, item: Mapping[str, Any], out: list[bytes]) -> int:
        block = self.tools.get(index)
        if block is None:
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"toolu_{self.message_id.removeprefix('msg_')}_{self.blocks.index + 1}"
            name = item.get("name")
            block = self.blocks.tool(call_id, name if isinstance(name, str) else "", out)
            self.tools[index] = block
        return block

    def arguments(self, index: Any, fragment: Any, out: list[bytes], only_if_none_sent: bool = False) -> None:
        if not isinstance(index, int) or not isinstance(fragment, str) or not fragment:
            return
        if only_if_none_sent and self.tool_args.get(index):
            return
        block = self.open_tool(index, {}, out)
        self.tool_args[index] = True
        self.blocks.tool_input(block, fragment, out)

    def finish_with(self, response: Any, out: list[bytes]) -> Usage | None:
        response = response if isinstance(response, dict) else {}
        self.blocks.close(out)
        self.done = True
        stop_reason = _stop_reason(response, bool(self.tools), self.refused)
        if isinstance(response.get("usage"), dict):
            usage = usage_from_responses(response["usage"])
            out.append(A.message_delta_frame(stop_reason, A.anthropic_usage(usage)))
            out.append(A.MESSAGE_STOP_FRAME)
            return usage
        # No usage from the provider: the frame needs numbers, so the estimate goes to the client,
        # but nothing is reported as the provider's usage.
        out.append(A.message_delta_frame(stop_reason, A.anthropic_usage(Usage(input_tokens=self.estimate))))
        out.append(A.MESSAGE_STOP_FRAME)
        return None

    def finish(self, out: list[bytes]) -> Usage | None:
        if self.done:
            return None
        if not self.started:
            return self.fail(out, 502, "upstream closed the stream without a response")
        self.blocks.close(out)
        return self.fail(out, 502, "upstream closed the stream before the response completed")


class AnthropicToResponses(FromAnthropicClient[_Stream]):
    """One instance per request; not thread-safe."""

    provider_api = Api.RESPONSES
    upstream_path = "/responses"

    def _builder(self, target: Target) -> _RequestBuilder:
        return _RequestBuilder(target)

    def _machine_for(self, model: str, estimate: int, show_thinking: bool) -> _Stream:
        return _Stream(model, estimate, show_thinking)

    def _replay_as_stream(self, machine: _Stream, response: Any) -> TranslatedChunk:
        return machine.replay(events_from_response, response)

    def _whole(self, response: Any) -> TranslatedChunk:
        message, usage = message_from_response(response, self._model, self._show_thinking)
        return TranslatedChunk(body=orjson.dumps(message), usage=usage)
