"""Golden cases and stream replay for the Anthropic <-> OpenAI translator tests (the stream checks
live in tests/unit/stream_checks.py, shared with the Gemini tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.base import Target, Usage
from extproc.translate.openai_anthropic import OpenAIToAnthropic

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
PAIRS = ("anthropic_openai", "openai_anthropic")
CREATED = 1_700_000_000  # the fixed clock of OpenAIToAnthropic in tests


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
