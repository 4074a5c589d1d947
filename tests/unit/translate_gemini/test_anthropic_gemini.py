"""AnthropicToGemini behaviour the golden cases do not pin down: precise request errors, edge cases
of the stream state machine, error bodies, headers."""

from __future__ import annotations

import orjson
import pytest

from extproc.translate.anthropic_gemini import AnthropicToGemini, AnthropicToGeminiCountTokens
from extproc.translate.base import Api, ClientRequestError, UpstreamProtocolError
from extproc.translate.client_request import parse_request
from extproc.translate.registry import count_tokens_translator, translator_for
from tests.unit.golden_cases import make_target
from tests.unit.stream_checks import check_anthropic_stream, sse_events
from tests.unit.translating import translate

USER = {"role": "user", "content": "hi"}


def _request(body: dict, **target) -> dict:
    body = {"max_tokens": 10, **body}
    upstream = translate(AnthropicToGemini(), body, make_target(body, target))
    return orjson.loads(upstream.body)


def _stream(raw: bytes, body: dict | None = None) -> bytes:
    body = body or {"model": "c", "max_tokens": 10, "stream": True, "messages": [USER]}
    translator = AnthropicToGemini()
    translate(translator, body, make_target(body))
    return translator.response_body(raw, False).body + translator.response_body(b"", True).body


def _sse(*payloads: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads)


def test_the_registry_builds_this_translator() -> None:
    translator = translator_for(Api.ANTHROPIC, Api.GEMINI)
    assert isinstance(translator, AnthropicToGemini)
    assert translator.rewrites_response is True
    assert (translator.client_api, translator.provider_api) == (Api.ANTHROPIC, Api.GEMINI)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages: required, must be a non-empty array"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role: must be 'user', 'assistant' or 'system', got 'tool'",
        ),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
                    {"role": "user", "content": [{"type": "foo"}]},
                ]
            },
            "messages.2.content.0: unknown block type 'foo'",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages.0.content: must be a string or an array of content blocks",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages.0.content.0.text: required, must be a string",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "x"}]}]},
            "messages.0.content.0.tool_use_id: 't9' answers no earlier tool_use block",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "messages.0.content.0.source: file_id sources cannot be sent to a Gemini model",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
            "messages.0.content.0: tool_use blocks belong in assistant messages",
        ),
        (
            {"messages": [USER], "tools": [{"name": "a", "input_schema": {}}], "tool_choice": {"type": "some"}},
            "tool_choice.type: must be 'auto', 'any', 'tool' or 'none', got 'some'",
        ),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens: required, must be a positive integer"),
        ({"messages": [USER], "temperature": "hot"}, "temperature: must be a number"),
        (
            {"messages": [USER], "thinking": {"type": "enabled"}},
            "thinking.budget_tokens: required, must be a non-negative integer",
        ),
        ({"messages": [USER], "system": [{"type": "image"}]}, "system.0: must be a text block"),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}]}]},
            "messages: no message has any content Gemini can take",
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_precise_message(body: dict, message: str) -> None:
    with pytest.raises(ClientRequestError) as info:
        translate(AnthropicToGemini(), {"model": "c", "max_tokens": 10, **body}, make_target(body))
    assert info.value.message == message
    assert info.value.status == 400


def test_streaming_requests_go_to_stream_generate_content_with_alt_sse() -> None:
    body = {"model": "c", "max_tokens": 5, "stream": True, "messages": [USER]}
    upstream = translate(
        AnthropicToGemini(), body, make_target(body, {"base_path": "/v1", "model": "gemini-3-pro-preview"})
    )
    assert upstream.path == "/v1/models/gemini-3-pro-preview:streamGenerateContent?alt=sse"


def test_tool_choice_is_dropped_without_tools() -> None:
    assert "toolConfig" not in _request({"messages": [USER], "tool_choice": {"type": "any"}})


def test_thinking_budget_that_no_longer_fits_a_clamped_limit_is_halved() -> None:
    body = {"messages": [USER], "max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 31999}}
    assert _request(body, max_output_tokens=8192)["generationConfig"] == {
        "maxOutputTokens": 8192,
        "thinkingConfig": {"thinkingBudget": 4096, "includeThoughts": True},
    }


def test_only_five_stop_sequences_reach_gemini() -> None:
    body = {"messages": [USER], "stop_sequences": [str(i) for i in range(8)]}
    assert _request(body)["generationConfig"]["stopSequences"] == ["0", "1", "2", "3", "4"]


def test_tool_result_images_follow_the_function_response() -> None:
    body = {
        "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [
                            {"type": "text", "text": "see"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
                        ],
                    }
                ],
            },
        ]
    }
    assert _request(body)["contents"][1]["parts"] == [
        {"functionResponse": {"id": "t", "name": "shot", "response": {"content": "see"}}},
        {"inlineData": {"mimeType": "image/png", "data": "AA"}},
    ]


