"""OpenAI Responses API (``POST /v1/responses``): request facts, JSON ``response``, typed SSE events.

Stateless like every fake API here: ``store`` and ``previous_response_id`` are not kept or read
(the gateway always sends ``store: false``). A reasoning item carries ``encrypted_content`` only
when the request's ``include`` asks for ``reasoning.encrypted_content``, as the real API does.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from fake_provider.api import BadRequest, last_user_text, text_of
from fake_provider.reply import Conversation, Reply, Stop, Tool, estimate_tokens, next_id, split_text

_ERRORS = {  # (type, code) as the real API sends them
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_STREAM_ERROR = (
    b"event: error\ndata: "
    + orjson.dumps(
        {
            "type": "error",
            "code": "server_error",
            "message": "The server had an error while processing your request.",
            "param": None,
            "sequence_number": 0,
        }
    )
    + b"\n\n"
)
_ENCRYPTED_REASONING = "ZmFrZS1lbmNyeXB0ZWQtcmVhc29uaW5n"  # base64("fake-encrypted-reasoning")
# The input item types the real API takes (the openai SDK's ResponseInputItemParam); any other is
# refused with a 400 naming the item, as the real API does.
ITEM_TYPES = frozenset(
    {
        "additional_tools", "apply_patch_call", "apply_patch_call_output", "code_interpreter_call", "compaction",
        "compaction_trigger", "computer_call", "computer_call_output", "configuration_update", "custom_tool_call",
        "custom_tool_call_output", "file_search_call", "function_call", "function_call_output",
        "image_generation_call", "item_reference", "local_shell_call", "local_shell_call_output",
        "mcp_approval_request", "mcp_approval_response", "mcp_call", "mcp_list_tools", "message", "program",
        "program_output", "reasoning", "shell_call", "shell_call_output", "tool_search_call", "tool_search_output",
        "web_search_call",
    }
)  # fmt: skip


class ResponsesApi:
    name = "responses"

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if not isinstance(body.get("model"), str):
            raise BadRequest("you must provide a model parameter")
        items = _input_items(body.get("input"))
        max_tokens = body.get("max_output_tokens")
        reasoning = body.get("reasoning")
        return Conversation(
            model=body["model"],
            last_user_text=last_user_text(items),
            tools=_tools(body.get("tools")),
            tool_results=_trailing_tool_results(items),
            tool_calls_made=sum(1 for item in items if item.get("type") == "function_call"),
            wants_thinking=isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none"),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            input_tokens=estimate_tokens(body_size),
            answer_schema=_answer_schema(body.get("text")),
        )

    def wants_stream(self, body: Any) -> bool:
        return body.get("stream") is True

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        return orjson.dumps(_Rendering(reply, body).response(final=True))

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        return _Rendering(reply, body).events(chunks)

    def error_body(self, status: int, message: str) -> bytes:
        kind, code = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def stream_error_event(self) -> bytes:
        return _STREAM_ERROR


class _Rendering:
    """One reply as a Responses ``response``: its output items, and the event sequence that builds them."""

    def __init__(self, reply: Reply, body: Any) -> None:
        self.reply = reply
        self.body = body if isinstance(body, dict) else {}
        self.id = f"resp_fake{next_id()}"
        self.created = int(time.time())
        self.sequence = 0
        include = self.body.get("include")
        self.encrypted = isinstance(include, list) and "reasoning.encrypted_content" in include

    # --- the whole response ----------------------------------------------------------------------

    def items(self) -> list[dict[str, Any]]:
        reply = self.reply
        items: list[dict[str, Any]] = []
        if reply.thinking is not None:
            item: dict[str, Any] = {
                "id": f"rs_{self.id}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": reply.thinking}],
            }
            if self.encrypted:
                item["encrypted_content"] = _ENCRYPTED_REASONING
            items.append(item)
        if reply.text:
            part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
            items.append(
                {
                    "id": f"msg_{self.id}",
                    "type": "message",
                    "status": "completed" if reply.stop is not Stop.LENGTH else "incomplete",
                    "role": "assistant",
                    "content": [part],
                }
            )
        if reply.tool_call is not None:
            call = reply.tool_call
            items.append(
                {
                    "id": f"fc_{call.id}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": "call_" + call.id,
                    "name": call.name,
                    "arguments": call.arguments_json,
                }
            )
        return items

    def response(self, final: bool) -> dict[str, Any]:
        reply, body = self.reply, self.body
        incomplete = final and reply.stop is Stop.LENGTH
        status = ("incomplete" if incomplete else "completed") if final else "in_progress"
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": reply.model,
            "output": self.items() if final else [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": text,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": _usage(reply) if final else None,
            "metadata": {},
        }

    # --- the stream ------------------------------------------------------------------------------

    def event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def events(self, chunks: int) -> list[bytes]:
        started = self.response(final=False)
        out = [self.event("response.created", {"response": started})]
        out.append(self.event("response.in_progress", {"response": started}))
        for index, item in enumerate(self.items()):
            kind = item["type"]
            if kind == "reasoning":
                out.extend(self.reasoning(index, item, chunks))
            elif kind == "message":
                out.extend(self.message(index, item, chunks))
            else:
                out.extend(self.function_call(index, item, chunks))
        final = self.response(final=True)
        out.append(self.event(f"response.{final['status']}", {"response": final}))
        return out

    def reasoning(self, index: int, item: dict[str, Any], chunks: int) -> list[bytes]:
        where = {"item_id": item["id"], "output_index": index}
        text = item["summary"][0]["text"]
        added = {**item, "summary": []}
        added.pop("encrypted_content", None)  # the real API sends it only with the finished item
        out = [self.event("response.output_item.added", {"output_index": index, "item": added})]
        part = {**where, "summary_index": 0}
        out.append(self.event("response.reasoning_summary_part.added", {**part, "part": _summary("")}))
        out.extend(
            self.event("response.reasoning_summary_text.delta", {**part, "delta": piece})
            for piece in split_text(text, chunks)
        )
        out.append(self.event("response.reasoning_summary_text.done", {**part, "text": text}))
        out.append(self.event("response.reasoning_summary_part.done", {**part, "part": _summary(text)}))
        out.append(self.event("response.output_item.done", {"output_index": index, "item": item}))
        return out

    def message(self, index: int, item: dict[str, Any], chunks: int) -> list[bytes]:
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        part = item["content"][0]
        added = {**item, "status": "in_progress", "content": []}
        out = [self.event("response.output_item.added", {"output_index": index, "item": added})]
        out.append(self.event("response.content_part.added", {**where, "part": {**part, "text": ""}}))
        out.extend(
            self.event("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
            for piece in split_text(part["text"], chunks)
        )
        out.append(self.event("response.output_text.done", {**where, "text": part["text"], "logprobs": []}))
        out.append(self.event("response.content_part.done", {**where, "part": part}))
        out.append(self.event("response.output_item.done", {"output_index": index, "item": item}))
        return out

    def function_call(self, index: int, item: dict[str, Any], chunks: int) -> list[bytes]:
        where = {"item_id": item["id"], "output_index": index}
        added = {**item, "status": "in_progress", "arguments": ""}
        out = [self.event("response.output_item.added", {"output_index": index, "item": added})]
        out.extend(
            self.event("response.function_call_arguments.delta", {**where, "delta": piece})
            for piece in split_text(item["arguments"], chunks)
        )
        out.append(self.event("response.function_call_arguments.done", {**where, "arguments": item["arguments"]}))
        out.append(self.event("response.output_item.done", {"output_index": index, "item": item}))
        return out


def _summary(text: str) -> dict[str, str]:
    return {"type": "summary_text", "text": text}


def _usage(reply: Reply) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {"cached_tokens": reply.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reply.thinking_tokens},
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _input_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as a list of items: a bare string is one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a string or a non-empty array of input items")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest("every input item must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind not in ITEM_TYPES:
            supported = ", ".join(f"'{name}'" for name in sorted(ITEM_TYPES))
            raise BadRequest(f"Invalid value for 'input[{i}].type': {kind!r}. Supported values are: {supported}.")
    return value


def _trailing_tool_results(items: list[dict[str, Any]]) -> tuple[str, ...]:
    results: list[str] = []
    for item in reversed(items):
        if item.get("type") != "function_call_output":
            break
        output = item.get("output")
        results.append(output if isinstance(output, str) else text_of(output))
    return tuple(reversed(results))


def _answer_schema(text: Any) -> dict | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema")
    return schema if isinstance(schema, dict) else None


def _tools(tools: Any) -> tuple[Tool, ...]:
    if not isinstance(tools, list):
        return ()
    found = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name"):
            parameters = tool.get("parameters")
            found.append(Tool(tool["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(found)
