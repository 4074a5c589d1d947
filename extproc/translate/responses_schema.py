"""OpenAI Responses wire shapes written for a Responses client: the ``response`` object, its output
items and usage, ids, and the typed SSE event frames.

Shapes follow the openai SDK's types (openai.types.responses): tests validate what is written here
against them. Values come from an Anthropic Message (the hub format), so ids are derived from the
Anthropic message id: the same answer always gets the same ids, and a stream and its JSON replay
agree.

The ``response`` object echoes the request's settings in OpenAI's API (tools, tool_choice,
temperature...). A translator primed from a ResponseContext (a fallback chain's answer) never saw
the request, so every translator writes the defaults here instead: clients read the output and
the usage, not the echo.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.translate.base import Usage

# Anthropic stop_reason -> Responses incomplete_details.reason; any other stop is "completed".
INCOMPLETE_REASONS = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}

# HTTP status of an error -> the ``code`` of a failed response's ``error`` (the SDK's enum allows
# only a few, none for a client error but "invalid_prompt").
_FAILED_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt", 413: "invalid_prompt"}


def response_id(message_id: Any) -> str:
    if not isinstance(message_id, str) or not message_id:
        return "resp_unknown"
    return "resp_" + message_id.removeprefix("msg_")


def item_id(prefix: str, response: str, output_index: int) -> str:
    """An output item's id: ``msg_``, ``fc_`` or ``rs_`` + the response's own part + its position."""
    return f"{prefix}_{response.removeprefix('resp_')}_{output_index}"


def usage_object(usage: Usage) -> dict[str, Any]:
    """Responses counts cached tokens inside ``input_tokens``; Anthropic counts them apart.
    Anthropic does not break reasoning tokens out of ``output_tokens``: 0 (never invented)."""
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + usage.output_tokens,
    }


def incomplete_reason(stop_reason: Any) -> str | None:
    return INCOMPLETE_REASONS.get(stop_reason) if isinstance(stop_reason, str) else None


def failed_error(status: int, message: str) -> dict[str, str]:
    code = _FAILED_CODES.get(status, "server_error")
    return {"code": code, "message": message}


def response_object(
    rid: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None = None,
    incomplete: str | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "max_output_tokens": None,
        "metadata": {},
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage_object(usage) if usage is not None else None,
        "user": None,
    }


# --- output items -----------------------------------------------------------------------------


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def message_item(iid: str, parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": iid, "type": "message", "status": status, "role": "assistant", "content": parts}


def summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def reasoning_item(iid: str, summary: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": iid, "type": "reasoning", "summary": summary}


def function_call_item(iid: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": iid,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def custom_call_item(iid: str, call_id: str, name: str, text: str) -> dict[str, Any]:
    return {"id": iid, "type": "custom_tool_call", "call_id": call_id, "name": name, "input": text}


def custom_input(arguments: Any) -> str:
    """A freeform tool's input: the ``input`` string of the Anthropic tool_use (an object or its
    JSON text); anything else is passed on as the text it is."""
    parsed = arguments
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            return arguments
    value = parsed.get("input") if isinstance(parsed, dict) else None
    if isinstance(value, str):
        return value
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def web_search_item(iid: str, query: str, status: str = "completed") -> dict[str, Any]:
    return {"id": iid, "type": "web_search_call", "status": status, "action": {"type": "search", "query": query}}


def search_query(arguments: Any) -> str:
    """The query of Anthropic's web search call (its input, an object or its JSON text)."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            return ""
    query = arguments.get("query") if isinstance(arguments, dict) else None
    return query if isinstance(query, str) else ""


# --- stream frames ----------------------------------------------------------------------------


def event_frame(kind: str, payload: dict[str, Any]) -> bytes:
    """One typed event: ``payload`` already holds ``type`` and ``sequence_number``."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
