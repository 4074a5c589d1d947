"""Anthropic Messages wire shapes shared by the translators that speak it on either side.

Stop-reason maps, usage conversion, the thinking budget <-> effort scale, and builders for the
stream frames an Anthropic client expects. Hot-path frames are byte templates (per streamed chunk
the budget is ~0.1 ms): only the variable part goes through ``orjson.dumps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from extproc.translate.base import ClientRequestError, UpstreamProtocolError, Usage
from extproc.translate.errors import anthropic_error_type
from extproc.translate.wire import as_int, error_message, short

ANTHROPIC_VERSION = "2023-06-01"
# Claude Code's first system block, ``x-anthropic-billing-header: cc_version=...;``: attribution for
# Anthropic's billing, not an instruction to the model. Anthropic-format providers get it as sent;
# others do not (its per-build hash would also change the prompt prefix their caches key on).
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"

# Content blocks accepted in a request and dropped toward other providers: reasoning is never
# replayed unsigned; server-tool blocks describe work done at Anthropic that nobody else can continue.
DROPPED_BLOCKS = frozenset(
    {
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)

# OpenAI finish_reason -> Anthropic stop_reason. Unknown reasons become end_turn.
STOP_REASON_FROM_OPENAI = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic stop_reason -> OpenAI finish_reason. pause_turn (a server tool paused the turn) has no
# OpenAI meaning and reads best as "stop"; a full context window is a kind of "length".
FINISH_REASON_FROM_ANTHROPIC = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Thinking budget -> OpenAI reasoning_effort. Claude Code asks for 4000 tokens ("think"), 10000
# ("think hard") and 31999 ("ultrathink"); the thresholds put those in low, medium and high.
_EFFORT_THRESHOLDS = ((4096, "low"), (16384, "medium"))

# Anthropic output_config.effort -> OpenAI reasoning_effort ("max" has no portable equivalent).
EFFORT_TO_OPENAI = {"low": "low", "medium": "medium", "high": "high", "max": "high"}

# OpenAI reasoning_effort -> Anthropic thinking budget_tokens (Anthropic's minimum is 1024).
BUDGET_FOR_EFFORT = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32000}
MIN_THINKING_BUDGET = 1024


def effort_for_budget(budget: int) -> str:
    for limit, effort in _EFFORT_THRESHOLDS:
        if budget <= limit:
            return effort
    return "high"


def system_texts(system: Any, path: str = "system") -> list[str]:
    """The non-empty texts of an Anthropic ``system`` (a string or an array of text blocks), for a
    provider of another format: Claude Code's billing attribution block is left out."""
    if system is None:
        return []
    if isinstance(system, str):
        return [system] if system and not system.startswith(BILLING_HEADER_PREFIX) else []
    if not isinstance(system, list):
        raise ClientRequestError(f"{path}: must be a string or an array of text blocks")
    texts = []
    for k, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ClientRequestError(f"{path}.{k}: must be a text block")
        text = block.get("text")
        if not isinstance(text, str):
            raise ClientRequestError(f"{path}.{k}.text: must be a string")
        if text and not text.startswith(BILLING_HEADER_PREFIX):
            texts.append(text)
    return texts


# --- what Claude Code sends besides plain messages ------------------------------------------------


def thinking_shown(thinking: Any) -> bool:
    """False when the client asked for thinking without its text (``display: "omitted"``): the
    reasoning a provider returns is then not sent on."""
    return not (isinstance(thinking, dict) and thinking.get("display") == "omitted")


