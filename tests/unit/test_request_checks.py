"""A request is accepted or refused alike whatever provider format it is routed to.

For each client API, hypothesis builds requests from a valid base with any mix of field values,
well-formed and malformed (extproc.translate.request_checks + each provider's translator, as
extproc.plan runs them): the outcome, accepted or the 400's message, must be the same toward every
provider format, passthrough included.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.translate.base import Api, ClientRequestError, Target
from extproc.translate.registry import translator_for
from extproc.translate.request_checks import check_request
from tests.unit.translating import translate

MISSING = object()
TARGET = Target(model="m", capabilities=frozenset({"tools", "thinking", "vision"}), max_output_tokens=1000)
USER = {"role": "user", "content": "hi"}
TOOL = {"name": "t", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
CALL = {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "t", "input": {"q": "x"}}]}
RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}]}

ANTHROPIC_FIELDS: dict[str, list[Any]] = {
    "max_tokens": [MISSING, 0, -5, "10", True, 1.5, 10, 128000],
    "messages": [
        MISSING,
        [],
        "x",
        [1],
        [{"role": "user"}],
        [{"role": "tool", "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": "user", "content": [{"text": "a"}]}],
        [USER, {"role": "system", "content": "# Environment"}],
        [USER, CALL, RESULT],
        [USER, RESULT],
        [USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "t", "input": 5}]}],
    ],
    "system": [
        5,
        [{"type": "image"}],
        [{"type": "text"}],
        "be brief",
        [{"type": "text", "text": "x-anthropic-billing-header: a;"}],
    ],
    "tools": [
        "x",
        [1],
        [{"name": "t"}],
        [{"input_schema": {}}],
        [{"name": "t", "input_schema": "x"}],
        [TOOL],
        [TOOL, {"type": "web_fetch_20250910", "name": "web_fetch"}],
        [{**TOOL, "defer_loading": True}],
    ],
    "tool_choice": ["auto", {"type": "bogus"}, {"type": "tool"}, 5, {"type": "any"}, {"type": "tool", "name": "t"}],
    "thinking": [
        "x",
        {"type": "bogus"},
        {"type": "enabled"},
        {"type": "enabled", "budget_tokens": -5},
        {"type": "enabled", "budget_tokens": 2048},
        {"type": "adaptive", "display": "omitted"},
    ],
    "temperature": ["hot", 0.5],
    "top_p": ["x", 0.9],
    "top_k": ["x", -1, 1.5, 40],
    "stop_sequences": ["x", [1], ["END"]],
    "metadata": ["x", {"user_id": '{"session_id": "s"}'}],
    "output_config": [
        "x",
        {"effort": 5},
        {"effort": "medium"},
        {"format": {"type": "json_schema"}},
        {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    ],
    "context_management": [{"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}],
}
OPENAI_FIELDS: dict[str, list[Any]] = {
    "max_tokens": [0, -5, "10", True, 100],
    "max_completion_tokens": [0, "x", 100],
    "messages": [
        MISSING,
        [],
        "x",
        [1],
        [{"role": "user"}],
        [{"role": "bogus", "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": "user", "content": [{"text": "a"}]}],
        [{"role": "tool", "content": "x"}],
        [{"role": "tool", "tool_call_id": "c", "content": "x"}],
        [{"role": "assistant", "tool_calls": "x"}],
        [{"role": "assistant", "tool_calls": [{"type": "function"}]}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
    ],
    "n": [2, "x", 0, 1],
    "tools": [
        "x",
        [1],
        [{"type": "function"}],
        [{"type": "function", "function": {}}],
        [{"type": "function", "function": {"name": "t", "parameters": "x"}}],
        [{"type": "custom", "custom": {"name": "x"}}],
        [{"type": "function", "function": {"name": "t"}}],
    ],
    "tool_choice": ["bogus", 5, {"type": "function"}, {"type": "bogus"}, "auto", "required"],
    "temperature": ["hot", 1],
    "top_p": ["x", 1],
    "stop": [5, [1], "END", ["a", "b"]],
    "reasoning_effort": ["bogus", 5, "low"],
    "response_format": [
        "x",
        {"type": "bogus"},
        {"type": "json_schema", "json_schema": {"schema": "x"}},
        {"type": "json_object"},
    ],
    "stream_options": ["x", {"include_usage": True}],
}
BASES = {
    Api.ANTHROPIC: ({"model": "m", "max_tokens": 10, "messages": [USER]}, ANTHROPIC_FIELDS),
    Api.OPENAI: ({"model": "m", "messages": [USER]}, OPENAI_FIELDS),
}


def requests(api: Api) -> st.SearchStrategy[dict[str, Any]]:
    base, fields = BASES[api]

    def build(changes: dict[str, Any]) -> dict[str, Any]:
        body = dict(base)
        for key, value in changes.items():
            if value is MISSING:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    picks = {key: st.sampled_from(values) for key, values in fields.items()}
    return st.fixed_dictionaries({}, optional=picks).map(build)


def outcome(client: Api, provider: Api, body: dict[str, Any]) -> str:
    try:
        check_request(client, body)
        translator = translator_for(client, provider)
        assert translator is not None
        translate(translator, body, TARGET)
    except ClientRequestError as exc:
        return f"{exc.status} {exc.message}"
    return "accepted"


@settings(max_examples=400, deadline=None)
@given(requests(Api.ANTHROPIC))
def test_an_anthropic_request_gets_the_same_answer_toward_every_provider(body: dict[str, Any]) -> None:
    answers = {provider: outcome(Api.ANTHROPIC, provider, body) for provider in Api}
    assert len(set(answers.values())) == 1, answers


@settings(max_examples=400, deadline=None)
@given(requests(Api.OPENAI))
def test_an_openai_request_gets_the_same_answer_toward_every_provider(body: dict[str, Any]) -> None:
    providers = (Api.OPENAI, Api.ANTHROPIC, Api.GEMINI)
    answers = {provider: outcome(Api.OPENAI, provider, body) for provider in providers}
    assert len(set(answers.values())) == 1, answers


def test_every_field_table_holds_accepted_and_refused_values() -> None:
    for api, (base, fields) in BASES.items():
        verdicts = set()
        for key, values in fields.items():
            for value in values:
                body = {**base, key: value} if value is not MISSING else {k: v for k, v in base.items() if k != key}
                verdicts.add(outcome(api, api, body) == "accepted")
        assert verdicts == {True, False}, api


def test_a_count_tokens_request_needs_no_max_tokens() -> None:
    check_request(Api.ANTHROPIC, {"model": "m", "messages": [USER]}, counting=True)
