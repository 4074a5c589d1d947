"""Shared helpers for the Anthropic <-> OpenAI translator tests: golden cases, stream replay,
Anthropic event-order invariants and validation against the official SDK types."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
from pydantic import TypeAdapter

from extproc.sse import SSEDecoder
from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.base import Target, Usage
from extproc.translate.openai_anthropic import OpenAIToAnthropic

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
PAIRS = ("anthropic_openai", "openai_anthropic")
CREATED = 1_700_000_000  # the fixed clock of OpenAIToAnthropic in tests

STREAM_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)


def make_translator(pair: str) -> Any:
    if pair == "anthropic_openai":
        return AnthropicToOpenAI()
    return OpenAIToAnthropic(clock=lambda: CREATED)


@dataclass(frozen=True)
class Case:
    pair: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.pair}/{self.path.name}"

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.path / "case.json"
        return json.loads(meta.read_text()) if meta.exists() else {}

    @property
    def client_request(self) -> dict[str, Any]:
        return orjson.loads((self.path / "client_request.json").read_bytes())

    def target(self) -> Target:
        spec = dict(self.meta.get("target", {}))
        spec.setdefault("model", "provider-model")
        spec["capabilities"] = frozenset(spec.get("capabilities", ()))
        spec.setdefault("stream", bool(self.client_request.get("stream")))
        return Target(**spec)

    @property
    def status(self) -> int:
        return int(self.meta.get("status", 200))

    @property
    def streams(self) -> bool:
        return (self.path / "provider_response.sse").exists()

    def provider_response(self) -> bytes:
        sse = self.path / "provider_response.sse"
        return sse.read_bytes() if sse.exists() else (self.path / "provider_response.json").read_bytes()

    def provider_content_type(self) -> str:
        default = "text/event-stream" if self.streams else "application/json"
        return self.meta.get("content_type", default)


def all_cases() -> list[Case]:
    return [
        Case(pair, path)
        for pair in PAIRS
        for path in sorted((GOLDEN / pair).iterdir())
        if path.is_dir() and (path / "client_request.json").exists()
    ]


def stream_cases() -> list[Case]:
    return [case for case in all_cases() if case.streams and case.status < 300]


@dataclass
class Replay:
    body: bytes
    usages: list[Usage]


def replay(case: Case, pieces: list[bytes]) -> Replay:
    """Run a case's request, then feed its provider response split into ``pieces``."""
    translator = make_translator(case.pair)
    translator.request(case.client_request, case.target())
    translator.response_headers(case.status, {"content-type": case.provider_content_type()})
    body = b""
    usages = []
    for n, piece in enumerate(pieces):
        chunk = translator.response_body(piece, n == len(pieces) - 1)
        body += chunk.body
        if chunk.usage is not None:
            usages.append(chunk.usage)
    return Replay(body, usages)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(cuts)] or [b""]


def sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    """Decoded SSE: (event name, parsed data) pairs; ``[DONE]`` stays a string."""
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.close()
    return [(e.event, e.data if e.data == "[DONE]" else orjson.loads(e.data)) for e in events]


# --- Anthropic stream invariants -----------------------------------------------------------------


def check_anthropic_stream(body: bytes) -> list[dict[str, Any]]:
    """Every event names its type; one message_start first (then a ping); blocks open and close in
    index order, one at a time; one message_delta right before the single message_stop, which is
    last. A stream that fails ends with one error event instead. Each event validates against the
    SDK's RawMessageStreamEvent. Returns the payloads."""
    events = sse_events(body)
    assert events, "empty stream"
    payloads = []
    for name, payload in events:
        assert isinstance(payload, dict), payload
        assert name == payload["type"], (name, payload)
        payloads.append(payload)
    types = [p["type"] for p in payloads]
    errored = types[-1] == "error"
    assert types.count("error") == (1 if errored else 0), types
    if errored:
        assert "message_stop" not in types
        anthropic.types.ErrorResponse.model_validate(payloads[-1])
        payloads = payloads[:-1]
        types = types[:-1]
        if not payloads:
            return []
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
    return payloads


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


# --- OpenAI stream checks --------------------------------------------------------------------------


def check_openai_stream(body: bytes) -> list[dict[str, Any]]:
    """Unnamed data frames ending with [DONE]; every chunk validates as ChatCompletionChunk (an
    error frame as an error object); at most one finish_reason. Returns the chunk payloads."""
    events = sse_events(body)
    assert events and events[-1] == (None, "[DONE]"), events[-3:]
    assert [e for e in events if e[1] == "[DONE]"] == [events[-1]]
    chunks = []
    finishes = 0
    for name, payload in events[:-1]:
        assert name is None
        if "error" in payload:
            assert payload is events[-2][1], "an error frame is the last frame before [DONE]"
            assert isinstance(payload["error"]["message"], str)
            continue
        openai.types.chat.ChatCompletionChunk.model_validate(payload)
        assert payload["object"] == "chat.completion.chunk"
        for choice in payload["choices"]:
            finishes += choice["finish_reason"] is not None
        chunks.append(payload)
    assert finishes <= 1
    return chunks


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