def answer_schema(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the answer must follow (structured outputs), or None.

    ``output_config.format`` is the current field (Claude Code's prompt hooks send it);
    ``output_format`` is the beta's."""
    output_config = body.get("output_config")
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    path = "output_config.format"
    if fmt is None:
        fmt, path = body.get("output_format"), "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise ClientRequestError(f"{path}.type: must be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise ClientRequestError(f"{path}.schema: required, must be an object")
    return schema


def hidden_tools(tools: list[Any], messages: Any) -> frozenset[str]:
    """Names of the tools the model may not see yet. A tool with ``defer_loading`` stays hidden
    until a tool search loaded it, that is until a ``tool_reference`` block naming it came back in a
    tool result (Claude Code defers its rarer tools and MCP tools behind its ToolSearch tool)."""
    deferred = {tool.get("name") for tool in tools if isinstance(tool, dict) and tool.get("defer_loading") is True}
    if not deferred:
        return frozenset()
    return frozenset(deferred - referenced_tools(messages))


def referenced_tools(messages: Any) -> set[str]:
    """Names of the tools that ``tool_reference`` blocks in tool results have loaded."""
    names: set[str] = set()
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            inner = block.get("content") if isinstance(block, dict) and block.get("type") == "tool_result" else None
            for item in inner if isinstance(inner, list) else ():
                if isinstance(item, dict) and item.get("type") == "tool_reference":
                    names.add(str(item.get("tool_name")))
    return names


def tool_reference_text(path: str, block: Mapping[str, Any]) -> str:
    """A ``tool_reference`` (a tool search's answer) as text: the tool itself is now offered."""
    name = block.get("tool_name")
    if not isinstance(name, str) or not name:
        raise ClientRequestError(f"{path}.tool_name: required, must be a non-empty string")
    return f"Tool {name} is now available."


# --- usage ------------------------------------------------------------------------------------


def usage_from_openai(usage: Any) -> Usage:
    """OpenAI counts cached tokens inside prompt_tokens; Anthropic counts them apart."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = as_int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if not cached:  # DeepSeek reports its cache hits in its own field
        cached = as_int(usage.get("prompt_cache_hit_tokens"))
    cached = min(cached, prompt)
    return Usage(
        input_tokens=prompt - cached,
        output_tokens=as_int(usage.get("completion_tokens")),
        cache_read_input_tokens=cached,
        cache_creation_input_tokens=0,
    )


def usage_from_anthropic(usage: Any, base: Usage | None = None) -> Usage:
    """Anthropic usage; fields absent here keep their value from ``base`` (message_delta usage only
    carries what changed since message_start)."""
    base = base or Usage()
    if not isinstance(usage, dict):
        return base

    def pick(key: str, old: int) -> int:
        return as_int(usage[key]) if usage.get(key) is not None else old

    return Usage(
        input_tokens=pick("input_tokens", base.input_tokens),
        output_tokens=pick("output_tokens", base.output_tokens),
        cache_read_input_tokens=pick("cache_read_input_tokens", base.cache_read_input_tokens),
        cache_creation_input_tokens=pick("cache_creation_input_tokens", base.cache_creation_input_tokens),
    )


def anthropic_usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's prompt_tokens is every input token, cached or not."""
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
    }


# --- stream frames (what an Anthropic client receives) ------------------------------------------

PING_FRAME = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP_FRAME = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_STOP_HEAD = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_START_HEAD = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_TEXT_START = b',"content_block":{"type":"text","text":""}}\n\n'
_THINKING_START = b',"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n'
_INDEX = tuple(str(i).encode() for i in range(64))


def _index(i: int) -> bytes:
    return _INDEX[i] if i < 64 else str(i).encode()


def message_start_frame(message_id: str, model: str, input_tokens: int) -> bytes:
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    return (
        b"event: message_start\ndata: "
        + orjson.dumps({"type": "message_start", "message": message})
        + b"\n\n"
        + PING_FRAME
    )


def text_start_frame(index: int) -> bytes:
    return _START_HEAD + _index(index) + _TEXT_START


def thinking_start_frame(index: int) -> bytes:
    # Thinking from a non-Anthropic provider carries no signature; we never invent one.
    return _START_HEAD + _index(index) + _THINKING_START


def tool_start_frame(index: int, tool_id: str, name: str) -> bytes:
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return _START_HEAD + _index(index) + b',"content_block":' + orjson.dumps(block) + b"}\n\n"


def text_delta_frame(index: int, text: str) -> bytes:
    return _DELTA_HEAD + _index(index) + b',"delta":{"type":"text_delta","text":' + orjson.dumps(text) + b"}}\n\n"


def thinking_delta_frame(index: int, text: str) -> bytes:
    return (
        _DELTA_HEAD + _index(index) + b',"delta":{"type":"thinking_delta","thinking":' + orjson.dumps(text) + b"}}\n\n"
    )


def input_json_delta_frame(index: int, partial_json: str) -> bytes:
    return (
        _DELTA_HEAD
        + _index(index)
        + b',"delta":{"type":"input_json_delta","partial_json":'
        + orjson.dumps(partial_json)
        + b"}}\n\n"
    )


def block_stop_frame(index: int) -> bytes:
    return _STOP_HEAD + _index(index) + b"}\n\n"


class BlockWriter:
    """The content blocks of an Anthropic stream, for every translator that writes one: one block
    open at a time, indexes in order, every content_block_start matched by its stop before the next
    block starts. Not thread-safe; one per response."""

    NONE, TEXT, THINKING, TOOL = 0, 1, 2, 3
    __slots__ = ("index", "kind")

    def __init__(self) -> None:
        self.index = -1  # of the last block opened
        self.kind = BlockWriter.NONE  # of the open block; NONE when none is open

    def text(self, text: str, out: list[bytes]) -> None:
        if self.kind != BlockWriter.TEXT:
            out.append(text_start_frame(self._open(BlockWriter.TEXT, out)))
        out.append(text_delta_frame(self.index, text))

    def thinking(self, text: str, out: list[bytes]) -> None:
        if self.kind != BlockWriter.THINKING:
            out.append(thinking_start_frame(self._open(BlockWriter.THINKING, out)))
        out.append(thinking_delta_frame(self.index, text))

    def tool(self, tool_id: str, name: str, out: list[bytes]) -> int:
        """Open a tool_use block; its input follows as ``input_json_delta``s (``tool_input``)."""
        index = self._open(BlockWriter.TOOL, out)
        out.append(tool_start_frame(index, tool_id, name))
        return index

    def tool_input(self, index: int, partial_json: str, out: list[bytes]) -> None:
        out.append(input_json_delta_frame(index, partial_json))

    def close(self, out: list[bytes]) -> None:
        if self.kind != BlockWriter.NONE:
            out.append(block_stop_frame(self.index))
            self.kind = BlockWriter.NONE

    def _open(self, kind: int, out: list[bytes]) -> int:
        self.close(out)
        self.index += 1
        self.kind = kind
        return self.index


def message_delta_frame(stop_reason: str, usage: Mapping[str, int]) -> bytes:
    payload = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
    payload["usage"] = usage
    return b"event: message_delta\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_frame(status: int, message: str) -> bytes:
    payload = {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


# --- request content: Anthropic user-side blocks -> OpenAI content parts -----------------------


class UserBlocks:
    """Anthropic user-side content blocks (text, image, document, search result) -> OpenAI parts.

    Counts base64 payload characters and images so the caller can estimate input tokens without
    counting a megabyte of base64 as text.
    """

    def __init__(self) -> None:
        self.binary_chars = 0
        self.images = 0

    def text(self, path: str, block: Mapping[str, Any]) -> str:
        text = block.get("text")
        if not isinstance(text, str):
            raise ClientRequestError(f"{path}.text: required, must be a string")
        return text

    def content_block(self, path: str, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A user-side content block (text, image, document, search result) -> OpenAI parts."""
        kind = block["type"]
        if kind == "text":
            return [{"type": "text", "text": self.text(path, block)}]
        if kind == "image":
            return [self.image(path, block.get("source"))]
        if kind == "document":
            return self.document(path, block)
        if kind == "search_result":
            parts = [{"type": "text", "text": f"Search result: {block.get('title', '')} ({block.get('source', '')})"}]
            for k, inner in enumerate(block.get("content") or ()):
                if isinstance(inner, dict) and inner.get("type") == "text":
                    parts.append({"type": "text", "text": self.text(f"{path}.content.{k}", inner)})
            return parts
        if kind == "tool_reference":
            return [{"type": "text", "text": tool_reference_text(path, block)}]
        if kind in DROPPED_BLOCKS:
            return []
        if kind in ("tool_use", "tool_result"):
            raise ClientRequestError(f"{path}: {kind} blocks are not allowed here")
        raise ClientRequestError(f"{path}: unknown block type {short(kind)}")

    def image(self, path: str, source: Any) -> dict[str, Any]:
        if not isinstance(source, dict):
            raise ClientRequestError(f"{path}.source: required, must be an object")
        kind = source.get("type")
        self.images += 1
        if kind == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if not isinstance(media_type, str) or not isinstance(data, str):
                raise ClientRequestError(f"{path}.source: base64 sources need string media_type and data")
            self.binary_chars += len(data)
            return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
        if kind == "url":
            url = source.get("url")
            if not isinstance(url, str) or not url:
                raise ClientRequestError(f"{path}.source.url: required, must be a string")
            return {"type": "image_url", "image_url": {"url": url}}
        raise ClientRequestError(f"{path}.source.type: {short(kind)} is not supported for this provider")

    def document(self, path: str, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Plain text becomes text; a PDF becomes an OpenAI file part; a URL is named in text (OpenAI
        file parts cannot fetch URLs)."""
        source = block.get("source")
        if not isinstance(source, dict):
            raise ClientRequestError(f"{path}.source: required, must be an object")
        title = block.get("title") if isinstance(block.get("title"), str) else None
        kind = source.get("type")
        if kind == "text":
            data = source.get("data")
            if not isinstance(data, str):
                raise ClientRequestError(f"{path}.source.data: required, must be a string")
            return [{"type": "text", "text": f"{title}\n\n{data}" if title else data}]
        if kind == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if not isinstance(media_type, str) or not isinstance(data, str):
                raise ClientRequestError(f"{path}.source: base64 sources need string media_type and data")
            self.binary_chars += len(data)
            self.images += 1
            file = {"filename": title or "document.pdf", "file_data": f"data:{media_type};base64,{data}"}
            return [{"type": "file", "file": file}]
        if kind == "url":
            url = source.get("url")
            if not isinstance(url, str) or not url:
                raise ClientRequestError(f"{path}.source.url: required, must be a string")
            return [{"type": "text", "text": f"Document{' ' + title if title else ''}: {url}"}]
        if kind == "content":
            inner = source.get("content")
            if isinstance(inner, str):
                return [{"type": "text", "text": inner}]
            if not isinstance(inner, list):
                raise ClientRequestError(f"{path}.source.content: must be a string or an array of blocks")
            parts: list[dict[str, Any]] = []
            for k, item in enumerate(inner):
                if not isinstance(item, dict) or item.get("type") not in ("text", "image"):
                    raise ClientRequestError(f"{path}.source.content.{k}: must be a text or image block")
                parts.extend(self.content_block(f"{path}.source.content.{k}", item))
            return parts
        raise ClientRequestError(f"{path}.source.type: {short(kind)} is not supported for this provider")


# --- responses: Anthropic Message -> OpenAI chat.completion -----------------------------------


def completion_id(message_id: Any) -> str:
    if not isinstance(message_id, str) or not message_id:
        return "chatcmpl-unknown"
    return "chatcmpl-" + message_id.removeprefix("msg_")


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASON_FROM_ANTHROPIC.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def completion_from_message(message: Any, created: int, fallback_model: str) -> tuple[dict[str, Any], Usage]:
    """A whole Anthropic Message -> ``chat.completion`` (and the provider's usage)."""
    if not isinstance(message, dict):
        raise UpstreamProtocolError("message is not a JSON object")
    if message.get("type") == "error":
        raise UpstreamProtocolError(f"upstream error: {error_message(message) or 'unknown'}")
    content = message.get("content")
    if not isinstance(content, list):
        raise UpstreamProtocolError("message has no content array")
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            reasoning.append(block["thinking"])
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input", {})).decode()
            function = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
    text = "\n\n".join(t for t in texts if t)
    result_message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if reasoning:
        result_message["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        result_message["tool_calls"] = calls
    usage = usage_from_anthropic(message.get("usage"))
    model = message.get("model")
    completion = {
        "id": completion_id(message.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model if isinstance(model, str) and model else fallback_model,
        "choices": [
            {
                "index": 0,
                "message": result_message,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": openai_usage(usage),
    }
    return completion, usage


def events_from_message(message: Any) -> list[dict[str, Any]]:
    """A whole Message as the stream events Anthropic would have sent: lets the stream machine
    answer a streaming client when the provider answered JSON."""
    completion_from_message(message, 0, "")  # same validation as the buffered path
    start = {**message, "content": [], "stop_reason": None}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message["content"]):
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append({"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    events.append({"type": "message_delta", "delta": delta, "usage": message.get("usage") or {}})
    events.append({"type": "message_stop"})
    return events
