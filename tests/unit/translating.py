"""A translator fed as extproc.plan feeds it: the client's body parsed (checked and typed) first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.translate.base import Target, Translator, UpstreamRequest
from extproc.translate.client_request import parse_request


def translate(translator: Translator, body: Mapping[str, Any], target: Target) -> UpstreamRequest:
    """``translator.request`` on ``body`` parsed as its client API; a body that API refuses raises
    ClientRequestError here, as it is answered in the gateway before any translator sees it."""
    return translator.request(parse_request(translator.client_api, body), target)
