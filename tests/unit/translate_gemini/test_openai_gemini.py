"""OpenAIToGemini behaviour the golden cases do not pin down."""

from __future__ import annotations

import orjson
import pytest

from extproc.translate.base import Api, ClientRequestError
from extproc.translate.openai_gemini import OpenAIToGemini
from extproc.translate.registry import translator_for
from tests.unit.golden_cases import CREATED, make_target
from tests.unit.stream_checks import check_openai_stream, sse_events
from tests.unit.translating import translate

USER = {"role": "user", "content": "hi"}


def _request(body: dict, **target) -> dict:
    upstream = translate(OpenAIToGemini(clock=lambda: CREATED), body, make_target(body, target))
    return orjson.loads(upstream.body)


def test_the_registry_builds_this_translator() -> None:
    translator = translator_for(Api.OPENAI, Api.GEMINI)
    assert isinstance(translator, OpenAIToGemini)
    assert (translator.client_api, translator.provider_api) == (Api.OPENAI, Api.GEMINI)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [USER], "n": 2}, "n: only 1 choice is supported"),
        (
            {"messages": [{"role": "critic", "content": "x"}]},
            "messages.0.role: must be one of system, developer, user, assistant, tool, function, got 'critic'",
        ),
        (
            {"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]},
            "messages.0.tool_call_id: 'c' answers no earlier tool call",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0: unknown content part type 'video'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}
                ]
            },
            "messages.0.content.0.image_url.url: only base64 data: URLs are supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
            "messages.0.content.0.file.file_id: uploaded file ids cannot be sent to a Gemini model",
        ),
        (
            {"messages": [USER], "tools": [{"type": "custom", "custom": {"name": "x"}}]},
            "tools.0.type: only 'function' tools are supported",
        ),
        (
            {
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "sometimes",
            },
            "tool_choice: must be 'auto', 'required', 'none' or an object, got 'sometimes'",
        ),
        (
            {"messages": [USER], "reasoning_effort": "extreme"},
            "reasoning_effort: must be one of none, minimal, low, medium, high, xhigh, got 'extreme'",
        ),
        (
            {"messages": [USER], "response_format": {"type": "yaml"}},
            "response_format.type: must be one of text, json_object, json_schema, got 'yaml'",
        ),
        ({"messages": [USER], "max_completion_tokens": -1}, "max_completion_tokens: must be a positive integer"),
        (
            {"messages": [{"role": "system", "content": "only system"}]},
            "messages: no user or assistant message has any content",
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_precise_message(body: dict, message: str) -> None:
    with pytest.raises(ClientRequestError) as info:
        translate(OpenAIToGemini(), {"model": "g", **body}, make_target(body))
    assert info.value.message == message


def test_reasoning_effort_is_ignored_for_targets_without_thinking() -> None:
    body = {"messages": [USER], "reasoning_effort": "high"}
    assert "generationConfig" not in _request(body, capabilities=[])


def test_reasoning_effort_none_turns_thinking_off() -> None:
    body = {"messages": [USER], "reasoning_effort": "none"}
    assert _request(body)["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 0}}


def test_json_object_response_format_asks_for_json() -> None:
    body = {"messages": [USER], "response_format": {"type": "json_object"}}
    assert _request(body)["generationConfig"] == {"responseMimeType": "application/json"}


def test_web_search_options_add_google_search_next_to_functions() -> None:
    body = {"messages": [USER], "web_search_options": {}, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert _request(body)["tools"] == [{"functionDeclarations": [{"name": "f"}]}, {"googleSearch": {}}]
    assert _request({"messages": [USER], "web_search_options": {}})["tools"] == [{"googleSearch": {}}]


def test_legacy_function_messages_are_translated() -> None:
    body = {
        "messages": [
            USER,
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": '{"a":1}'}},
            {"role": "function", "name": "f", "content": "done"},
        ]
    }
    assert _request(body)["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "f", "args": {"a": 1}},
                    "thoughtSignature": "skip_thought_signature_validator",
                }
            ],
        },
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"content": "done"}}}]},
    ]


def test_allowed_tools_choice_restricts_names_in_required_mode() -> None:
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "f"}}]},
    }
    body = {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": choice}
    assert _request(body)["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}


def test_created_comes_from_the_injected_clock_once_per_response() -> None:
    ticks = iter(range(100, 200))
    translator = OpenAIToGemini(clock=lambda: next(ticks))
    body = {"model": "g", "stream": True, "messages": [USER]}
    translate(translator, body, make_target(body))
    raw = b"".join(
        b"data: " + orjson.dumps({"candidates": [{"content": {"parts": [{"text": t}]}}]}) + b"\n\n" for t in "abc"
    )
    out = translator.response_body(raw, True).body
    chunks = check_openai_stream(out)
    assert {c["created"] for c in chunks} == {100}


def test_parallel_tool_calls_keep_their_indexes() -> None:
    translator = OpenAIToGemini(clock=lambda: CREATED)
    body = {"model": "g", "stream": True, "messages": [USER]}
    translate(translator, body, make_target(body))
    parts = [{"functionCall": {"name": "a", "args": {}}}, {"functionCall": {"name": "b", "args": {"x": 1}}}]
    raw = b"data: " + orjson.dumps({"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]}) + b"\n\n"
    chunks = check_openai_stream(translator.response_body(raw, True).body)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [
        (0, "call_0_0_a", "a"),
        (1, "call_0_1_b", "b"),
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_non_stream_tool_calls_leave_content_null() -> None:
    translator = OpenAIToGemini(clock=lambda: CREATED)
    body = {"model": "g", "messages": [USER, {"role": "assistant", "content": "earlier"}, USER]}
    translate(translator, body, make_target(body))
    raw = orjson.dumps(
        {
            "candidates": [
                {"content": {"parts": [{"functionCall": {"name": "f", "args": {"q": "x"}}}]}, "finishReason": "STOP"}
            ]
        }
    )
    choice = orjson.loads(translator.response_body(raw, True).body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1_0_f", "type": "function", "function": {"name": "f", "arguments": '{"q":"x"}'}}],
    }


def test_empty_upstream_stream_becomes_an_error_payload() -> None:
    translator = OpenAIToGemini(clock=lambda: CREATED)
    body = {"model": "g", "stream": True, "messages": [USER]}
    translate(translator, body, make_target(body))
    out = translator.response_body(b"", True).body
    [(_, data), (_, done)] = sse_events(out)
    assert data["error"]["type"] == "server_error" and done == "[DONE]"


def test_gemini_errors_become_openai_errors_with_the_same_status() -> None:
    result = OpenAIToGemini().response_error(
        404, b'{"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}'
    )
    assert result.status == 404
    assert orjson.loads(result.body) == {
        "error": {"message": "NOT_FOUND: models/x is not found", "type": "not_found_error", "param": None, "code": None}
    }
