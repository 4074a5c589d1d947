"""Stored responses, the pure part: continuing a conversation from a stored response, the bodies
of the stored-response endpoints, and the final response object in a translated stream. No I/O:
extproc.hop asks the store (extproc.responses_store) and calls these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Output items that are input items as they are (OpenAI accepts them back in ``input``); others
# (a hosted tool's call, like web_search_call) are the provider's own doing and are not replayed.
_REPLAYED_OUTPUT = ("message", "function_call", "reasoning", "custom_tool_call")
STORED_SUFFIXES = ("", "/input_items")
# The events that end a stream with a response worth keeping (a failed one is not kept).
_FINAL_EVENTS = (b"event: response.completed\n", b"event: response.incomplete\n")


def input_items(value: Any) -> list[Any]:
    """A request's ``input`` as items: a string is one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def output_as_input(response: Mapping[str, Any]) -> list[Any]:
    """A stored response's output items as the next request's input items."""
    output = response.get("output")
    items = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict) or item.get("type") not in _REPLAYED_OUTPUT:
            continue
        # A reasoning summary without its encrypted content is no input any provider reads back:
        # the codec drops reasoning for all but Responses providers, which refuse it without.
        if item["type"] == "reasoning" and not item.get("encrypted_content"):
            continue
        items.append(item)
    return items


def continued_input(stored_input: list[Any], stored_response: Mapping[str, Any], new_input: Any) -> list[Any]:
    """``previous_response_id`` expanded: the stored request's input items, then its answer's
    output items, then the new request's input."""
    return [*stored_input, *output_as_input(stored_response), *input_items(new_input)]


def continued_body(
    body: Mapping[str, Any], stored_input: list[Any], stored_response: Mapping[str, Any]
) -> dict[str, Any]:
    """The request as if the client had sent the whole conversation: ``input`` expanded,
    ``previous_response_id`` gone. ``instructions`` are not inherited (OpenAI's semantics: the new
    request's own, if any)."""
    out = {k: v for k, v in body.items() if k != "previous_response_id"}
    out["input"] = continued_input(stored_input, stored_response, body.get("input"))
    return out


def stored_path(path: str) -> tuple[str, str] | None:
    """``/v1/responses/{id}`` or ``/v1/responses/{id}/input_items`` (also without ``/v1``) ->
    (id, "" or "/input_items"); None for any other path under /v1/responses (``input_tokens`` is an
    endpoint of its own, ``cancel`` is not served)."""
    path = path.partition("?")[0]
    for prefix in ("/v1/responses/", "/responses/"):
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            rid, slash, tail = rest.partition("/")
            suffix = slash + tail
            if rid and rid != "input_tokens" and suffix in STORED_SUFFIXES and "/" not in rid:
                return rid, suffix
    return None


def query_order(path: str) -> str:
    """``order`` of an input_items request: "desc" (OpenAI's default) or "asc"."""
    _, _, query = path.partition("?")
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "order" and value in ("asc", "desc"):
            return value
    return "desc"


def input_items_page(items: list[Any], order: str = "desc") -> bytes:
    """``GET /v1/responses/{id}/input_items``: every item in one page."""
    data = list(reversed(items)) if order == "desc" else list(items)
    ids = [item.get("id") for item in data if isinstance(item, dict)]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
            "has_more": False,
        }
    )


def deleted_body(response_id: str) -> bytes:
    return orjson.dumps({"id": response_id, "object": "response", "deleted": True})


def completed_response(chunk: bytes) -> dict[str, Any] | None:
    """The response object of a ``response.completed`` (or ``.incomplete``) event in a chunk of
    translated SSE (the encoder writes each event whole into one chunk), else None."""
    start = max(chunk.find(event) for event in _FINAL_EVENTS)
    if start < 0:
        return None
    data = chunk.find(b"data:", start)
    if data < 0:
        return None
    end = chunk.find(b"\n", data)
    line = chunk[data + 5 : end if end >= 0 else len(chunk)].strip()
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    response = event.get("response") if isinstance(event, dict) else None
    return response if isinstance(response, dict) else None


def response_of(body: bytes) -> dict[str, Any] | None:
    """A whole (non-stream) answer's response object, if it is one."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and value.get("object") == "response" and isinstance(value.get("id"), str):
        return value
    return None
