"""What the OpenAI-family clients (Chat Completions, Responses) share on their way to Anthropic
Messages: tools and tool choice, the JSON instruction, the thinking budget, max_tokens and the
sampling settings, the user id. One copy, so the two translators cannot drift apart on how a
request's limits and tools reach Anthropic (extproc.translate.openai_anthropic,
extproc.translate.responses_anthropic)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from extproc.translate import anthropic_schema as A
from extproc.translate.base import Target
from extproc.translate.client_request import Tool, ToolChoice

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients may leave it out
_USER_ID_LIMIT = 256
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def tool(tool: Tool) -> dict[str, Any]:
    converted: dict[str, Any] = {"name": tool.name}
    if tool.description:
        converted["description"] = tool.description
    schema = tool.schema
    if schema is None:
        schema = _EMPTY_SCHEMA
    elif schema.get("type") != "object":
        schema = {**schema, "type": "object"}  # Anthropic requires an object schema
    converted["input_schema"] = schema
    return converted


def tool_choice(choice: ToolChoice | None, parallel_tool_calls: bool) -> dict[str, Any] | None:
    if choice is not None and choice.mode == "none":
        return {"type": "none"}
    result: dict[str, Any] | None = None
    if choice is not None and choice.mode == "tool":
        result = {"type": "tool", "name": choice.name}
    elif choice is not None and choice.mode == "any":
        result = {"type": "any"}
    if not parallel_tool_calls:
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def json_instruction(response_format: str | None, schema: Any) -> dict[str, Any] | None:
    """Anthropic has no portable JSON mode: a system text block asking for it (best effort)."""
    if response_format not in ("json_object", "json_schema"):
        return None
    text = "Respond with a single valid JSON object and nothing else"
    if schema is not None:
        text += ", matching this JSON schema: " + orjson.dumps(schema).decode()
    return {"type": "text", "text": text + "."}


def thinking_budget(
    target: Target, messages: Sequence[dict[str, Any]], effort: str | None, choice: dict[str, Any] | None
) -> int | None:
    if effort is None or effort == "none":
        return None
    if "thinking" not in target.capabilities:
        return None
    if choice is not None and choice["type"] in ("any", "tool"):
        return None  # Anthropic refuses thinking with a forced tool
    last = messages[-1]
    if last["role"] == "user" and any(b["type"] == "tool_result" for b in last["content"]):
        return None  # mid tool loop: the previous turn's signed thinking block is not available
    return A.BUDGET_FOR_EFFORT[effort]


def settle_limits(
    out: dict[str, Any],
    target: Target,
    max_tokens: int,
    budget: int | None,
    temperature: float | None,
    top_p: float | None,
) -> None:
    """``max_tokens`` (clamped to the target), ``thinking`` when the budget fits below it, else the
    sampling settings (Anthropic takes none with thinking on; temperature clamped to 0..1, top_p
    only without temperature: current Claude models reject the pair)."""
    if target.max_output_tokens is not None:
        max_tokens = min(max_tokens, target.max_output_tokens)
    out["max_tokens"] = max_tokens
    if budget:
        if budget >= max_tokens:  # Anthropic needs budget < max_tokens: share the client's cap
            budget = max_tokens // 2
        if budget >= A.MIN_THINKING_BUDGET:
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if "thinking" not in out:
        if temperature is not None:
            out["temperature"] = min(max(temperature, 0), 1)
        elif top_p is not None:
            out["top_p"] = top_p


def user_metadata(user: str | None) -> dict[str, str] | None:
    """Anthropic's metadata.user_id (a long OpenAI ``user`` is hashed to fit)."""
    if user is None:
        return None
    return {"user_id": hashlib.sha256(user.encode()).hexdigest() if len(user) > _USER_ID_LIMIT else user}
