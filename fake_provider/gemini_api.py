"""Gemini (``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``).

Unlike the other two APIs the model comes from the path and streaming is chosen by the method name,
not by the body; the server passes both in.
"""

from __future__ import annotations

from typing import Any

import orjson

from fake_provider.api import JSON_CONTENT_TYPE, BadRequest, first_words
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

# Gemini ends a function-call turn with STOP too; only truncation is told apart.
_FINISH_REASONS = {Stop.END: "STOP", Stop.TOOL: "STOP", Stop.LENGTH: "MAX_TOKENS"}

# google.rpc.Code names by HTTP status, as Google's JSON errors carry them (Gemini's and Vertex's).
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_STREAM_ERROR = (
    b"data: "
    + orjson.dumps(
        {"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}
    )
    + b"\n\n"
)


class GeminiApi:
    name = "gemini"

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        contents = _contents(body)
        generation_config = body.get("generationConfig")
        if not isinstance(generation_config, dict):
            generation_config = {}
        max_tokens = generation_config.get("maxOutputTokens")
        return Conversation(
            model=path_model or "",
            last_user_text=_last_user_text(contents),
            tools=_tools(body.get("tools")),
            tool_results=_trailing_function_responses(contents),
            wants_thinking=_wants_thinking(generation_config.get("thinkingConfig")),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            input_tokens=estimate_tokens(body_size),
            answer_schema=_answer_schema(generation_config),
        )

    def count_tokens(self, body: Any, body_size: int) -> bytes:
        # countTokens takes either bare contents or a whole generateContentRequest (the form that
        # can carry a system instruction and tools).
        wrapped = body.get("generateContentRequest") if isinstance(body, dict) else None
        _contents(wrapped if wrapped is not None else body)
        return orjson.dumps({"totalTokens": estimate_tokens(body_size)})

    def wants_stream(self, body: Any) -> bool:
        return False  # decided by the method in the path, see the module docstring

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        return orjson.dumps(_envelope(reply, _parts(reply, None), f"fake-{next_id()}", final=True))

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        parts = _parts(reply, chunks)
        last = len(parts) - 1
        response_id = f"fake-{next_id()}"  # one id for every chunk of a response, as Gemini does
        return [
            b"data: " + orjson.dumps(_envelope(reply, [part], response_id, final=index == last)) + b"\n\n"
            for index, part in enumerate(parts)
        ]

    def error_body(self, status: int, message: str) -> bytes:
        code = GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return orjson.dumps({"error": {"code": status, "message": message, "status": code}})

    def stream_error_event(self) -> bytes:
        return _STREAM_ERROR


def _parts(reply: Reply, chunks: int | None) -> list[dict]:
    """The reply as Gemini parts, each text split in ``chunks`` (None: kept whole, as non-stream
    responses do). A function call is never split: Gemini sends its args in one piece."""

    def pieces(text: str) -> list[str]:
        if chunks is None:
            return [text] if text else []
        return split_text(text, chunks)

    parts: list[dict] = []
    if reply.thinking is not None:
        parts.extend({"text": piece, "thought": True} for piece in pieces(reply.thinking))
    parts.extend({"text": piece} for piece in pieces(reply.text))
    if reply.tool_call is not None:
        part: dict[str, Any] = {"functionCall": {"name": reply.tool_call.name, "args": reply.tool_call.arguments}}
        if reply.thinking is not None:
            # Thinking models sign their function calls; clients must send the signature back.
            part["thoughtSignature"] = THINKING_SIGNATURE
        parts.append(part)
    return parts


def _envelope(reply: Reply, parts: list[dict], response_id: str, *, final: bool) -> dict:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    response: dict[str, Any] = {"candidates": [candidate]}
    if final:
        candidate["finishReason"] = _FINISH_REASONS[reply.stop]
        visible = reply.output_tokens - reply.thinking_tokens
        response["usageMetadata"] = {
            "promptTokenCount": reply.input_tokens,
            "candidatesTokenCount": visible,
            "totalTokenCount": reply.input_tokens + reply.output_tokens,
            "cachedContentTokenCount": reply.cached_tokens,
            "thoughtsTokenCount": reply.thinking_tokens,
        }
    response["modelVersion"] = reply.model
    response["responseId"] = response_id
    return response


def _contents(body: Any) -> list:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    return contents


def _part_list(content: Any) -> list:
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _last_user_text(contents: list) -> str:
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            text = first_words(
                [
                    part.get("text", "")
                    for part in _part_list(content)
                    if isinstance(part, dict) and not part.get("thought")
                ]
            )
            if text:
                return text
    return ""


def _trailing_function_responses(contents: list) -> tuple[str, ...]:
    return tuple(
        orjson.dumps(part["functionResponse"].get("response")).decode()
        for part in _part_list(contents[-1])
        if isinstance(part, dict) and isinstance(part.get("functionResponse"), dict)
    )


def _tools(tools: Any) -> tuple[Tool, ...]:
    if not isinstance(tools, list):
        return ()
    found = []
    for tool in tools:
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        for declaration in declarations if isinstance(declarations, list) else ():
            if isinstance(declaration, dict) and declaration.get("name"):
                schema = declaration.get("parameters") or declaration.get("parametersJsonSchema") or {}
                found.append(Tool(declaration["name"], schema if isinstance(schema, dict) else {}))
    return tuple(found)


def _answer_schema(generation_config: dict) -> dict | None:
    """The schema of a JSON-mode request: ``responseJsonSchema`` (plain JSON schema) or ``responseSchema``
    (OpenAPI subset, upper-case type names). Gemini only holds its answer to a schema when the mime type
    is JSON, so a schema without it is ignored here too."""
    if generation_config.get("responseMimeType") != JSON_CONTENT_TYPE:
        return None
    schema = generation_config.get("responseJsonSchema") or generation_config.get("responseSchema")
    return schema if isinstance(schema, dict) else None


def _wants_thinking(thinking_config: Any) -> bool:
    if not isinstance(thinking_config, dict):
        return False
    return thinking_config.get("thinkingBudget") != 0 and thinking_config.get("includeThoughts") is not False
