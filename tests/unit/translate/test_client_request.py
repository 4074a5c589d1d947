"""The typed request every pair translator reads: both client APIs' tools and tool choices in one
shape, the values frozen, and a refused body refused before any value is built."""

from __future__ import annotations

import dataclasses

import pytest

from extproc.translate.base import Api, ClientRequestError
from extproc.translate.client_request import (
    AnthropicRequest,
    OpenAIRequest,
    Thinking,
    Tool,
    ToolChoice,
    parse_request,
)

USER = {"role": "user", "content": "hi"}
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}


def _anthropic(**fields: object) -> AnthropicRequest:
    request = parse_request(Api.ANTHROPIC, {"model": "m", "max_tokens": 10, "messages": [USER], **fields})
    assert isinstance(request, AnthropicRequest)
    return request


def _openai(**fields: object) -> OpenAIRequest:
    request = parse_request(Api.OPENAI, {"model": "m", "messages": [USER], **fields})
    assert isinstance(request, OpenAIRequest)
    return request


def test_values_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _anthropic().model = "other"  # type: ignore[misc]


def test_anthropic_tools_keep_client_tools_and_name_what_no_other_provider_gets() -> None:
    request = _anthropic(
        tools=[
            {"name": "Read", "description": "read a file", "input_schema": SCHEMA, "strict": True},
            {"name": "Rare", "input_schema": SCHEMA, "defer_loading": True},
            {"type": "web_search_20250305", "name": "web_search"},
            {"type": "bash_20250124", "name": "bash"},
        ],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert request.tools == (Tool("Read", "read a file", SCHEMA, True),)
    assert request.dropped_tools == {"Rare", "web_search", "bash"}
    assert request.web_search is True
    assert request.tool_choice == ToolChoice("any")
    assert request.parallel_tool_calls is False


def test_a_deferred_tool_is_offered_once_a_tool_search_loaded_it() -> None:
    loaded = [
        USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "s", "name": "ToolSearch", "input": {}}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "s",
                    "content": [{"type": "tool_reference", "tool_name": "Rare"}],
                }
            ],
        },
    ]
    request = _anthropic(messages=loaded, tools=[{"name": "Rare", "input_schema": SCHEMA, "defer_loading": True}])
    assert [tool.name for tool in request.tools] == ["Rare"]
    assert request.turns == 1


def test_anthropic_thinking_effort_and_answer_schema() -> None:
    request = _anthropic(
        thinking={"type": "adaptive", "display": "omitted"},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": SCHEMA}},
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc=1;"}, {"type": "text", "text": "Be brief."}],
        metadata={"user_id": "u1"},
        stop_sequences=["END"],
    )
    assert request.thinking == Thinking("adaptive", None, shown=False)
    assert (request.effort, request.answer_schema) == ("high", SCHEMA)
    assert request.system == ("Be brief.",)
    assert (request.user_id, request.stop) == ("u1", ("END",))


@pytest.mark.parametrize(
    ("fields", "choice"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, ToolChoice("auto")),
        ({"tool_choice": "required"}, ToolChoice("any")),
        ({"tool_choice": "none"}, ToolChoice("none")),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, ToolChoice("tool", "f")),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "f"}}]},
                }
            },
            ToolChoice("any", allowed=("f",)),
        ),
        ({"function_call": {"name": "f"}}, ToolChoice("tool", "f")),
        ({"function_call": "none"}, ToolChoice("none")),
    ],
)
def test_openai_tool_choices_in_the_shared_shape(fields: dict, choice: ToolChoice | None) -> None:
    assert _openai(**fields).tool_choice == choice


def test_openai_tools_and_the_older_functions_read_alike() -> None:
    function = {"name": "f", "description": "d", "parameters": SCHEMA}
    assert _openai(tools=[{"type": "function", "function": function}]).tools == (Tool("f", "d", SCHEMA),)
    assert _openai(functions=[function]).tools == (Tool("f", "d", SCHEMA),)
    with pytest.raises(ClientRequestError, match=r"^functions\.0\.name: required"):
        _openai(functions=[{"description": "no name"}])


def test_openai_limits_stop_and_stream_options() -> None:
    request = _openai(max_tokens=50, stop="END", stream=True, stream_options={"include_usage": True}, seed=7)
    assert (request.max_tokens, request.max_tokens_field) == (50, "max_tokens")
    assert _openai(max_completion_tokens=9, max_tokens=50).max_tokens == 9
    assert (request.stop, request.stream, request.include_usage, request.seed) == (("END",), True, True, 7)


def test_a_refused_body_never_becomes_a_value() -> None:
    with pytest.raises(ClientRequestError, match=r"^request body must be a JSON object$"):
        parse_request(Api.OPENAI, [])  # type: ignore[arg-type]
    with pytest.raises(ClientRequestError, match=r"^seed: must be an integer$"):
        _openai(seed="7")
    with pytest.raises(ClientRequestError, match=r"^max_tokens: required"):
        parse_request(Api.ANTHROPIC, {"model": "m", "messages": [USER]})
    assert parse_request(Api.ANTHROPIC, {"model": "m", "messages": [USER]}, counting=True).max_tokens is None
