"""A translator fed as extproc.plan feeds it: the client's body parsed (checked and typed) first."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from extproc.translate.base import Api, Target, Translator, UpstreamRequest
from extproc.translate.client_request import parse_request


def translate(translator: Translator, body: Mapping[str, Any], target: Target) -> UpstreamRequest:
    """``translator.request`` on ``body`` parsed as its client API; a body that API refuses raises
    ClientRequestError here, as it is answered in the gateway before any translator sees it."""
    return translator.request(parse_request(translator.client_api, body), target)


@dataclass(frozen=True)
class FixtureCase:
    """One golden case directory of a provider format's tests: ``case.json`` (the client API, the
    target, the provider's status) and ``client_request.json``; the provider's answer is each
    format's own (subclasses read it)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "case.json").read_text())

    @property
    def client(self) -> Api:
        return Api(self.meta.get("client", "anthropic"))

    @property
    def client_request(self) -> dict[str, Any]:
        return orjson.loads((self.path / "client_request.json").read_bytes())

    def target(self) -> Target:
        settings = {**self.meta.get("target", {}), "stream": self.client_request.get("stream") is True}
        settings["capabilities"] = frozenset(settings.get("capabilities", ()))
        return Target(**settings)

    @property
    def status(self) -> int:
        return int(self.meta.get("status", 200))
