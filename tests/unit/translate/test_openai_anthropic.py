"""OpenAIToAnthropic behaviour beyond the golden cases: validation messages, mapping tables,
thinking rules, stream edge cases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.translate.base import ClientRequestError, Target, UpstreamProtocolError, Usage
from extproc.translate.openai_anthropic import OpenAIToAnthropic
from tests.unit.golden_cases import CREATED
from tests.unit.stream_checks import accumulate_openai, check_openai_stream
from tests.unit.translating import translate

TARGET = Target(model="claude-x", capabilities=frozenset({"tools", "thinking"}))
STREAM = Target(model="claude-x", stream=True, capabilities=frozenset({"tools", "thinking"}))
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _translator() -> OpenAIToAnthropic:
    return OpenAIToAnthropic(clock=lambda: CREATED)


def _req(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], **fields}


def _body(request: dict[str, Any], target: Target = TARGET) -> dict[str, Any]:
    return orjson.loads(translate(_translator(), request, target).body)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({}, "messages: required, must be a non-empty array"),
        ({"messages": []}, "messages: required, must be a non-empty array"),
        (_req(messages=[{"role": "system", "content": "s"}]), "messages: no user or assistant message"),
        (_req(n=2), "n: only 1 choice is supported"),
        (_req(messages=[{"role": "robot", "content": "x"}]), "messages.0.role: must be one of"),
        (_req(messages=[{"role": "user", "content": 3}]), "messages.0.content: must be a string, an array of parts"),
        (
            _req(messages=[{"role": "user", "content": [{"type": "video"}]}]),
            "messages.0.content.0: unknown content part type 'video'",
        ),
        (
            _req(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]),
            "messages.0.content.0: audio input is not supported",
        ),
        (
            _req(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]),
            "messages.0.content.0.image_url.url: must be an http(s) URL or a base64 data URL",
        ),
        (
            _req(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}],
                    }
                ]
            ),
            "messages.0.content.0.image_url.url: unsupported image type 'image/bmp'",
        ),
        (
            _req(messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]),
            "messages.0.content.0.file: only inline file_data is supported",
        ),
        (
            _req(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]),
            "messages.0.content.0: only text parts are allowed here",
        ),
        (_req(messages=[{"role": "tool", "content": "x"}]), "messages.0.tool_call_id: required"),
        (_req(messages=[{"role": "function", "name": "f", "content": "x"}]), "messages.0: function message without"),
        (_req(messages=[{"role": "assistant", "tool_calls": {}}]), "messages.0.tool_calls: must be an array"),
        (
            _req(messages=[{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]),
            "messages.0.tool_calls.0.id: required",
        ),
        (
            _req(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}]),
            "messages.0.tool_calls.0: must be a function tool call",
        ),
        (
            _req(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}]),
            "messages.0.tool_calls.0.function.name: required",
        ),
        (
            _req(messages=[{"role": "assistant", "content": 1}]),
            "messages.0.content: must be a string, an array of parts or null",
        ),
        (_req(reasoning_effort="extreme"), "reasoning_effort: must be one of"),
        (_req(stop=5), "stop: must be a string or an array of strings"),
        (_req(max_tokens=0), "max_tokens: must be a positive integer"),
        (_req(max_completion_tokens="9"), "max_completion_tokens: must be a positive integer"),
        (_req(temperature="warm"), "temperature: must be a number"),
        (_req(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools.0.type: only 'function' tools"),
        (_req(tools=[{"type": "function"}]), "tools.0.function: required"),
        (
            _req(tools=[TOOL], tool_choice={"type": "function", "function": {}}),
            "tool_choice.function.name: required when type is 'function'",
        ),
        (_req(tools=[TOOL], tool_choice="sometimes"), "tool_choice: must be 'auto', 'required', 'none' or an object"),
    ],
)
def test_malformed_request_is_refused_with_a_precise_message(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientRequestError) as info:
        translate(_translator(), request_, TARGET)
    assert info.value.message.startswith(message), info.value.message


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", None),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}, {"type": "any"}),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}, None),
    ],
)
def test_tool_choice_maps_to_anthropic(choice: Any, expected: Any) -> None:
    assert _body(_req(tools=[TOOL], tool_choice=choice)).get("tool_choice") == expected


def test_parallel_tool_calls_false_disables_parallel_use() -> None:
    body = _body(_req(tools=[TOOL], parallel_tool_calls=False))
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "tool_choice" not in _body(_req(tool_choice="required"))  # no tools: no choice


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    tools = [
        {"type": "function", "function": {"name": "g"}},
        {"type": "function", "function": {"name": "h", "parameters": {"properties": {}}}},
    ]
    out = _body(_req(tools=tools))["tools"]
    assert out == [
        {"name": "g", "input_schema": {"type": "object", "properties": {}}},
        {"name": "h", "input_schema": {"properties": {}, "type": "object"}},
    ]


def test_thinking_budget_rules() -> None:
    assert _body(_req(reasoning_effort="medium"))["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert _body(_req(reasoning_effort="medium"))["max_tokens"] == 4096 + 8192
    assert _body(_req(reasoning_effort="high", max_tokens=10000))["thinking"]["budget_tokens"] == 5000
    assert "thinking" not in _body(_req(reasoning_effort="low", max_tokens=1500))  # half is under 1024
    assert "thinking" not in _body(_req(reasoning_effort="none"))
    assert "thinking" not in _body(_req(reasoning_effort="high"), Target(model="m"))
    forced = _body(_req(reasoning_effort="high", tools=[TOOL], tool_choice="required", temperature=0.5))
    assert "thinking" not in forced and forced["temperature"] == 0.5


def test_thinking_drops_sampling_parameters() -> None:
    body = _body(_req(reasoning_effort="low", temperature=0.3, top_p=0.5))
    assert "thinking" in body and "temperature" not in body and "top_p" not in body


def test_thinking_is_off_in_the_middle_of_a_tool_loop() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "done"},
    ]
    assert "thinking" not in _body(_req(messages=messages, tools=[TOOL], reasoning_effort="high"))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 2}, {"temperature": 1}),
        ({"temperature": -1}, {"temperature": 0}),
        ({"top_p": 0.5}, {"top_p": 0.5}),
        ({"temperature": 0.5, "top_p": 0.5}, {"temperature": 0.5}),
    ],
)
def test_sampling_parameters(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = _body(_req(**fields))
    assert {k: body[k] for k in ("temperature", "top_p") if k in body} == expected


def test_legacy_functions_round_trip() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": '{"a":1}'}},
        {"role": "function", "name": "f", "content": "ok"},
    ]
    body = _body(_req(messages=messages, functions=[{"name": "f"}], function_call={"name": "f"}))
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "tool", "name": "f"}
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}]
    assert body["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "ok"}]


def test_consecutive_same_role_messages_merge_and_empty_ones_vanish() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "c"},
    ]
    out = _body(_req(messages=messages))["messages"]
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "c"},
            ],
        }
    ]


def test_unparseable_history_arguments_are_kept_raw() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
        },
    ]
    block = _body(_req(messages=messages))["messages"][1]["content"][0]
    assert block["input"] == {"_raw_arguments": "{oops"}


def test_long_user_is_hashed_and_json_object_mode_is_an_instruction() -> None:
    body = _body(_req(user="u" * 300, response_format={"type": "json_object"}))
    assert len(body["metadata"]["user_id"]) == 64
    assert body["system"] == [{"type": "text", "text": "Respond with a single valid JSON object and nothing else."}]


def test_request_headers_and_path() -> None:
    up = translate(_translator(), _req(), Target(model="m", base_path="/anthropic"))
    assert up.path == "/anthropic/v1/messages" and up.headers == (("anthropic-version", "2023-06-01"),)


# --- responses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason: Any, finish: str) -> None:
    t = _translator()
    translate(t, _req(), TARGET)
    message = {"id": "msg_1", "type": "message", "model": "c", "content": [], "stop_reason": stop_reason, "usage": {}}
    out = orjson.loads(t.response_body(orjson.dumps(message), True).body)
    assert out["choices"][0]["finish_reason"] == finish
    assert out["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize("raw", [b"nope", b"[1]", b'{"type": "message"}', b'{"type":"error","error":{"message":"x"}}'])
def test_broken_message_is_an_upstream_protocol_error(raw: bytes) -> None:
    t = _translator()
    translate(t, _req(), TARGET)
    with pytest.raises(UpstreamProtocolError):
        t.response_body(raw, True)


def test_response_error_plain_text_and_status() -> None:
    answer = _translator().response_error(529, b"Overloaded")
    assert answer.status == 529
    assert orjson.loads(answer.body)["error"]["message"] == "Overloaded"
    assert orjson.loads(answer.body)["error"]["type"] == "server_error"


def _stream(*events: bytes | dict[str, Any], include_usage: bool = False) -> tuple[bytes, Usage | None]:
    t = _translator()
    translate(t, _req(stream=True, stream_options={"include_usage": include_usage}), STREAM)
    t.response_headers(200, {"content-type": "text/event-stream"})
    raw = b"".join(
        e if isinstance(e, bytes) else b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
        for e in events
    )
    chunk = t.response_body(raw, True)
    return chunk.body, chunk.usage


START = {
    "type": "message_start",
    "message": {"id": "msg_A", "model": "c", "usage": {"input_tokens": 5, "output_tokens": 1}},
}


def test_stream_cut_before_message_stop_still_finishes() -> None:
    body, usage = _stream(
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        include_usage=True,
    )
    result = accumulate_openai(check_openai_stream(body))
    assert result["content"] == "Hello" and result["finish_reason"] == "stop"
    assert result["usage"]["prompt_tokens"] == 5
    assert usage == Usage(input_tokens=5, output_tokens=1)


def test_stream_without_message_start_and_unknown_events_still_works() -> None:
    body, _ = _stream(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}},
        {"type": "brand_new_event", "foo": 1},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta", "citation": {}}},
        {"type": "message_stop"},
    )
    result = accumulate_openai(check_openai_stream(body))
    assert result["content"] == "x"


def test_empty_or_malformed_stream_is_an_error_frame_then_done() -> None:
    body, _ = _stream(b"")
    assert check_openai_stream(body) == [] and b"without a response" in body
    body, _ = _stream(START, b"data: {broken\n\n")
    assert b"invalid stream event" in body
    check_openai_stream(body)


def test_tool_use_with_full_input_at_block_start() -> None:
    body, _ = _stream(
        START,
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    )
    result = accumulate_openai(check_openai_stream(body))
    assert result["tools"] == {0: {"id": "t", "name": "f", "arguments": '{"a":1}'}}
    assert result["finish_reason"] == "tool_calls" and result["usage"] is None
