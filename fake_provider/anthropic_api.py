"""Anthropic Messages API (``POST /v1/messages``): request facts, JSON reply, SSE event sequence."""

from __future__ import annotations

from typing import Any

import orjson

from fake_provider.api import BadRequest, last_user_text, text_of
from fake_provider.reply import (
    THINKING_SIGNATURE,
    Conversation,
    Reply,
    Stop,
    Tool,
    estimate_tokens,
    next_id,
    split_text,
)

_STOP_REASONS = {Stop.END: "end_turn", Stop.TOOL: "tool_use", Stop.LENGTH: "max_tokens"}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _event(name: str, payload: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# Events whose bytes never change are encoded once at import.
_PING = _event("ping", {"type": "ping"})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
_BLOCK_STOPS = tuple(_event("content_block_stop", {"type": "content_block_stop", "index": i}) for i in range(3))
_STREAM_ERROR = _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


class AnthropicApi:
    name = "anthropic"

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        messages = _messages(body)
        if not isinstance(body.get("max_tokens"), int):
            raise BadRequest("max_tokens: Field required")
        return Conversation(
            model=body["model"],
            last_user_text=last_user_text(messages),
            tools=_tools(body.get("tools")),
            tool_results=_trailing_tool_results(messages),
            tool_calls_made=_tool_calls_made(messages),
            wants_thinking=_wants_thinking(body.get("thinking")),
            max_tokens=body["max_tokens"],
            input_tokens=estimate_tokens(body_size),
            answer_schema=_answer_schema(body),
        )

    def count_tokens(self, body: Any, body_size: int) -> bytes:
        _messages(body)
        return orjson.dumps({"input_tokens": estimate_tokens(body_size)})

    def wants_stream(self, body: Any) -> bool:
        return body.get("stream") is True

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        content: list[dict] = []
        if reply.thinking is not None:
            content.append({"type": "thinking", "thinking": reply.thinking, "signature": THINKING_SIGNATURE})
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        if reply.tool_call is not None:
            call = reply.tool_call
            content.append({"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": call.arguments})
        message = _message_head(reply)
        message["content"] = content
        message["stop_reason"] = _STOP_REASONS[reply.stop]
        message["usage"]["output_tokens"] = reply.output_tokens
        return orjson.dumps(message)

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        head = _message_head(reply)
        head["usage"]["output_tokens"] = 1  # the real API reports 1 here and the total at the end
        events = [_event("message_start", {"type": "message_start", "message": head})]
        index = 0
        if reply.thinking is not None:
            events.append(_block_start(index, {"type": "thinking", "thinking": "", "signature": ""}))
            events.extend(
                _delta(index, {"type": "thinking_delta", "thinking": piece})
                for piece in split_text(reply.thinking, chunks)
            )
            events.append(_delta(index, {"type": "signature_delta", "signature": THINKING_SIGNATURE}))
            events.append(_BLOCK_STOPS[index])
            index += 1
        if reply.text:
            events.append(_block_start(index, {"type": "text", "text": ""}))
            events.extend(
                _delta(index, {"type": "text_delta", "text": piece}) for piece in split_text(reply.text, chunks)
            )
            events.append(_BLOCK_STOPS[index])
            index += 1
        if reply.tool_call is not None:
            call = reply.tool_call
            events.append(
                _block_start(index, {"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": {}})
            )
            events.extend(
                _delta(index, {"type": "input_json_delta", "partial_json": piece})
                for piece in split_text(call.arguments_json, chunks)
            )
            events.append(_BLOCK_STOPS[index])
        # The real API pings right after the first block opens; clients must skip it anywhere.
        events.insert(2, _PING)
        events.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _STOP_REASONS[reply.stop], "stop_sequence": None},
                    "usage": {"output_tokens": reply.output_tokens},
                },
            )
        )
        events.append(_MESSAGE_STOP)
        return events

    def error_body(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})

    def stream_error_event(self) -> bytes:
        return _STREAM_ERROR


def _messages(body: Any) -> list:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise BadRequest("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    return messages


def _message_head(reply: Reply) -> dict:
    return {
        "id": f"msg_fake_{next_id()}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.uncached_input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": reply.cached_tokens,
            "output_tokens": 0,
        },
    }


def _block_start(index: int, block: dict) -> bytes:
    return _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict) -> bytes:
    return _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _trailing_tool_results(messages: list) -> tuple[str, ...]:
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), list):
        return ()
    return tuple(
        text_of(block.get("content"))
        for block in last["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    )


def _tool_calls_made(messages: list) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message, dict) and message.get("role") == "assistant" and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_use"
    )


def _tools(tools: Any) -> tuple[Tool, ...]:
    if not isinstance(tools, list):
        return ()
    # Server tools (web_search and the like) carry no input_schema and are run by Anthropic; deferred
    # tools are not offered to the model until a tool search loads them.
    return tuple(
        Tool(str(tool.get("name", "")), tool["input_schema"])
        for tool in tools
        if isinstance(tool, dict) and isinstance(tool.get("input_schema"), dict) and not tool.get("defer_loading")
    )


def _answer_schema(body: dict) -> dict | None:
    """The JSON schema of a structured-output request: ``output_config.format`` (what Claude Code sends
    for prompt hooks) or ``output_format``, as the structured-outputs beta spelled it."""
    config = body.get("output_config")
    output_format = (config.get("format") if isinstance(config, dict) else None) or body.get("output_format")
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        return None
    schema = output_format.get("schema")
    return schema if isinstance(schema, dict) else None


def _wants_thinking(thinking: Any) -> bool:
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
