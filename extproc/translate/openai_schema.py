"""OpenAI Chat Completions wire shapes shared by the translators that speak it on either side.

Data URLs, tool-argument parsing, and a chunk writer whose frames are byte templates: per streamed
chunk only the delta goes through ``orjson.dumps`` (budget ~0.1 ms per chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from extproc.translate import anthropic_schema as A
from extproc.translate.base import Api, ClientRequestError, UpstreamProtocolError, Usage
from extproc.translate.errors import error_body
from extproc.translate.wire import error_message, short

DONE_FRAME = b"data: [DONE]\n\n"
RAW_ARGUMENTS_KEY = "_raw_arguments"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})  # what Anthropic accepts


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` -> (media type, base64 data); None for any other URL
    (including non-base64 data URLs, which no provider accepts as an image)."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    media_type = head[5:-7].split(";", 1)[0].strip().lower()
    return media_type, data


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments (a JSON string per OpenAI) -> the object Anthropic wants as ``input``.

    Empty -> ``{}`` (a tool without parameters). Arguments that are not a JSON object are kept
    verbatim as ``{"_raw_arguments": raw}`` rather than replaced by ``{}``: the tool then fails
    validation with a message that shows the model what it actually sent, instead of claiming
    that every required parameter was missing. Some OpenAI-compatible servers send an object
    instead of a string; it is taken as is.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raw = orjson.dumps(raw).decode()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {RAW_ARGUMENTS_KEY: raw}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS_KEY: raw}


def error_frame(status: int, message: str, code: str | None = None) -> bytes:
    """A mid-stream error as OpenAI sends it (a data frame holding an error object), then [DONE]."""
    return b"data: " + error_body(Api.OPENAI, status, message, code) + b"\n\n" + DONE_FRAME


class ChunkWriter:
    """Builds ``chat.completion.chunk`` frames for one stream (id, created and model fixed)."""

    __slots__ = ("_base", "_head", "_tail")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._head = b"data: " + orjson.dumps(self._base)[:-1] + b',"choices":[{"index":0,"delta":'
        self._tail = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._head + orjson.dumps(delta) + self._tail

    def content(self, text: str) -> bytes:
        return self._head + b'{"content":' + orjson.dumps(text) + b"}" + self._tail

    def reasoning(self, text: str) -> bytes:
        # reasoning_content: the field DeepSeek, vLLM and most OpenAI-compatible clients use.
        return self._head + b'{"reasoning_content":' + orjson.dumps(text) + b"}" + self._tail

    def tool_arguments(self, position: int, fragment: str) -> bytes:
        return (
            self._head
            + b'{"tool_calls":[{"index":'
            + str(position).encode()
            + b',"function":{"arguments":'
            + orjson.dumps(fragment)
            + b"}}]}"
            + self._tail
        )

    def finish(self, finish_reason: str) -> bytes:
        return self._head + b'{},"logprobs":null,"finish_reason":' + orjson.dumps(finish_reason) + b"}]}\n\n"

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self._base, "choices": [], "usage": usage}) + b"\n\n"


# --- request content: OpenAI content parts -> Anthropic blocks ---------------------------------


def content_blocks(path: str, content: Any, *, text_only: bool) -> list[dict[str, Any]]:
    """Message content (string or parts) -> Anthropic blocks; empty text is dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise ClientRequestError(f"{path}.content: must be a string or an array of content parts")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part_path = f"{path}.content.{j}"
        if not isinstance(part, dict):
            raise ClientRequestError(f"{part_path}: must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ClientRequestError(f"{part_path}.text: required, must be a string")
            if not text.strip():
                continue
            block: dict[str, Any] = {"type": "text", "text": text}
        elif text_only:
            raise ClientRequestError(f"{part_path}: only text parts are allowed here, got {short(kind)}")
        elif kind == "image_url":
            block = image_block(part_path, part.get("image_url"))
        elif kind == "file":
            block = file_block(part_path, part.get("file"))
        elif kind == "input_audio":
            raise ClientRequestError(f"{part_path}: audio input is not supported for this model")
        else:
            raise ClientRequestError(f"{part_path}: unknown content part type {short(kind)}")
        if isinstance(part.get("cache_control"), dict):  # some OpenAI clients send Anthropic caching
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def image_block(path: str, image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise ClientRequestError(f"{path}.image_url.url: required, must be a string")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    parsed = parse_data_url(url)
    if parsed is None:
        raise ClientRequestError(f"{path}.image_url.url: must be an http(s) URL or a base64 data URL")
    media_type, data = parsed
    if media_type not in IMAGE_TYPES:
        raise ClientRequestError(f"{path}.image_url.url: unsupported image type {short(media_type)}")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def file_block(path: str, file: Any) -> dict[str, Any]:
    if not isinstance(file, dict):
        raise ClientRequestError(f"{path}.file: required, must be an object")
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        raise ClientRequestError(f"{path}.file: only inline file_data is supported for this model")
    parsed = parse_data_url(data)
    media_type, data = parsed if parsed else ("application/pdf", data)
    if media_type != "application/pdf":
        raise ClientRequestError(f"{path}.file: unsupported file type {short(media_type)}")
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return block


# --- responses: OpenAI chat.completion -> Anthropic Message -----------------------------------


def anthropic_message_id(upstream_id: Any) -> str:
    if not isinstance(upstream_id, str) or not upstream_id:
        return "msg_unknown"
    return "msg_" + upstream_id.removeprefix("chatcmpl-")


def anthropic_stop_reason(finish_reason: Any, has_tools: bool) -> str:
    # Some OpenAI-compatible servers (Ollama, Gemini's compat layer) say "stop" after tool calls;
    # Claude Code only runs tools on "tool_use", so tool calls win.
    if has_tools and finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"
    return A.STOP_REASON_FROM_OPENAI.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def reasoning_of(holder: Mapping[str, Any]) -> Any:
    return holder.get("reasoning_content") or holder.get("reasoning")


def message_from_completion(completion: Any, fallback_model: str) -> tuple[dict[str, Any], Usage]:
    """A whole ``chat.completion`` -> an Anthropic Message (and the provider's usage)."""
    if not isinstance(completion, dict):
        raise UpstreamProtocolError("completion is not a JSON object")
    if "error" in completion and "choices" not in completion:
        raise UpstreamProtocolError(f"upstream error: {error_message(completion) or 'unknown'}")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError("completion has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamProtocolError("completion choice has no message")
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        legacy = message.get("function_call")
        calls = [{"id": "call_0", "function": legacy}] if isinstance(legacy, dict) else []
    for n, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{n}"
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        content.append(
            {"type": "tool_use", "id": call_id, "name": name, "input": parse_arguments(function.get("arguments"))}
        )
    has_tools = any(block["type"] == "tool_use" for block in content)
    stop_reason = (
        "refusal"
        if isinstance(refusal, str) and refusal
        else anthropic_stop_reason(choice.get("finish_reason"), has_tools)
    )
    usage = A.usage_from_openai(completion.get("usage"))
    model = completion.get("model")
    result = {
        "id": anthropic_message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) and model else fallback_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": A.anthropic_usage(usage),
    }
    return result, usage


def chunk_from_completion(completion: Any) -> dict[str, Any]:
    """A whole completion as one stream chunk: lets the stream machine answer a streaming client
    when the provider ignored ``stream: true``."""
    message_from_completion(completion, "")  # same validation as the buffered path
    choice = completion["choices"][0]
    message = choice["message"]
    delta = {k: message[k] for k in ("content", "reasoning_content", "reasoning", "refusal") if k in message}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        delta["tool_calls"] = [{**call, "index": n} for n, call in enumerate(calls) if isinstance(call, dict)]
    return {
        "id": completion.get("id"),
        "model": completion.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}],
        "usage": completion.get("usage"),
    }
