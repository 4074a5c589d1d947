"""AnthropicToOpenAI behaviour beyond the golden cases: validation messages, mapping tables,
stream edge cases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.base import ClientRequestError, Target, UpstreamProtocolError, Usage
from tests.unit.stream_checks import accumulate_anthropic, check_anthropic_stream, sse_events
from tests.unit.translating import translate

TARGET = Target(model="gpt-x", capabilities=frozenset({"tools", "thinking"}))
STREAM = Target(model="gpt-x", stream=True, capabilities=frozenset({"tools", "thinking"}))


def _req(**fields: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}


def _body(request: dict[str, Any], target: Target = TARGET) -> dict[str, Any]:
    return orjson.loads(translate(AnthropicToOpenAI(), request, target).body)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"max_tokens": 10}, "messages: required, must be a non-empty array"),
        ({"max_tokens": 10, "messages": []}, "messages: required, must be a non-empty array"),
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens: required, must be a positive integer"),
        (_req(max_tokens=True), "max_tokens: required, must be a positive integer"),
        (_req(messages=[{"role": "tool", "content": "x"}]), "messages.0.role: must be 'user', 'assistant' or 'system'"),
        (_req(messages=["x"]), "messages.0: must be an object"),
        (_req(messages=[{"role": "user", "content": 5}]), "messages.0.content: must be a string or an array"),
        (
            _req(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "foo"}]}]),
            "messages.1.content.0: unknown block type 'foo'",
        ),
        (_req(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages.0.content.0: must be an object"),
        (_req(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text: required"),
        (
            _req(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]),
            "messages.0.content.0: tool_use blocks belong in assistant messages",
        ),
        (
            _req(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "b", "input": {}}]}]),
            "messages.0.content.0.id: required",
        ),
        (
            _req(
                messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": 3}]}]
            ),
            "messages.0.content.0.input: must be an object",
        ),
        (
            _req(messages=[{"role": "assistant", "content": [{"type": "image", "source": {}}]}]),
            "messages.0.content.0: image blocks are only allowed in user messages",
        ),
        (
            _req(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
            "messages.0.content.0.tool_use_id: required",
        ),
        (
            _req(
                messages=[
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "b", "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 1}]},
                ]
            ),
            "messages.1.content.0.content: must be a string or an array",
        ),
        (
            _req(
                messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]
            ),
            "messages.0.content.0.source.type: 'file' is not supported",
        ),
        (
            _req(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]),
            "messages.0.content.0.source: base64 sources need string media_type and data",
        ),
        (_req(system=5), "system: must be a string or an array of text blocks"),
        (_req(system=[{"type": "image"}]), "system.0: must be a text block"),
        (_req(tools={}), "tools: must be an array"),
        (_req(tools=[{"name": "a"}]), "tools.0.input_schema: required"),
        (_req(tools=[{"input_schema": {}}]), "tools.0.name: required"),
        (_req(tool_choice={"type": "maybe"}), "tool_choice.type: must be 'auto', 'any', 'tool' or 'none'"),
        (_req(tool_choice={"type": "tool"}), "tool_choice.name: required"),
        (_req(thinking={"type": "enabled"}), "thinking.budget_tokens: required"),
        (_req(thinking={"type": "sometimes"}), "thinking.type: must be"),
        (_req(temperature="hot"), "temperature: must be a number"),
        (_req(stop_sequences="END"), "stop_sequences: must be an array of strings"),
        (_req(metadata="u"), "metadata: must be an object"),
    ],
)
def test_malformed_request_is_refused_with_a_precise_message(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientRequestError) as info:
        translate(AnthropicToOpenAI(), request_, TARGET)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.status == 400


def test_non_object_body_is_refused() -> None:
    with pytest.raises(ClientRequestError):
        translate(AnthropicToOpenAI(), [], TARGET)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("thinking", "output_config", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 4000}, None, "low"),  # Claude Code "think"
        ({"type": "enabled", "budget_tokens": 10000}, None, "medium"),  # "think hard"
        ({"type": "enabled", "budget_tokens": 31999}, None, "high"),  # "ultrathink"
        ({"type": "enabled", "budget_tokens": 31999}, {"effort": "low"}, "low"),  # explicit effort wins
        ({"type": "adaptive"}, None, "medium"),
        ({"type": "adaptive"}, {"effort": "max"}, "high"),
        (None, {"effort": "medium"}, "medium"),
        ({"type": "disabled"}, {"effort": "high"}, None),
        (None, None, None),
        (None, {"effort": "unheard-of"}, None),
    ],
)
def test_thinking_maps_to_reasoning_effort(thinking: Any, output_config: Any, effort: str | None) -> None:
    fields = {k: v for k, v in (("thinking", thinking), ("output_config", output_config)) if v is not None}
    assert _body(_req(**fields)).get("reasoning_effort") == effort


def test_thinking_is_dropped_for_a_target_without_the_capability() -> None:
    body = _body(_req(thinking={"type": "adaptive"}), Target(model="m"))
    assert "reasoning_effort" not in body


def test_short_user_id_is_kept_and_long_one_hashed_to_64_chars() -> None:
    assert _body(_req(metadata={"user_id": "u-1"}))["user"] == "u-1"
    long_id = orjson.dumps({"session_id": "x" * 80}).decode()
    user = _body(_req(metadata={"user_id": long_id}))["user"]
    assert len(user) == 64 and user == _body(_req(metadata={"user_id": long_id}))["user"]


def test_max_tokens_is_clamped_and_named_per_capability() -> None:
    assert _body(_req(max_tokens=128000), Target(model="m", max_output_tokens=16384))["max_completion_tokens"] == 16384
    body = _body(_req(max_tokens=50), Target(model="m", capabilities=frozenset({"max_tokens"})))
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body


TOOL = {"name": "t", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "t"}, {"type": "function", "function": {"name": "t"}}),
    ],
)
def test_tool_choice_maps_to_openai(choice: dict[str, Any], expected: Any) -> None:
    assert _body(_req(tools=[TOOL], tool_choice=choice))["tool_choice"] == expected


def test_disable_parallel_tool_use_sets_parallel_tool_calls_false() -> None:
    body = _body(_req(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert body["parallel_tool_calls"] is False


def test_tool_choice_without_tools_and_server_tools_are_dropped() -> None:
    body = _body(_req(tool_choice={"type": "any"}))
    assert "tool_choice" not in body and "tools" not in body
    server = {"type": "web_search_20250305", "name": "web_search"}
    body = _body(_req(tools=[TOOL, server], tool_choice={"type": "tool", "name": "web_search"}))
    assert [t["function"]["name"] for t in body["tools"]] == ["t"]
    assert "tool_choice" not in body


def test_user_text_before_tool_results_moves_after_the_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "t", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "note"}, {"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    out = _body(_req(messages=messages))["messages"]
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "user"]
    assert out[2] == {"role": "tool", "tool_call_id": "t1", "content": ""}
    assert out[3]["content"] == "note"


def test_assistant_turn_holding_only_thinking_is_omitted() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
        {"role": "user", "content": "b"},
    ]
    assert [m["content"] for m in _body(_req(messages=messages))["messages"]] == ["a", "b"]


def test_document_url_and_content_sources_become_text() -> None:
    content = [
        {"type": "document", "title": "T", "source": {"type": "url", "url": "https://x/y.pdf"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
    ]
    parts = _body(_req(messages=[{"role": "user", "content": content}]))["messages"][0]["content"]
    assert parts == [{"type": "text", "text": "Document T: https://x/y.pdf"}, {"type": "text", "text": "inner"}]


def test_request_does_not_mutate_the_parsed_body_and_can_run_twice() -> None:
    request = _req(system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}], tools=[TOOL])
    snapshot = orjson.dumps(request)
    first = translate(AnthropicToOpenAI(), request, TARGET)
    second = translate(AnthropicToOpenAI(), request, TARGET)
    assert orjson.dumps(request) == snapshot and first == second


def test_stream_request_asks_for_usage() -> None:
    body = _body(_req(), STREAM)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


# --- responses -------------------------------------------------------------------------------


def test_response_error_keeps_the_upstream_message_and_status() -> None:
    t = AnthropicToOpenAI()
    answer = t.response_error(503, b"<html>upstream connect error</html>")
    assert answer.status == 503
    assert orjson.loads(answer.body) == {
        "type": "error",
        "error": {"type": "api_error", "message": "<html>upstream connect error</html>"},
    }
    assert orjson.loads(t.response_error(401, b"").body)["error"] == {
        "type": "authentication_error",
        "message": "upstream returned HTTP 401",
    }


def test_response_headers_name_the_client_content_type() -> None:
    t = AnthropicToOpenAI()
    translate(t, _req(), STREAM)
    assert dict(t.response_headers(200, {"content-type": "text/event-stream"}))["content-type"] == "text/event-stream"
    assert t.response_headers(400, {}) == (("content-type", "application/json"),)
    t = AnthropicToOpenAI()
    translate(t, _req(), TARGET)
    assert t.response_headers(200, {"content-type": "application/json"}) == (("content-type", "application/json"),)


def _completion(message: dict[str, Any], finish: Any = "stop", **extra: Any) -> bytes:
    body = {"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    return orjson.dumps({**body, **extra})


def test_buffered_body_split_in_pieces_is_translated_at_the_end() -> None:
    t = AnthropicToOpenAI()
    translate(t, _req(), TARGET)
    raw = _completion({"role": "assistant", "content": "hey"})
    assert t.response_body(raw[:7], False).body == b""
    chunk = t.response_body(raw[7:], True)
    assert orjson.loads(chunk.body)["content"] == [{"type": "text", "text": "hey"}]
    assert chunk.usage == Usage()


@pytest.mark.parametrize(
    ("finish", "has_tool", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        ("stop", True, "tool_use"),  # servers that say "stop" after tool calls
        (None, False, "end_turn"),
        ("weird", False, "end_turn"),
    ],
)
def test_finish_reason_maps_to_stop_reason(finish: Any, has_tool: bool, stop_reason: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if has_tool:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    t = AnthropicToOpenAI()
    translate(t, _req(), TARGET)
    assert orjson.loads(t.response_body(_completion(message, finish), True).body)["stop_reason"] == stop_reason


def test_legacy_function_call_and_empty_arguments() -> None:
    t = AnthropicToOpenAI()
    translate(t, _req(), TARGET)
    message = {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}}
    out = orjson.loads(t.response_body(_completion(message, "function_call"), True).body)
    assert out["content"] == [{"type": "tool_use", "id": "call_0", "name": "f", "input": {}}]


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"choices": []}', b'{"error": {"message": "quota"}}'])
def test_broken_completion_is_an_upstream_protocol_error(raw: bytes) -> None:
    t = AnthropicToOpenAI()
    translate(t, _req(), TARGET)
    with pytest.raises(UpstreamProtocolError):
        t.response_body(raw, True)


def _stream(*frames: bytes | dict[str, Any]) -> tuple[bytes, Usage | None]:
    t = AnthropicToOpenAI()
    translate(t, _req(), STREAM)
    t.response_headers(200, {"content-type": "text/event-stream"})
    raw = b"".join(f if isinstance(f, bytes) else b"data: " + orjson.dumps(f) + b"\n\n" for f in frames)
    chunk = t.response_body(raw, True)
    return chunk.body, chunk.usage


def _chunk(delta: dict[str, Any] | None = None, finish: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9",
        "model": "m",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **extra,
    }


def test_malformed_stream_chunk_becomes_an_error_event() -> None:
    body, _ = _stream(_chunk({"content": "a"}), b"data: {nope\n\n", _chunk({"content": "b"}))
    check_anthropic_stream(body)  # ends with the error event, no message_stop
    assert b"invalid stream chunk" in body and b'"b"' not in body


def test_stream_without_any_chunk_is_an_error_event() -> None:
    body, usage = _stream(b": keep-alive\n\n")
    assert body.startswith(b"event: error\n") and usage is None
    check_anthropic_stream(body)


def test_interleaved_tool_fragments_are_never_dropped() -> None:
    call = lambda i, **f: _chunk({"tool_calls": [{"index": i, **f}]})  # noqa: E731
    body, _ = _stream(
        call(0, id="a", function={"name": "f", "arguments": '{"x":'}),
        call(1, id="b", function={"name": "g", "arguments": "{}"}),
        call(0, function={"arguments": "1}"}),
        _chunk(finish="tool_calls"),
        b"data: [DONE]\n\n",
    )
    payloads = [p for _, p in sse_events(body)]
    starts = {p["content_block"]["id"]: p["index"] for p in payloads if p["type"] == "content_block_start"}
    fragments = [(p["index"], p["delta"]["partial_json"]) for p in payloads if p["type"] == "content_block_delta"]
    # The late fragment goes to call "a"'s block (clients accumulate by index), not to "b".
    assert fragments == [(starts["a"], '{"x":'), (starts["b"], "{}"), (starts["a"], "1}")]
    assert payloads[-1]["type"] == "message_stop"


def test_tool_call_without_index_and_with_object_arguments() -> None:
    body, _ = _stream(
        _chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]}),
        _chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"function": {"arguments": '{"b":2}'}}]}),
        _chunk(finish="stop"),
    )
    message = accumulate_anthropic(check_anthropic_stream(body))
    assert [(b["id"], b["partial_json"]) for b in message["content"]] == [("c1", '{"a":1}'), ("c2", '{"b":2}')]
    assert message["stop_reason"] == "tool_use"


def test_usage_on_the_finish_chunk_is_used_and_reported_once() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
    body, reported = _stream(_chunk({"content": "x"}), _chunk(finish="length", usage=usage), b"data: [DONE]\n\n")
    message = accumulate_anthropic(check_anthropic_stream(body))
    assert message["stop_reason"] == "max_tokens"
    assert reported == Usage(input_tokens=6, output_tokens=2, cache_read_input_tokens=4)


def test_streamed_refusal_is_text_with_refusal_stop_reason() -> None:
    body, _ = _stream(_chunk({"refusal": "No."}), _chunk(finish="stop"))
    message = accumulate_anthropic(check_anthropic_stream(body))
    assert message["content"] == [{"type": "text", "text": "No."}] and message["stop_reason"] == "refusal"


def test_data_after_done_is_ignored() -> None:
    body, _ = _stream(_chunk({"content": "x"}), b"data: [DONE]\n\n", _chunk({"content": "late"}))
    assert b"late" not in body
    check_anthropic_stream(body)


def test_json_answer_to_a_stream_request_that_is_an_error_becomes_an_error_event() -> None:
    t = AnthropicToOpenAI()
    translate(t, _req(), STREAM)
    t.response_headers(200, {"content-type": "application/json"})
    body = t.response_body(b'{"error": {"message": "bad key"}}', True).body
    assert body.startswith(b"event: error\n") and b"bad key" in body
