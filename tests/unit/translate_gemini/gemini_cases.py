"""Golden cases of the Gemini translators and the helpers every test module here shares.

A case is a folder ``tests/golden/<client>_gemini/<case>/`` holding:
    client_request.json           what the client sent
    target.json        (optional) Target overrides: max_output_tokens, capabilities, model, base_path
    provider_path.txt             expected upstream path (no trailing newline)
    provider_request.json         expected upstream body
    provider_response.json|.sse   what Gemini answered (SSE fixtures use \\r\\n line ends)
    client_response.json|.sse     expected client answer (.sse compared byte for byte)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
import pydantic

from extproc.translate.anthropic_gemini import AnthropicToGemini
from extproc.translate.base import Api, Target
from extproc.translate.openai_gemini import OpenAIToGemini

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
PAIRS = {"anthropic_gemini": Api.ANTHROPIC, "openai_gemini": Api.OPENAI}
CREATED = 1_700_000_000  # the fixed clock of OpenAI responses in tests


def make_translator(client: Api) -> AnthropicToGemini | OpenAIToGemini:
    if client is Api.ANTHROPIC:
        return AnthropicToGemini()
    return OpenAIToGemini(clock=lambda: CREATED)


def make_target(client_request: Any, overrides: dict[str, Any] | None = None) -> Target:
    settings: dict[str, Any] = {
        "model": "gemini-2.5-pro",
        "base_path": "/v1beta",
        "stream": isinstance(client_request, dict) and client_request.get("stream") is True,
        "max_output_tokens": None,
        "capabilities": ["tools", "vision", "thinking"],
    }
    settings.update(overrides or {})
    settings["capabilities"] = frozenset(settings["capabilities"])
    return Target(**settings)


@dataclass(frozen=True)
class Case:
    pair: str
    path: Path

    @property
    def id(self) -> str:
        return f"{self.pair}/{self.path.name}"

    @property
    def client(self) -> Api:
        return PAIRS[self.pair]

    @property
    def streaming(self) -> bool:
        return (self.path / "provider_response.sse").exists()

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def target(self) -> Target:
        overrides = self.read_json("target.json") if (self.path / "target.json").exists() else None
        return make_target(self.read_json("client_request.json"), overrides)

    def provider_response(self) -> bytes:
        suffix = "sse" if self.streaming else "json"
        return (self.path / f"provider_response.{suffix}").read_bytes()


def all_cases() -> list[Case]:
    return [
        Case(pair, path)
        for pair in PAIRS
        for path in sorted((GOLDEN / pair).iterdir())
        if (path / "client_request.json").exists()
    ]


def stream_cases() -> list[Case]:
    return [case for case in all_cases() if case.streaming]


def replay(case: Case, pieces: list[bytes]) -> bytes:
    """Translate the case's request, then feed ``pieces`` as the upstream stream; the client bytes."""
    translator = make_translator(case.client)
    translator.request(case.read_json("client_request.json"), case.target())
    out = [translator.response_body(piece, False).body for piece in pieces]
    out.append(translator.response_body(b"", True).body)
    return b"".join(out)


def pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n"


# -- validation against the official SDK types ------------------------------------------------------

_ANTHROPIC_EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each frame of a translator's SSE output (always \\n\\n framed)."""
    events = []
    for frame in body.decode().split("\n\n"):
        if not frame:
            continue
        name, data = None, []
        for line in frame.split("\n"):
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def check_anthropic_stream(body: bytes) -> list[dict[str, Any]]:
    """Anthropic stream invariants; returns the parsed events. One message_start first, then ping;
    blocks opened at increasing indexes and each closed before the next opens; either message_delta
    + message_stop last, or a single error frame last."""
    events = sse_events(body)
    parsed: list[dict[str, Any]] = []
    for name, data in events:
        event = json.loads(data)
        assert event["type"] == name, (name, data)
        if name == "error":
            anthropic.types.ErrorResponse.model_validate(event)
        elif name != "ping":
            _ANTHROPIC_EVENT.validate_python(event)
        parsed.append(event)
    types = [e["type"] for e in parsed]
    if types == ["error"]:
        return parsed
    assert types[0] == "message_start" and types.count("message_start") == 1, types
    assert types[1] == "ping", types
    if types[-1] == "error":
        assert types.count("error") == 1 and "message_stop" not in types, types
    else:
        assert types[-2:] == ["message_delta", "message_stop"], types
        assert types.count("message_stop") == 1 and types.count("message_delta") == 1, types
    open_index, last_index = None, -1
    for event in parsed:
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == last_index + 1, types
            open_index = last_index = event["index"]
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index, types
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index, types
            open_index = None
        elif event["type"] in ("message_delta", "message_stop"):
            assert open_index is None, types
    return parsed


def check_openai_stream(body: bytes, include_usage: bool = False) -> list[dict[str, Any]]:
    """OpenAI chunk invariants: every chunk validates, the first delta has the role, one chunk has a
    finish_reason, usage only when asked, ``[DONE]`` last, after an error payload when one ends it
    (as every OpenAI stream the gateway writes, whatever the provider)."""
    datas = [data for _, data in sse_events(body)]
    assert datas and datas[-1] == "[DONE]" and datas.count("[DONE]") == 1, datas[-3:]
    datas = datas[:-1]
    done = True
    if datas and set(json.loads(datas[-1])) == {"error"}:
        datas = datas[:-1]
        done = False
    chunks = [json.loads(d) for d in datas]
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
        assert chunk["object"] == "chat.completion.chunk"
    if chunks:
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    usage = [c for c in chunks if not c["choices"]]
    if done:
        assert len(finished) == 1
        assert len(usage) == (1 if include_usage else 0)
        if include_usage:
            assert chunks[-1] is usage[0] and chunks[-2] is finished[0]
        else:
            assert chunks[-1] is finished[0]
    return chunks
