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

import orjson

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
