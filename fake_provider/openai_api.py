"""OpenAI Chat Completions (``POST /v1/chat/completions``): request facts, JSON reply, SSE chunks."""

from __future__ import annotations

import time
from typing import Any

import orjson

from fake_provider.api import BadRequest, last_user_text, text_of
from fake_provider.reply import Conversation, Reply, Stop, Tool, estimate_tokens, next_id, split_text

_FINISH_REASONS = {Stop.END: "stop", Stop.TOOL: "tool_calls", Stop.LENGTH: "length"}

# (type, code) as the real API sends them; its SDK picks the exception class from the status alone.
_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}

_DONE = b"data: [DONE]\n\n"
_STREAM_ERROR = (
    b"data: "
    + orjson.dumps(
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    )
    + b"\n\n"
)
_FINGERPRINT = "fp_fake"


class OpenAIApi:
    name = "openai"

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if not isinstance(body.get("model"), str):
            raise BadRequest("you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        return Conversation(
            model=body["model"],
            last_user_text=last_user_text(messages),
            tools=_tools(body.get("tools")),
            tool_results=_trailing_tool_results(messages),
            tool_calls_made=sum(
                len(m.get("tool_calls") or ())
                for m in messages
                if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("tool_calls"), list)
            ),
            wants_thinking=body.get("reasoning_effort") not in (None, "none")
            or isinstance(body.get("reasoning"), dict),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            input_tokens=estimate_tokens(body_size),
            answer_schema=_answer_schema(body.get("response_format")),
        )

    def wants_stream(self, body: Any) -> bool:
        return body.get("stream") is True

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text or None,
            "refusal": None,
            "annotations": [],
        }
        if reply.thinking is not None:
            message["reasoning_content"] = reply.thinking
        if reply.tool_call is not None:
            call = reply.tool_call
            message["tool_calls"] = [
                {
                    "id": "call_" + call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
            ]
        return orjson.dumps(
            {
                "id": f"chatcmpl-fake-{next_id()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": reply.model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _FINISH_REASONS[reply.stop],
                    }
                ],
                "usage": _usage(reply),
            }
        )

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        # Every chunk shares its envelope, so it is encoded once and only the choice per chunk.
        envelope = orjson.dumps(
            {
                "id": f"chatcmpl-fake-{next_id()}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": reply.model,
                "system_fingerprint": _FINGERPRINT,
            }
        )
        head = b"data: " + envelope[:-1] + b',"choices":['
        # With include_usage the real API sends "usage": null on every chunk before the last.
        tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

        def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return head + orjson.dumps(choice) + tail

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if reply.thinking is not None:
            events.extend(chunk({"reasoning_content": piece}) for piece in split_text(reply.thinking, chunks))
        events.extend(chunk({"content": piece}) for piece in split_text(reply.text, chunks))
        if reply.tool_call is not None:
            call = reply.tool_call
            opening = {"index": 0, "id": "call_" + call.id, "type": "function"}
            opening["function"] = {"name": call.name, "arguments": ""}
            events.append(chunk({"tool_calls": [opening]}))
            events.extend(
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in split_text(call.arguments_json, chunks)
            )
        events.append(chunk({}, _FINISH_REASONS[reply.stop]))
        if include_usage:
            events.append(
                b"data: " + envelope[:-1] + b',"choices":[],"usage":' + orjson.dumps(_usage(reply)) + b"}\n\n"
            )
        events.append(_DONE)
        return events

    def error_body(self, status: int, message: str) -> bytes:
        kind, code = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def stream_error_event(self) -> bytes:
        return _STREAM_ERROR


def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reply.thinking_tokens, "audio_tokens": 0},
    }


def _trailing_tool_results(messages: list) -> tuple[str, ...]:
    results: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.append(text_of(message.get("content")))
    return tuple(reversed(results))


def _answer_schema(response_format: Any) -> dict | None:
    """The schema of ``response_format: {"type": "json_schema", "json_schema": {"schema": ...}}``; the
    schema-less ``json_object`` mode asks for no particular shape, so it is answered in plain text."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    json_schema = response_format.get("json_schema")
    schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
    return schema if isinstance(schema, dict) else None


def _tools(tools: Any) -> tuple[Tool, ...]:
    if not isinstance(tools, list):
        return ()
    found = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            parameters = function.get("parameters")
            found.append(Tool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(found)
