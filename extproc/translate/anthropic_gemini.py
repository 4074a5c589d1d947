"""Anthropic Messages client -> Google Gemini ``generateContent`` provider.

Request: system -> ``systemInstruction``; messages -> ``contents`` (user/model; consecutive messages
of one role merged, empty ones dropped); ``system``-role messages inside ``messages`` (Claude Code's
environment block) -> text parts of the user turn where they stand, so their order is kept (Gemini's
contents have no system role); text/image/document blocks -> text/inlineData/fileData parts;
assistant ``tool_use`` -> ``functionCall`` (with its id, plus ``SKIP_SIGNATURE`` on the first call of
a turn); ``tool_result`` -> ``functionResponse`` named after the earlier ``tool_use`` with that id;
tools -> ``functionDeclarations`` with cleaned schemas, the web_search server tool -> ``googleSearch``
(Gemini 2.x refuses googleSearch next to function declarations; Gemini 3 accepts both), other
Anthropic-defined tools are dropped (as for OpenAI-format providers);
tool_choice -> ``toolConfig``; max_tokens (clamped) / temperature / top_p / top_k / stop_sequences /
thinking / ``output_config`` (effort -> thinking budget, as Google maps OpenAI's reasoning_effort;
format -> ``responseSchema``) -> ``generationConfig``; ``thinking.display: "omitted"`` -> no thought
summaries asked for, none sent to the client. Tools with ``defer_loading`` are declared once a
``tool_reference`` loaded them (Claude Code's ToolSearch); Claude Code's billing system block is dropped. Thinking blocks in the history are dropped (their signatures are not
Gemini's), as are Anthropic server-tool blocks (web_search_tool_result etc.: Gemini cannot replay
another provider's server tools) and Anthropic-only fields (metadata, context_management,
output_config, service_tier, cache_control, citations).

Response: Gemini parts -> text / thinking / tool_use blocks. Thinking blocks carry ``signature: ""``:
Gemini's ``thoughtSignature`` is not an Anthropic signature and none is invented. Tool-use ids are
``toolu_<turn>_<index>_<name>`` (see ``gemini_common.tool_id``); the message id is
``msg_<responseId>``. Streams: one ``message_start`` (usage
from the first chunk, or an estimate from the request size), ``ping``, blocks opened and closed in
order (each function call is one block with ONE ``input_json_delta`` holding its full arguments),
then ``message_delta`` with the exact usage and ``message_stop``. An error payload mid-stream ends
the stream with an ``event: error`` frame.

One instance per request; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson

from extproc.sse import encode_event
from extproc.translate import anthropic_schema as A
from extproc.translate import gemini_common as g
from extproc.translate.base import (
    Api,
    ClientRequestError,
    ResponseContext,
    Target,
    TranslatedChunk,
    UpstreamProtocolError,
    UpstreamRequest,
    Usage,
)
from extproc.translate.buffering import ResponsePhases
from extproc.translate.client_request import AnthropicRequest
from extproc.translate.gemini_schema import clean_schema


def _stop_reason(finish: str | None, calls: int) -> str:
    if finish == "MAX_TOKENS":
        return "max_tokens"
    if finish in g.REFUSALS:
        return "refusal"
    return "tool_use" if calls else "end_turn"


class AnthropicToGemini(g.GeminiResponse):
    client_api = Api.ANTHROPIC
    provider_api = Api.GEMINI
    rewrites_response = True

    def __init__(self) -> None:
        super().__init__()
        self._blocks = A.BlockWriter()
        self._show_thinking = True

    # -- request ---------------------------------------------------------------------------------

    def request(self, request: AnthropicRequest, target: Target) -> UpstreamRequest:
        self._model = target.model
        self._stream = target.stream
        self._show_thinking = request.thinking is None or request.thinking.shown
        self._turn = request.turns
        system = [{"text": text} for text in request.system]
        out = g.generate_content(_contents(request.messages), system, request, _generation_config(request, target))
        raw = orjson.dumps(out)
        self._estimate = max(1, len(raw) // 4)
        return UpstreamRequest(path=g.upstream_path(target), body=raw)

    def prime(self, context: ResponseContext) -> None:
        self._model = context.model
        self._stream = context.stream
        self._show_thinking = context.show_thinking
        self._turn = context.turn
        self._estimate = context.estimate

    # -- response --------------------------------------------------------------------------------

    def _whole(self, body: bytes) -> TranslatedChunk:
        reader = self._reader
        blocks: list[dict[str, Any]] = []
        for event in reader.whole(body):
            kind = event.kind
            if kind is g.THOUGHT and not self._show_thinking:
                continue
            if kind is g.TEXT or kind is g.THOUGHT:
                key = "text" if kind is g.TEXT else "thinking"
                if blocks and blocks[-1]["type"] == key:
                    blocks[-1][key] += event.text
                elif kind is g.TEXT:
                    blocks.append({"type": "text", "text": event.text})
                else:
                    blocks.append({"type": "thinking", "thinking": event.text, "signature": ""})
            elif kind is g.CALL:
                tid = g.tool_id("toolu_", self._turn, event.index, event.name)
                blocks.append({"type": "tool_use", "id": tid, "name": event.name, "input": event.args})
        usage = g.usage_of(reader.meta)
        message = {
            "id": self._message_id(),
            "type": "message",
            "role": "assistant",
            "model": reader.model or self._model,
            "content": blocks,
            "stop_reason": _stop_reason(reader.finish, reader.calls),
            "stop_sequence": None,
            "usage": _usage_json(usage),
        }
        return TranslatedChunk(body=orjson.dumps(message), usage=usage)

    def _message_id(self) -> str:
        return "msg_" + (self._reader.response_id or "gemini")

    def _render(self, event: g.GeminiEvent, out: list[bytes]) -> None:
        kind = event.kind
        if kind is g.TEXT:
            self._blocks.text(event.text, out)
        elif kind is g.THOUGHT:
            if self._show_thinking:
                self._blocks.thinking(event.text, out)
        elif kind is g.CALL:
            tool_id = g.tool_id("toolu_", self._turn, event.index, event.name)
            block = self._blocks.tool(tool_id, event.name, out)
            self._blocks.tool_input(block, orjson.dumps(event.args).decode(), out)  # Gemini sends whole calls
            self._blocks.close(out)
        elif kind is g.START:
            self._start(event.meta, out)

    def _start(self, meta: Mapping[str, Any] | None, out: list[bytes]) -> None:
        usage = g.usage_of(meta)
        if not usage.input_tokens and not usage.cache_read_input_tokens:
            usage = Usage(input_tokens=self._estimate)  # no prompt count yet: the size estimate
        start_usage = _usage_json(usage)
        start_usage["output_tokens"] = 0
        message = {
            "id": self._message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._reader.model or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        out.append(encode_event(orjson.dumps({"type": "message_start", "message": message}), "message_start"))
        out.append(A.PING_FRAME)

    def _finish(self, out: list[bytes]) -> Usage:
        self._blocks.close(out)
        reader = self._reader
        usage = g.usage_of(reader.meta)
        out.append(A.message_delta_frame(_stop_reason(reader.finish, reader.calls), _usage_json(usage)))
        out.append(A.MESSAGE_STOP_FRAME)
        self._closed = True
        return usage

    def _error_frame(self, status: int, message: str) -> bytes:
        return A.error_frame(status, message)


class AnthropicToGeminiCountTokens(ResponsePhases):
    """``POST /v1/messages/count_tokens`` forwarded to Gemini's ``countTokens`` (policy:
    ``forward_count_tokens``): the request translated as for generateContent and wrapped as the
    ``generateContentRequest`` (the form that carries system instruction and tools), Gemini's
    ``totalTokens`` answered as ``input_tokens``. One instance per request; not thread-safe."""

    client_api = Api.ANTHROPIC
    provider_api = Api.GEMINI
    rewrites_response = True

    def request(self, request: AnthropicRequest, target: Target) -> UpstreamRequest:
        generate = AnthropicToGemini().request(request, replace(target, stream=False))
        wrapped = b'{"generateContentRequest":{"model":' + orjson.dumps(f"models/{target.model}") + b","
        path = f"{target.base_path}/models/{target.model}:countTokens"
        return UpstreamRequest(path=path, body=wrapped + generate.body[1:] + b"}")

    def prime(self, context: ResponseContext) -> None:
        """Reading a count needs nothing of the request."""

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return (("content-type", "application/json"),)

    def _whole_body(self, raw: bytes) -> TranslatedChunk:
        try:
            total = orjson.loads(raw).get("totalTokens")
        except (orjson.JSONDecodeError, AttributeError):
            total = None
        if not isinstance(total, int) or isinstance(total, bool):
            raise UpstreamProtocolError("countTokens answered without an integer totalTokens")
        return TranslatedChunk(body=orjson.dumps({"input_tokens": total}))

    def _error_message(self, status: int, body: bytes) -> str:
        return g.error_message(body)


def _usage_json(usage: Usage) -> dict[str, Any]:
    # Gemini never reports cache writes; key order kept as this translator always sent it.
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": 0,
    }


# -- request helpers ------------------------------------------------------------------------------


def _contents(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, for the functionResponse that answers it
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if role == "assistant":
            parts = _assistant_parts(content, i, names)
            role = "model"
        elif role == "user":
            parts = _user_parts(content, i, names)
        else:  # "system": Claude Code's environment block after the first user turn
            parts = [{"text": text} for text in A.system_texts(content, f"messages.{i}.content")]
            role = "user"
        if not parts:
            continue  # Gemini rejects a content without parts (e.g. a turn that was only thinking)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise ClientRequestError("messages: no message has any content Gemini can take")
    return contents


def _assistant_parts(content: list[Any], i: int, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    signed = False
    for j, block in enumerate(content):
        btype = block["type"]
        if btype == "text":
            if block["text"]:
                parts.append({"text": block["text"]})
        elif btype == "tool_use":
            tid, name = block["id"], block["name"]
            names[tid] = name
            part: dict[str, Any] = {"functionCall": {"id": tid, "name": name, "args": block.get("input", {})}}
            if not signed:
                part["thoughtSignature"] = g.SKIP_SIGNATURE
                signed = True
            parts.append(part)
        elif btype not in A.DROPPED_BLOCKS:
            raise ClientRequestError(f"messages.{i}.content.{j}: unknown block type {btype!r}")
    return parts


def _user_parts(content: list[Any], i: int, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        btype = block["type"]
        path = f"messages.{i}.content.{j}"
        if btype == "text":
            if block["text"]:
                parts.append({"text": block["text"]})
        elif btype in ("image", "document", "search_result"):
            parts.extend(_media_parts(block, btype, path))
        elif btype == "tool_result":
            parts.extend(_tool_result(block, path, names))
        elif btype not in A.DROPPED_BLOCKS:
            raise ClientRequestError(f"{path}: unknown block type {btype!r}")
    return parts


def _media_parts(block: dict[str, Any], btype: str, path: str) -> list[dict[str, Any]]:
    if btype == "search_result":
        pieces = [block.get("title"), block.get("source")]
        pieces += [b.get("text") for b in block.get("content") or () if isinstance(b, dict)]
        text = "\n".join(p for p in pieces if isinstance(p, str) and p)
        return [{"text": text}] if text else []
    source = block.get("source")
    if not isinstance(source, dict):
        raise ClientRequestError(f"{path}.source: must be an object")
    stype = source.get("type")
    if stype == "base64":
        data, mime = source.get("data"), source.get("media_type")
        if not isinstance(data, str) or not isinstance(mime, str) or not mime:
            raise ClientRequestError(f"{path}.source: base64 sources need string data and media_type")
        return [{"inlineData": {"mimeType": mime, "data": data}}]
    if stype == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise ClientRequestError(f"{path}.source.url: must be a non-empty string")
        default = "image/jpeg" if btype == "image" else "application/pdf"
        return [{"fileData": {"mimeType": g.guess_mime(url, default), "fileUri": url}}]
    if btype == "document" and stype == "text":
        data = source.get("data")
        if not isinstance(data, str):
            raise ClientRequestError(f"{path}.source.data: must be a string")
        return [{"text": data}] if data else []
    if btype == "document" and stype == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return [{"text": inner}] if inner else []
        if not isinstance(inner, list):
            raise ClientRequestError(f"{path}.source.content: must be a string or an array")
        return [p for k, b in enumerate(inner) for p in _nested_part(b, f"{path}.source.content.{k}")]
    if stype == "file":
        raise ClientRequestError(f"{path}.source: file_id sources cannot be sent to a Gemini model")
    raise ClientRequestError(f"{path}.source.type: unknown source type {stype!r}")


def _nested_part(block: Any, path: str) -> list[dict[str, Any]]:
    """A block inside a tool_result or a content document: text, image or document."""
    if not isinstance(block, dict):
        raise ClientRequestError(f"{path}: must be an object")
    btype = block.get("type")
    if btype == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise ClientRequestError(f"{path}.text: must be a string")
        return [{"text": text}] if text else []
    if btype in ("image", "document", "search_result"):
        return _media_parts(block, btype, path)
    if btype == "tool_reference":
        return [{"text": A.tool_reference_text(path, block)}]
    raise ClientRequestError(f"{path}: unknown block type {btype!r}")


def _tool_result(block: dict[str, Any], path: str, names: dict[str, str]) -> list[dict[str, Any]]:
    tid = block["tool_use_id"]
    name = names[tid]  # parse_request checked that an earlier tool_use has this id
    content = block.get("content", "")
    extra: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            for part in _nested_part(inner, f"{path}.content.{k}"):
                if "text" in part:
                    texts.append(part["text"])
                else:
                    extra.append(part)  # images etc. follow the response as ordinary parts
        text = "\n".join(texts)
    else:
        raise ClientRequestError(f"{path}.content: must be a string or an array of blocks")
    key = "error" if block.get("is_error") is True else "content"
    response = {"id": tid, "name": name, "response": {key: text}}
    return [{"functionResponse": response}, *extra]


def _generation_config(request: AnthropicRequest, target: Target) -> dict[str, Any]:
    config, max_tokens = g.generation_start(request, target)
    budget = _thinking_budget(request)
    if budget is not None and "thinking" in target.capabilities:
        config["thinkingConfig"] = g.thinking_config(budget, max_tokens)
        if request.thinking is not None and not request.thinking.shown:
            config["thinkingConfig"]["includeThoughts"] = False
    if request.answer_schema is not None:
        config["responseMimeType"] = "application/json"
        config["responseSchema"] = clean_schema(request.answer_schema)
    return config


def _thinking_budget(request: AnthropicRequest) -> int | None:
    """Gemini's thinkingBudget for Anthropic's thinking and effort settings; None = leave it out."""
    thinking = request.thinking
    if thinking is None or thinking.mode == "disabled":
        return None  # effort alone does not turn thinking on: the client did not ask for it
    if thinking.mode == "enabled":
        return thinking.budget
    effort_budget = g.EFFORT_BUDGETS.get(request.effort) if request.effort is not None else None
    return -1 if effort_budget is None else effort_budget  # adaptive; -1: Gemini's dynamic thinking
