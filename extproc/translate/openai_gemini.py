"""OpenAI Chat Completions client -> Google Gemini ``generateContent`` provider.

Request: system/developer messages -> ``systemInstruction`` (Gemini has one, so every such message
goes there, in order); user/assistant/tool messages -> ``contents`` (user/model; consecutive ones of
a role merged); text / ``image_url`` (data: URLs -> inlineData, others -> fileData) / ``input_audio`` /
``file`` (data) parts; assistant ``tool_calls`` -> ``functionCall`` (arguments parsed; a string that is
not a JSON object is kept as ``{"arguments": <string>}`` rather than refused, as OpenAI itself never
checks what it gets back); ``tool`` messages -> ``functionResponse`` named via ``tool_call_id``;
tools -> ``functionDeclarations`` (cleaned schemas); ``web_search_options`` -> ``googleSearch``;
tool_choice, max_tokens / max_completion_tokens (clamped), stop, temperature, top_p, seed,
reasoning_effort (thinking-capable targets only), response_format -> generation/tool config.
``n`` > 1 is refused (one candidate is all the translation handles). Penalties, logit_bias, logprobs,
user, metadata, store, service_tier and the like are dropped.

Response: ``chat.completion`` or ``chat.completion.chunk`` SSE ending with ``data: [DONE]``; thought
parts become ``reasoning_content``; tool-call ids are ``call_<turn>_<index>_<name>``; the usage chunk
is sent only when ``stream_options.include_usage`` asked for it. ``created`` comes from the clock
given to the constructor (``time.time`` by default), read once per response.

One instance per request; not thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from extproc.translate import gemini_common as g
from extproc.translate import openai_schema as O
from extproc.translate.base import (
    Api,
    ClientRequestError,
    ResponseContext,
    Target,
    TranslatedChunk,
    UpstreamRequest,
    Usage,
)
from extproc.translate.client_request import OpenAIRequest
from extproc.translate.gemini_schema import clean_schema

_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3"}


def _finish_reason(finish: str | None, calls: int) -> str:
    if finish == "MAX_TOKENS":
        return "length"
    if finish in g.REFUSALS:
        return "content_filter"
    return "tool_calls" if calls else "stop"


class OpenAIToGemini(g.GeminiResponse):
    client_api = Api.OPENAI
    provider_api = Api.GEMINI
    rewrites_response = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._include_usage = False
        self._writer: O.ChunkWriter | None = None  # chunk frames, once the stream started

    # -- request ---------------------------------------------------------------------------------

    def prime(self, context: ResponseContext) -> None:
        self._model = context.model
        self._stream = context.stream
        self._include_usage = context.include_usage
        self._turn = context.turn

    def request(self, request: OpenAIRequest, target: Target) -> UpstreamRequest:
        self._model = target.model
        self._stream = target.stream
        self._include_usage = request.include_usage
        self._turn = request.turns
        contents, system = _contents(request.messages)
        out = g.generate_content(contents, system, request, _generation_config(request, target))
        return UpstreamRequest(path=g.upstream_path(target), body=orjson.dumps(out))

    # -- response --------------------------------------------------------------------------------

    def _whole(self, body: bytes) -> TranslatedChunk:
        reader = self._reader
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for event in reader.whole(body):
            kind = event.kind
            if kind is g.TEXT:
                texts.append(event.text)
            elif kind is g.THOUGHT:
                thoughts.append(event.text)
            elif kind is g.CALL:
                calls.append(self._call(event))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        completion = {
            "id": "chatcmpl-" + (reader.response_id or "gemini"),
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": reader.model or self._model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": _finish_reason(reader.finish, reader.calls),
                    "logprobs": None,
                }
            ],
            "usage": g.openai_usage(reader.meta),
        }
        return TranslatedChunk(body=orjson.dumps(completion), usage=g.usage_of(reader.meta))

    def _call(self, event: g.GeminiEvent) -> dict[str, Any]:
        return {
            "id": g.tool_id("call_", self._turn, event.index, event.name),
            "type": "function",
            "function": {"name": event.name, "arguments": orjson.dumps(event.args).decode()},
        }

    def _render(self, event: g.GeminiEvent, out: list[bytes]) -> None:
        kind = event.kind
        if kind is g.START:
            reader = self._reader
            completion_id = "chatcmpl-" + (reader.response_id or "gemini")
            self._writer = O.ChunkWriter(completion_id, int(self._clock()), reader.model or self._model)
            out.append(self._writer.delta({"role": "assistant", "content": ""}))
            return
        writer = self._writer
        assert writer is not None  # the reader starts every stream with START
        if kind is g.TEXT:
            out.append(writer.content(event.text))
        elif kind is g.THOUGHT:
            out.append(writer.reasoning(event.text))
        elif kind is g.CALL:
            out.append(writer.delta({"tool_calls": [{"index": event.index, **self._call(event)}]}))

    def _finish(self, out: list[bytes]) -> Usage:
        reader = self._reader
        reason = _finish_reason(reader.finish, reader.calls)
        writer = self._writer
        assert writer is not None
        out.append(writer.finish(reason))
        if self._include_usage:
            out.append(writer.usage(g.openai_usage(reader.meta)))
        out.append(O.DONE_FRAME)
        self._closed = True
        return g.usage_of(reader.meta)

    def _error_frame(self, status: int, message: str) -> bytes:
        # The error payload, then [DONE]: as every OpenAI stream the gateway writes ends.
        return O.error_frame(status, message)


# -- request helpers ------------------------------------------------------------------------------


def _contents(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """-> (contents, systemInstruction parts)."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id -> function name
    for i, message in enumerate(messages):
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(p for p in _parts(content, i, text_only=True) if p.get("text"))
            continue
        if role == "user":
            parts = _parts(content, i, text_only=False)
        elif role == "assistant":
            role = "model"
            parts = [p for p in _parts(content, i, text_only=True) if p.get("text")]
            parts.extend(_tool_calls(message, i, names))
        else:  # "tool", or "function" (the older function-calling API)
            role = "user"
            parts = [_tool_response(message, i, names)]
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise ClientRequestError("messages: no user or assistant message has any content")
    return contents, system


