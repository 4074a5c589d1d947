"""The one set of stream checks every translator test uses: decode SSE, hold an Anthropic or OpenAI
stream to its invariants (validated against the official SDKs' types), rebuild what a client sees."""

from __future__ import annotations

import itertools
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
from pydantic import TypeAdapter

from extproc.sse import SSEDecoder

STREAM_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)


def sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    """Decoded SSE: (event name, parsed data) pairs; ``[DONE]`` stays a string."""
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.close()
    return [(e.event, e.data if e.data == "[DONE]" else orjson.loads(e.data)) for e in events]


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(cuts)] or [b""]


# --- Anthropic streams ------------------------------------------------------------------------------


def check_anthropic_stream(body: bytes) -> list[dict[str, Any]]:
    """Every event names its type; one message_start first (then a ping); blocks open and close in
    index order, one at a time; one message_delta right before the single message_stop, which is
    last. A stream that fails ends with one error event instead. Each event validates against the
    SDK's RawMessageStreamEvent. Returns every payload, the error included."""
    events = sse_events(body)
    assert events, "empty stream"
    payloads = []
    for name, payload in events:
        assert isinstance(payload, dict), payload
        assert name == payload["type"], (name, payload)
        payloads.append(payload)
    everything = payloads
    types = [p["type"] for p in payloads]
    errored = types[-1] == "error"
    assert types.count("error") == (1 if errored else 0), types
    if errored:
        assert "message_stop" not in types
        anthropic.types.ErrorResponse.model_validate(payloads[-1])
        payloads = payloads[:-1]
        types = types[:-1]
        if not payloads:
            return everything
    assert types[0] == "message_start", types
    assert types.count("message_start") == 1, types
    if len(types) > 1:
        assert types[1] == "ping", types
    if not errored:
        assert types[-2:] == ["message_delta", "message_stop"], types
        assert types.count("message_stop") == 1 and types.count("message_delta") == 1, types
    open_index = None
    next_index = 0
    for payload in payloads:
        kind = payload["type"]
        if kind != "ping":
            STREAM_EVENT.validate_python(payload)
        if kind == "content_block_start":
            assert open_index is None, f"block {payload['index']} opened while {open_index} is open"
            assert payload["index"] == next_index, payload
            open_index = next_index
            next_index += 1
        elif kind == "content_block_delta":
            assert payload["index"] == open_index, payload
        elif kind == "content_block_stop":
            assert payload["index"] == open_index, payload
            open_index = None
        elif kind == "message_delta":
            assert open_index is None, "message_delta with a block still open"
    return everything


def accumulate_anthropic(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """Rebuild the Message a client would see from stream payloads (input from partial_json)."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for payload in payloads:
        kind = payload["type"]
        if kind == "message_start":
            message = {**payload["message"], "content": []}
        elif kind == "content_block_start":
            message["content"].append(dict(payload["content_block"]))
        elif kind == "content_block_delta":
            block = message["content"][payload["index"]]
            delta = payload["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                partial[payload["index"]] = partial.get(payload["index"], "") + delta["partial_json"]
        elif kind == "message_delta":
            message["stop_reason"] = payload["delta"]["stop_reason"]
            message["usage"] = {**message["usage"], **payload["usage"]}
    for index, raw in partial.items():
        message["content"][index]["partial_json"] = raw
    return message


# --- OpenAI streams ---------------------------------------------------------------------------------


def check_openai_stream(body: bytes, include_usage: bool | None = None) -> list[dict[str, Any]]:
    """Unnamed data frames ending with one ``[DONE]`` (also after an error payload, which may only be
    the last frame before it); every chunk validates as ChatCompletionChunk, shares one id, created
    and model, and the first delta carries the role; exactly one finish_reason unless the stream
    failed; with ``include_usage`` given, one usage chunk (last) or none. Returns the chunks."""
    events = sse_events(body)
    assert events and events[-1] == (None, "[DONE]"), events[-3:]
    assert [e for e in events if e[1] == "[DONE]"] == [events[-1]]
    assert all(name is None for name, _ in events), "OpenAI stream frames are unnamed"
    payloads = [payload for _, payload in events[:-1]]
    failed = bool(payloads) and set(payloads[-1]) == {"error"}
    if failed:
        assert isinstance(payloads[-1]["error"]["message"], str)
        payloads = payloads[:-1]
    assert not any("error" in p for p in payloads), "an error frame is the last frame before [DONE]"
    for chunk in payloads:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
        assert chunk["object"] == "chat.completion.chunk"
    if payloads:
        assert payloads[0]["choices"][0]["delta"].get("role") == "assistant"
        assert len({(c["id"], c["created"], c["model"]) for c in payloads}) == 1
    finishes = sum(choice["finish_reason"] is not None for c in payloads for choice in c["choices"])
    assert finishes <= 1 if failed else finishes == 1, finishes
    usage = [c for c in payloads if not c["choices"]]
    if include_usage is not None and not failed:
        assert len(usage) == (1 if include_usage else 0)
        if usage:
            assert payloads[-1] is usage[0]
    return payloads


def accumulate_openai(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    content, reasoning = "", ""
    tools: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or ():
                entry = tools.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.get("id") or ""
                function = call.get("function") or {}
                entry["name"] += function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {"content": content, "reasoning": reasoning, "tools": tools, "finish_reason": finish, "usage": usage}