def test_message_start_falls_back_to_the_request_size_estimate() -> None:
    body = {"model": "c", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x" * 400}]}
    out = _stream(_sse({"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}]}), body)
    start = sse_events(out)[0][1]
    assert start["message"]["usage"]["input_tokens"] >= 100


def test_stream_ending_without_finish_reason_is_closed_cleanly() -> None:
    out = _stream(_sse({"candidates": [{"content": {"parts": [{"text": "cut"}]}}]}))
    events = check_anthropic_stream(out)
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_empty_upstream_stream_becomes_an_error_event() -> None:
    out = _stream(b"")
    assert [name for name, _ in sse_events(out)] == ["error"]
    assert sse_events(out)[0][1]["error"]["type"] == "api_error"


def test_a_chunk_that_is_not_json_ends_the_stream_with_an_error() -> None:
    out = _stream(_sse({"candidates": [{"content": {"parts": [{"text": "a"}]}}]}) + b"data: {oops\n\n")
    events = check_anthropic_stream(out)
    assert events[-1]["type"] == "error"


def test_chunks_after_the_finish_are_ignored() -> None:
    raw = _sse(
        {"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}]},
        {"candidates": [{"content": {"parts": [{"text": "late"}]}}]},
    )
    assert b"late" not in _stream(raw)


def test_final_usage_is_reported_with_the_chunk_that_ends_the_message() -> None:
    translator = AnthropicToGemini()
    body = {"model": "c", "max_tokens": 10, "stream": True, "messages": [USER]}
    translate(translator, body, make_target(body))
    first = translator.response_body(_sse({"candidates": [{"content": {"parts": [{"text": "a"}]}}]}), False)
    assert first.usage is None
    meta = {"promptTokenCount": 10, "cachedContentTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3}
    last = translator.response_body(_sse({"candidates": [{"finishReason": "STOP"}], "usageMetadata": meta}), True)
    assert (last.usage.input_tokens, last.usage.cache_read_input_tokens, last.usage.output_tokens) == (6, 4, 5)


def test_non_stream_body_may_arrive_in_pieces() -> None:
    translator = AnthropicToGemini()
    body = {"model": "c", "max_tokens": 10, "messages": [USER]}
    translate(translator, body, make_target(body))
    raw = orjson.dumps({"candidates": [{"content": {"parts": [{"text": "hello"}]}, "finishReason": "STOP"}]})
    assert translator.response_body(raw[:7], False).body == b""
    message = orjson.loads(translator.response_body(raw[7:], True).body)
    assert message["content"] == [{"type": "text", "text": "hello"}]


def test_non_stream_invalid_json_is_an_upstream_protocol_error() -> None:
    translator = AnthropicToGemini()
    body = {"model": "c", "max_tokens": 10, "messages": [USER]}
    translate(translator, body, make_target(body))
    with pytest.raises(UpstreamProtocolError):
        translator.response_body(b"<html>", True)


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            400,
            b'{"error":{"code":400,"message":"Bad schema","status":"INVALID_ARGUMENT"}}',
            "invalid_request_error",
            "INVALID_ARGUMENT: Bad schema",
        ),
        (
            429,
            b'[{"error":{"code":429,"message":"Quota","status":"RESOURCE_EXHAUSTED"}}]',
            "rate_limit_error",
            "RESOURCE_EXHAUSTED: Quota",
        ),
        (503, b"upstream connect error", "api_error", "upstream connect error"),
    ],
)
def test_gemini_errors_become_anthropic_errors_with_the_same_status(
    status: int, body: bytes, kind: str, message: str
) -> None:
    result = AnthropicToGemini().response_error(status, body)
    assert result.status == status
    assert orjson.loads(result.body) == {"type": "error", "error": {"type": kind, "message": message}}


def test_response_content_type_follows_the_client_request() -> None:
    translator = AnthropicToGemini()
    body = {"model": "c", "max_tokens": 10, "stream": True, "messages": [USER]}
    translate(translator, body, make_target(body))
    assert translator.response_headers(200, {}) == (("content-type", "text/event-stream"),)
    assert translator.response_headers(500, {}) == (("content-type", "application/json"),)


# --- count_tokens forwarded to Gemini's countTokens ----------------------------------------------


def test_count_tokens_goes_to_count_tokens_as_a_whole_generate_content_request() -> None:
    body = {
        "model": "c",
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2;"},
            {"type": "text", "text": "Be brief."},
        ],
        "messages": [USER, {"role": "system", "content": "# Environment"}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
    }
    counter = count_tokens_translator(Api.GEMINI)
    assert isinstance(counter, AnthropicToGeminiCountTokens)
    upstream = counter.request(parse_request(Api.ANTHROPIC, body, counting=True), make_target(body))
    assert upstream.path == "/v1beta/models/gemini-2.5-pro:countTokens"
    wrapped = orjson.loads(upstream.body)
    assert list(wrapped) == ["generateContentRequest"]
    request = wrapped["generateContentRequest"]
    assert request["model"] == "models/gemini-2.5-pro"
    assert request["contents"] == [{"role": "user", "parts": [{"text": "hi"}, {"text": "# Environment"}]}]
    assert request["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert request["tools"][0]["functionDeclarations"][0]["name"] == "Bash"


def test_count_tokens_answers_the_providers_total_as_input_tokens() -> None:
    counter = AnthropicToGeminiCountTokens()
    assert counter.response_headers(200, {}) == (("content-type", "application/json"),)
    assert counter.response_body(b'{"totalTok', False).body == b""
    assert orjson.loads(counter.response_body(b'ens": 1234}', True).body) == {"input_tokens": 1234}
    with pytest.raises(UpstreamProtocolError):
        AnthropicToGeminiCountTokens().response_body(b'{"error": "no"}', True)
    error = AnthropicToGeminiCountTokens().response_error(
        429, b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}'
    )
    assert error.status == 429
    assert orjson.loads(error.body)["error"] == {"type": "rate_limit_error", "message": "RESOURCE_EXHAUSTED: quota"}


def test_anthropic_defined_tools_gemini_cannot_run_are_dropped_like_for_openai() -> None:
    body = {
        "model": "c",
        "max_tokens": 10,
        "messages": [USER],
        "tools": [
            {"type": "bash_20250124", "name": "bash"},
            {"name": "Read", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
        ],
        "tool_choice": {"type": "tool", "name": "bash"},
    }
    upstream = _request(body)
    assert [d["name"] for d in upstream["tools"][0]["functionDeclarations"]] == ["Read"]
    assert "toolConfig" not in upstream  # the choice named a tool that is not there
