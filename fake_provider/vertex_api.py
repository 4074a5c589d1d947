"""Google Vertex AI's rawPredict for Anthropic models (Claude on Vertex), as the gateway reaches it:

    POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict
    POST .../models/{model}:streamRawPredict        (SSE, Anthropic's events)
    POST .../models/count-tokens:rawPredict         (the model in the body)

The body is Anthropic's Messages body without ``model`` (it is in the path) and with
``anthropic_version: "vertex-2023-10-16"``; the answers are Anthropic's own, made by the same
planner. What is Google's: the bearer token (``Authorization: Bearer <OAuth access token>``,
checked against ``FakeConfig.vertex_token``) and the errors Google itself gives, in its shape
``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fake_provider.anthropic_api import AnthropicApi
from fake_provider.api import BadRequest
from fake_provider.gemini_api import GOOGLE_STATUSES
from fake_provider.reply import Conversation

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
COUNT_TOKENS_MODEL = "count-tokens"


class VertexApi(AnthropicApi):
    name = "vertex"

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        _check_vertex_body(body)
        if "model" in body:
            raise BadRequest("model: Extra inputs are not permitted (on Vertex AI the model is in the path)")
        return super().parse({**body, "model": path_model or ""}, body_size, None)

    def count_tokens(self, body: Any, body_size: int) -> bytes:
        _check_vertex_body(body)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise BadRequest("model: Field required (count-tokens names the model in the body)")
        return super().count_tokens(body, body_size)

    def error_body(self, status: int, message: str) -> bytes:
        return google_error(status, message)


def _check_vertex_body(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    # Vertex documents "vertex-2023-10-16" (what Claude Code sends); the Anthropic SDKs' Vertex
    # clients send their own API version date there: both are taken, a missing one is not.
    version = body.get("anthropic_version")
    if not isinstance(version, str) or not version:
        raise BadRequest(f"anthropic_version: Field required (e.g. {VERTEX_ANTHROPIC_VERSION!r})")


def google_error(status: int, message: str) -> bytes:
    name = GOOGLE_STATUSES.get(status, "UNKNOWN" if status >= 500 else "FAILED_PRECONDITION")
    return orjson.dumps({"error": {"code": status, "message": message, "status": name}})


def token_problem(headers: Mapping[str, str], expected: str) -> str | None:
    """Why the request's bearer token is refused, or None. ``expected``: the tokens accepted,
    comma-separated (two while one rotates in); "" accepts any token, but one must be sent."""
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return (
            "Request is missing required authentication credential. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential."
        )
    accepted = [t.strip() for t in expected.split(",") if t.strip()]
    if accepted and token.strip() not in accepted:
        return "Request had invalid authentication credentials. Expected OAuth 2 access token."
    return None