def _parts(content: Any, i: int, text_only: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise ClientRequestError(f"messages.{i}.content: must be a string or an array of parts")
    parts: list[dict[str, Any]] = []
    for j, item in enumerate(content):
        path = f"messages.{i}.content.{j}"
        if not isinstance(item, dict):
            raise ClientRequestError(f"{path}: must be an object")
        ptype = item.get("type")
        if ptype in ("text", "refusal"):
            text = item.get(ptype)
            if not isinstance(text, str):
                raise ClientRequestError(f"{path}.{ptype}: must be a string")
            if text:
                parts.append({"text": text})
        elif text_only and ptype in ("image_url", "input_audio", "file"):
            raise ClientRequestError(f"{path}: {ptype} parts are only allowed in user messages")
        elif ptype == "image_url":
            parts.append(_image(item.get("image_url"), path))
        elif ptype == "input_audio":
            audio = item.get("input_audio")
            data = audio.get("data") if isinstance(audio, dict) else None
            fmt = audio.get("format") if isinstance(audio, dict) else None
            if not isinstance(data, str) or not isinstance(fmt, str):
                raise ClientRequestError(f"{path}.input_audio: needs string data and format")
            parts.append({"inlineData": {"mimeType": _AUDIO_MIME.get(fmt, f"audio/{fmt}"), "data": data}})
        elif ptype == "file":
            parts.append(_file(item.get("file"), path))
        else:
            raise ClientRequestError(f"{path}: unknown content part type {ptype!r}")
    return parts


def _image(image: Any, path: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise ClientRequestError(f"{path}.image_url.url: must be a non-empty string")
    if url.startswith("data:"):
        parsed = g.parse_data_url(url)
        if parsed is None:
            raise ClientRequestError(f"{path}.image_url.url: only base64 data: URLs are supported")
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    return {"fileData": {"mimeType": g.guess_mime(url, "image/jpeg"), "fileUri": url}}


def _file(file: Any, path: str) -> dict[str, Any]:
    if not isinstance(file, dict):
        raise ClientRequestError(f"{path}.file: must be an object")
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        if file.get("file_id") is not None:
            raise ClientRequestError(f"{path}.file.file_id: uploaded file ids cannot be sent to a Gemini model")
        raise ClientRequestError(f"{path}.file.file_data: must be a non-empty string")
    parsed = g.parse_data_url(data)
    if parsed is not None:
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    filename = file.get("filename")
    mime = g.guess_mime(filename, "application/pdf") if isinstance(filename, str) else "application/pdf"
    return {"inlineData": {"mimeType": mime, "data": data}}


def _tool_calls(message: dict[str, Any], i: int, names: dict[str, str]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    if calls is None:  # the older function-calling API: one call, no id (only this check sees it)
        legacy = message.get("function_call")
        calls = [] if legacy is None else [{"id": None, "function": legacy}]
    parts: list[dict[str, Any]] = []
    for k, call in enumerate(calls):
        path = f"messages.{i}.tool_calls.{k}"
        function = call["function"]
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ClientRequestError(f"{path}.function.name: must be a non-empty string")
        cid = call["id"]
        fc: dict[str, Any] = {"name": name, "args": _arguments(function.get("arguments"), path)}
        if cid:
            fc["id"] = cid
            names[cid] = name
        part: dict[str, Any] = {"functionCall": fc}
        if not parts:
            part["thoughtSignature"] = g.SKIP_SIGNATURE  # see gemini_common.SKIP_SIGNATURE
        parts.append(part)
    return parts


def _arguments(raw: Any, path: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise ClientRequestError(f"{path}.function.arguments: must be a string")
    try:
        args = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"arguments": raw}
    return args if isinstance(args, dict) else {"arguments": args}


def _tool_response(message: dict[str, Any], i: int, names: dict[str, str]) -> dict[str, Any]:
    if message.get("role") == "function":  # legacy function-calling API: the name is given
        name, cid = message.get("name"), None
        if not isinstance(name, str) or not name:
            raise ClientRequestError(f"messages.{i}.name: must be a non-empty string")
    else:
        cid = message["tool_call_id"]
        name = names[cid]  # parse_request checked that an earlier tool call has this id
    texts = [p["text"] for p in _parts(message.get("content"), i, text_only=True) if "text" in p]
    response: dict[str, Any] = {"name": name, "response": {"content": "\n".join(texts)}}
    if cid:
        response = {"id": cid, **response}
    return {"functionResponse": response}


def _generation_config(request: OpenAIRequest, target: Target) -> dict[str, Any]:
    config, max_tokens = g.generation_start(request, target)
    effort = request.reasoning_effort
    if effort is not None and "thinking" in target.capabilities:
        budget = g.EFFORT_BUDGETS[effort]
        config["thinkingConfig"] = {"thinkingBudget": 0} if budget == 0 else g.thinking_config(budget, max_tokens)
    if request.response_format in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        if request.response_schema:
            config["responseSchema"] = clean_schema(request.response_schema)
    return config
