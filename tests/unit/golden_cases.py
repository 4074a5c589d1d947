"""The golden translator cases: one layout for every (client API, provider API) pair.

A case is a folder ``tests/golden/<client>_<provider>/<case>/`` holding:
    client_request.json           what the client sent
    case.json          (optional) ``target`` (Target fields over the pair's defaults), upstream
                                  ``status`` and ``content_type``, a ``description``
    provider_request.json         expected upstream request: ``{"path", "headers", "body"}``
    provider_response.json|.sse   what the provider answered
    client_response.json|.sse     expected client answer (SSE compared as decoded events, so a hand
                                  edit need not match the byte layout)

tests/unit/test_golden.py walks them; ``--update-golden`` rewrites the expectations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from extproc.translate.anthropic_gemini import AnthropicToGemini
from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.anthropic_vertex import AnthropicToVertex
from extproc.translate.base import Api, Target, Translator, Usage
from extproc.translate.openai_anthropic import OpenAIToAnthropic
from extproc.translate.openai_gemini import OpenAIToGemini
from tests.unit.translating import translate

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CREATED = 1_700_000_000  # the fixed clock of translators that write OpenAI answers, in tests
PAIRS = {
    "anthropic_openai": (Api.ANTHROPIC, Api.OPENAI),
    "openai_anthropic": (Api.OPENAI, Api.ANTHROPIC),
    "anthropic_gemini": (Api.ANTHROPIC, Api.GEMINI),
    "openai_gemini": (Api.OPENAI, Api.GEMINI),
    "anthropic_vertex": (Api.ANTHROPIC, Api.VERTEX),
}
# The Target a case gets unless its case.json says otherwise, per provider API.
DEFAULT_TARGETS: dict[Api, dict[str, Any]] = {
    Api.ANTHROPIC: {"model": "provider-model"},
    Api.OPENAI: {"model": "provider-model"},
    Api.GEMINI: {"model": "gemini-2.5-pro", "base_path": "/v1beta", "capabilities": ["tools", "vision", "thinking"]},
    Api.VERTEX: {
        "model": "claude-sonnet-4-5@20250929",
        "base_path": "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models",
    },
}


def make_translator(pair: str) -> Translator:
    return {
        "anthropic_openai": AnthropicToOpenAI,
        "openai_anthropic": lambda: OpenAIToAnthropic(clock=lambda: CREATED),
        "anthropic_gemini": AnthropicToGemini,
        "openai_gemini": lambda: OpenAIToGemini(clock=lambda: CREATED),
        "anthropic_vertex": AnthropicToVertex,
    }[pair]()


def make_target(client_request: Any, overrides: dict[str, Any] | None = None, provider: Api = Api.GEMINI) -> Target:
    """The provider's default Target with ``overrides``; ``stream`` as the client request asks."""
    settings: dict[str, Any] = {
        **DEFAULT_TARGETS[provider],
        "stream": isinstance(client_request, dict) and client_request.get("stream") is True,
    }
    settings.update(overrides or {})
    settings["capabilities"] = frozenset(settings.get("capabilities", ()))
    return Target(**settings)


@dataclass(frozen=True)
class Case:
    pair: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.pair}/{self.path.name}"

    @property
    def client(self) -> Api:
        return PAIRS[self.pair][0]

    @property
    def provider(self) -> Api:
        return PAIRS[self.pair][1]

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.path / "case.json"
        return json.loads(meta.read_text()) if meta.exists() else {}

    @property
    def client_request(self) -> dict[str, Any]:
        return orjson.loads((self.path / "client_request.json").read_bytes())

    def target(self) -> Target:
        return make_target(self.client_request, self.meta.get("target"), self.provider)

    @property
    def status(self) -> int:
        return int(self.meta.get("status", 200))

    @property
    def streams(self) -> bool:
        return (self.path / "provider_response.sse").exists()

    def provider_response(self) -> bytes:
        return (self.path / f"provider_response.{'sse' if self.streams else 'json'}").read_bytes()

    def provider_content_type(self) -> str:
        return self.meta.get("content_type", "text/event-stream" if self.streams else "application/json")


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
    """Run a case's request, then feed its provider response split into ``pieces`` (the last one
    with end of stream)."""
    translator = make_translator(case.pair)
    translate(translator, case.client_request, case.target())
    translator.response_headers(case.status, {"content-type": case.provider_content_type()})
    body = b""
    usages = []
    for n, piece in enumerate(pieces):
        chunk = translator.response_body(piece, n == len(pieces) - 1)
        body += chunk.body
        if chunk.usage is not None:
            usages.append(chunk.usage)
    return Replay(body, usages)
