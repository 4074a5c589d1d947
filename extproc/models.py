"""``GET /v1/models`` and ``GET /v1/models/{id}``: the policy's models in the caller's API shape.

Every field the official SDKs declare is filled from the policy (Anthropic ``ModelInfo``: context
window, max output, lifecycle, capabilities; OpenAI ``Model``: created, owner). Anthropic's list
pages by ``limit``, ``after_id`` and ``before_id`` (``has_more``, ``first_id``, ``last_id``);
OpenAI's list has no paging. Pure: the routing table and the query string in, a status and a JSON
body out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from extproc.routing_table import ModelRoute, RoutingTable
from extproc.translate.base import Api

# A fixed "release" time for every model the gateway lists: the policy knows no release dates, and a
# time that changed per request or per policy version would make clients think the model changed.
MODELS_CREATED = datetime(2025, 1, 1, tzinfo=UTC)
CREATED_AT = MODELS_CREATED.strftime("%Y-%m-%dT%H:%M:%SZ")
CREATED_UNIX = int(MODELS_CREATED.timestamp())
DEFAULT_LIMIT = 20  # Anthropic's
MAX_LIMIT = 1000
LIST_PATHS = ("/v1/models", "/models")


@dataclass(frozen=True, slots=True)
class ModelsAnswer:
    """200 with a body, or an error (``message``) for the caller to format in the client's API."""

    status: int
    body: bytes = b""
    message: str = ""


def model_id_of(path: str) -> str | None:
    """The id in ``/v1/models/{id}`` (or ``/models/{id}``), percent-decoded; None for another path."""
    for prefix in LIST_PATHS:
        if path.startswith(prefix + "/") and len(path) > len(prefix) + 1:
            return unquote(path[len(prefix) + 1 :])
    return None


def retrieve(api: Api, table: RoutingTable, model_id: str) -> ModelsAnswer:
    route = table.models.get(model_id)
    if route is None:
        return ModelsAnswer(404, message=f"model {model_id!r} is not served by this gateway")
    item = openai_model(route) if api is Api.OPENAI else anthropic_model(route)
    return ModelsAnswer(200, orjson.dumps(item))


def listing(api: Api, table: RoutingTable, query: str) -> ModelsAnswer:
    names = table.model_names()
    if api is Api.OPENAI:
        data = [openai_model(table.models[name]) for name in names]
        return ModelsAnswer(200, orjson.dumps({"object": "list", "data": data}))
    page = _page(names, parse_qs(query, keep_blank_values=True))
    if isinstance(page, str):
        return ModelsAnswer(400, message=page)
    shown, has_more = page
    body = {
        "data": [anthropic_model(table.models[name]) for name in shown],
        "has_more": has_more,
        "first_id": shown[0] if shown else None,
        "last_id": shown[-1] if shown else None,
    }
    return ModelsAnswer(200, orjson.dumps(body))


def _page(names: list[str], query: Mapping[str, list[str]]) -> tuple[list[str], bool] | str:
    """Anthropic's paging: ``limit`` items after ``after_id`` or before ``before_id`` (the items
    nearest the cursor); an error message for a bad parameter."""
    limit = DEFAULT_LIMIT
    if "limit" in query:
        text = query["limit"][-1]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            return f"limit: must be an integer between 1 and {MAX_LIMIT}, got {text!r}"
        limit = int(text)
    after = query.get("after_id", [""])[-1]
    before = query.get("before_id", [""])[-1]
    if after and before:
        return "after_id and before_id cannot be used together"
    for name, cursor in (("after_id", after), ("before_id", before)):
        if cursor and cursor not in names:
            return f"{name}: model {cursor!r} is not served by this gateway"
    if before:
        end = names.index(before)
        start = max(0, end - limit)
        return names[start:end], start > 0
    start = names.index(after) + 1 if after else 0
    return names[start : start + limit], start + limit < len(names)


def anthropic_model(route: ModelRoute) -> dict[str, Any]:
    """Anthropic's ModelInfo: every field its SDK declares."""
    target = route.target
    return {
        "type": "model",
        "id": route.model,
        "display_name": route.model,
        "created_at": CREATED_AT,
        "lifecycle": "active",
        "deprecated_at": None,
        "retires_at": None,
        "line": None,  # Anthropic: never inferred from the id
        "max_input_tokens": route.context_window or None,
        "max_tokens": target.max_output_tokens,
        "capabilities": capabilities(target.capabilities),
    }


def openai_model(route: ModelRoute) -> dict[str, Any]:
    """OpenAI's Model: every field its SDK declares."""
    return {
        "id": route.model,
        "object": "model",
        "created": CREATED_UNIX,
        "owned_by": route.provider.name,
        "shutdown_date": None,
    }


def capabilities(declared: frozenset[str]) -> dict[str, Any]:
    """Anthropic's ModelCapabilities ("keys are always present") from the policy's capabilities.
    What the policy cannot say, or the gateway does not serve (batches, code execution, context
    management), is reported unsupported."""

    def flag(on: bool) -> dict[str, bool]:
        return {"supported": on}

    thinking = "thinking" in declared
    vision = "vision" in declared
    web_search = "web_search" in declared
    return {
        "batch": flag(False),
        "citations": flag(False),
        "code_execution": flag(False),
        "context_management": {"supported": False},
        "effort": {
            "supported": thinking,
            "low": flag(thinking),
            "medium": flag(thinking),
            "high": flag(thinking),
            "max": flag(False),
        },
        "image_input": flag(vision),
        "pdf_input": flag(vision),
        "server_tools": {"supported": web_search, "web_search": flag(web_search), "code_execution": flag(False)},
        "structured_outputs": flag("tools" in declared),
        "thinking": {
            "supported": thinking,
            "types": {
                "enabled": flag(thinking),
                "adaptive": flag(thinking),
                "between_tools": flag(thinking),
                "disabled": flag(True),
            },
        },
    }
