"""The Converse codec (extproc.translate.bedrock_converse): an Anthropic client's request to Bedrock's
Converse API for a model that is not Anthropic's, and the answer back, JSON and stream. Streams are
ConverseStream's event-stream frames, replayed whole, byte by byte and at hypothesis-chosen split
points; they are checked to decode the same with botocore. AnthropicToBedrock hands every phase to
the codec for such a model, in a translated request and in a primed (fallback) answer alike."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anthropic.types
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.plan import response_context
from extproc.translate import registry
from extproc.translate.anthropic_bedrock import AnthropicToBedrock, uses_converse
from extproc.translate.aws_eventstream import encode_message
from extproc.translate.base import Api, ClientRequestError, Target, Translator, Usage
from extproc.translate.bedrock_converse import AnthropicToConverse
from extproc.translate.client_request import parse_request
from fake_provider.converse_api import ConverseApi, event_frame
from fake_provider.reply import plan_reply
from tests.unit.stream_checks import (
    accumulate_anthropic,
    accumulate_openai,
    check_anthropic_stream,
    check_openai_stream,
    split_at,
    sse_events,
)
from tests.unit.translating import translate

NOVA = "amazon.nova-pro-v1:0"
EVENTSTREAM = "application/vnd.amazon.eventstream"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"name": "get_weather", "description": "The weather", "input_schema": SCHEMA}]
PNG = "iVBORw0KGgo="


def sent(body: dict[str, Any], target: Target | None = None) -> tuple[str, dict[str, Any]]:
    upstream = translate(AnthropicToBedrock(), body, target or Target(NOVA, stream=body.get("stream") is True))
    return upstream.path, orjson.loads(upstream.body)


def base(**fields: Any) -> dict[str, Any]:
    return {"model": "nova", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}


# --- which API a model takes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "converse"),
    [
        ("amazon.nova-pro-v1:0", True),
        ("us.amazon.nova-lite-v1:0", True),
        ("meta.llama3-70b-instruct-v1:0", True),
        ("mistral.mistral-large-2407-v1:0", True),
        ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0", True),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", False),
        ("anthropic.claude-v2", False),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-v1:0", False),
        ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3", False),  # no vendor: as before
        ("m", False),
    ],
)
def test_a_model_that_is_not_anthropics_takes_converse(model: str, converse: bool) -> None:
    assert uses_converse(model) is converse
    path, body = sent(base(), Target(model))
    assert path.endswith("/converse") is converse
    assert ("anthropic_version" not in body) is converse


def test_the_path_names_the_url_encoded_model_and_the_streaming_action() -> None:
    path, _ = sent(base(), Target("us.amazon.nova-lite-v1:0", base_path="/proxy"))
    assert path == "/proxy/model/us.amazon.nova-lite-v1%3A0/converse"
    path, _ = sent(base(stream=True))
    assert path == "/model/amazon.nova-pro-v1%3A0/converse-stream"


@pytest.mark.parametrize("client", [Api.OPENAI, Api.RESPONSES])
def test_openai_and_responses_clients_reach_converse_through_the_hub(client: Api) -> None:
    translator = registry.translator_for(client, Api.BEDROCK)
    assert translator is not None
    body = (
        {"model": "nova", "messages": [{"role": "user", "content": "hi"}]}
        if client is Api.OPENAI
        else {"model": "nova", "input": "hi"}
    )
    upstream = translate(translator, body, Target(NOVA))
    assert upstream.path.endswith("/converse")
    assert orjson.loads(upstream.body)["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]


# --- the request ----------------------------------------------------------------------------------------


def test_system_sampling_and_stop_sequences_map_to_converse_fields() -> None:
    _, body = sent(
        base(
            system=[{"type": "text", "text": "be brief"}, {"type": "text", "text": "x-anthropic-billing-header: cc"}],
            max_tokens=5000,
            temperature=0.2,
            top_p=0.9,
            top_k=5,
            stop_sequences=["STOP", ""],
            metadata={"user_id": "u1"},
        ),
        Target(NOVA, max_output_tokens=1000),
    )
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 1000, "temperature": 0.2, "topP": 0.9, "stopSequences": ["STOP"]},
    }


def test_turns_merge_so_roles_alternate_and_thinking_is_dropped() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": ""}]},
        {"role": "system", "content": "<env>cwd</env>"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "answer"},
            ],
        },
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
        {"role": "user", "content": "third"},
    ]
    _, body = sent(base(messages=messages))
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "first"}, {"text": "second"}, {"text": "<env>cwd</env>"}]},
        {"role": "assistant", "content": [{"text": "answer"}]},
        {"role": "user", "content": [{"text": "third"}]},
    ]


def test_tools_tool_calls_and_tool_results_map_to_tool_config_tool_use_and_tool_result() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "tooluse_1",
                    "content": [
                        {"type": "text", "text": "sunny"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    ],
                },
                {"type": "tool_result", "tool_use_id": "tooluse_1", "content": "", "is_error": True},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]
    tools = [*TOOLS, {"type": "web_search_20250305", "name": "web_search"}]
    _, body = sent(base(messages=messages, tools=tools, tool_choice={"type": "tool", "name": "get_weather"}))
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "description": "The weather", "inputSchema": {"json": SCHEMA}}}],
        "toolChoice": {"tool": {"name": "get_weather"}},
    }
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}],
    }
    assert body["messages"][2]["content"] == [
        {
            "toolResult": {
                "toolUseId": "tooluse_1",
                "content": [{"text": "sunny"}, {"image": {"format": "png", "source": {"bytes": PNG}}}],
            }
        },
        {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "(no output)"}], "status": "error"}},
        {"text": "and now?"},
    ]


@pytest.mark.parametrize(("choice", "expected"), [("auto", {"auto": {}}), ("any", {"any": {}})])
def test_tool_choice_auto_and_any(choice: str, expected: dict[str, Any]) -> None:
    _, body = sent(base(tools=TOOLS, tool_choice={"type": choice}))
    assert body["toolConfig"]["toolChoice"] == expected


def test_tool_choice_none_offers_no_tools_but_keeps_the_historys_for_converse() -> None:
    _, body = sent(base(tools=TOOLS, tool_choice={"type": "none"}))
    assert "toolConfig" not in body
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
    ]
    _, body = sent(base(messages=history, tool_choice={"type": "none"}, tools=TOOLS))
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]
    }


def test_images_and_documents_become_converse_blocks() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "s3://bucket/cat.webp"}},
        {
            "type": "document",
            "title": "Q3: report!",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
        {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain", "data": "n"}},
    ]
    _, body = sent(base(messages=[{"role": "user", "content": content}]))
    assert body["messages"][0]["content"] == [
        {"text": "look"},
        {"image": {"format": "jpeg", "source": {"bytes": PNG}}},
        {"image": {"format": "webp", "source": {"s3Location": {"uri": "s3://bucket/cat.webp"}}}},
        {"document": {"format": "pdf", "name": "Q3 report 1", "source": {"bytes": "JVBE"}}},
        {"text": "notes\n\nn"},
    ]


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ({"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}, "cannot fetch URLs"),
        ({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}}, "image/bmp"),
        ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "file_id"),
        ({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}, "cannot fetch URLs"),
    ],
    ids=["image-url", "image-type", "file-id", "document-url"],
)
def test_what_converse_cannot_take_is_a_400_that_says_why(block: dict[str, Any], said: str) -> None:
    with pytest.raises(ClientRequestError) as caught:
        sent(base(messages=[{"role": "user", "content": [block]}]))
    assert caught.value.status == 400 and said in caught.value.message
    assert caught.value.message.startswith("messages.0.content.0.source")


def test_the_answer_schema_is_converses_structured_output() -> None:
    _, body = sent(base(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}))
    structure = body["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert orjson.loads(structure["schema"]) == SCHEMA and structure["name"] == "answer"


def test_the_request_body_is_not_mutated_and_botocore_would_send_the_same() -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    body = base(tools=TOOLS, system="sys", messages=[{"role": "user", "content": "weather?"}])
    snapshot = orjson.dumps(body)
    _, converse = sent(body)
    assert orjson.dumps(body) == snapshot
    shape = botocore.session.get_session().get_service_model("bedrock-runtime").operation_model("Converse").input_shape
    report = ParamValidator().validate({**converse, "modelId": NOVA}, shape)
    assert not report.has_errors(), report.generate_report()


# --- the JSON answer ------------------------------------------------------------------------------------


ANSWER = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"reasoningContent": {"reasoningText": {"text": "thinking...", "signature": "s"}}},
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Paris"}}},
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 142, "cacheReadInputTokens": 100},
    "metrics": {"latencyMs": 5},
}


def answer_of(translator: Translator, raw: bytes, stream: bool = False, content_type: str = "application/json") -> Any:
    translator.response_headers(200, {"content-type": content_type, "x-amzn-requestid": "req-1"})
    return translator.response_body(raw, True)


def test_a_json_answer_becomes_an_anthropic_message_with_the_providers_usage() -> None:
    translator = AnthropicToBedrock()
    translate(translator, base(tools=TOOLS), Target(NOVA))
    out = answer_of(translator, orjson.dumps(ANSWER))
    message = anthropic.types.Message.model_validate_json(out.body)
    assert message.id == "msg_bdrk_req-1" and message.model == NOVA and message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.content[0].signature == ""  # type: ignore[union-attr]  # a Converse signature is no Anthropic one
    assert out.usage == Usage(input_tokens=30, output_tokens=12, cache_read_input_tokens=100)
    assert message.usage.cache_read_input_tokens == 100


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("guardrail_intervened", "refusal"),
        ("content_filtered", "refusal"),
        ("max_tokens", "max_tokens"),
        ("odd", "end_turn"),
    ],
)
def test_stop_reasons(reason: str, expected: str) -> None:
    translator = AnthropicToConverse()
    translate(translator, base(), Target(NOVA))
    out = answer_of(translator, orjson.dumps({**ANSWER, "stopReason": reason}))
    assert orjson.loads(out.body)["stop_reason"] == expected


def test_omitted_thinking_is_not_sent_on() -> None:
    translator = AnthropicToBedrock()
    translate(translator, base(thinking={"type": "enabled", "budget_tokens": 2000, "display": "omitted"}), Target(NOVA))
    content = orjson.loads(answer_of(translator, orjson.dumps(ANSWER)).body)["content"]
    assert [block["type"] for block in content] == ["text", "tool_use"]


def test_a_json_answer_without_a_message_is_the_providers_fault() -> None:
    from extproc.translate.base import UpstreamProtocolError

    translator = AnthropicToBedrock()
    translate(translator, base(), Target(NOVA))
    with pytest.raises(UpstreamProtocolError):
        answer_of(translator, b'{"output": {}}')


def test_a_json_answer_to_a_stream_request_is_replayed_as_the_stream() -> None:
    translator = AnthropicToBedrock()
    translate(translator, base(stream=True), Target(NOVA, stream=True))
    out = answer_of(translator, orjson.dumps(ANSWER), content_type="application/json")
    message = accumulate_anthropic(check_anthropic_stream(out.body))
    assert message["content"][1]["text"] == "Let me check." and message["stop_reason"] == "tool_use"
    assert out.usage is not None and out.usage.output_tokens == 12


@pytest.mark.parametrize(
    ("status", "body", "expected", "kind"),
    [
        (429, {"message": "Too many requests"}, 429, "rate_limit_error"),
        (400, {"message": "The model returned the following errors: bad"}, 400, "invalid_request_error"),
        (403, {"message": "The security token included in the request is expired"}, 502, "api_error"),
        (424, {"message": "model error"}, 502, "api_error"),
    ],
)
def test_errors_are_bedrocks_as_for_invoke_model(status: int, body: dict[str, Any], expected: int, kind: str) -> None:
    translator = AnthropicToBedrock()
    translate(translator, base(), Target(NOVA))
    answer = translator.response_error(status, orjson.dumps(body))
    assert answer.status == expected and orjson.loads(answer.body)["error"]["type"] == kind
    anthropic.types.ErrorResponse.model_validate_json(answer.body)


# --- streams --------------------------------------------------------------------------------------------


def frames(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(event_frame(name, payload, n) for n, (name, payload) in enumerate(events))


STREAM = frames(
    ("messageStart", {"role": "assistant"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Héllo, "}}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "wörld"}}),
    ("contentBlockStop", {"contentBlockIndex": 1}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"text": "second text block"}}),
    ("contentBlockStop", {"contentBlockIndex": 2}),
    (
        "contentBlockStart",
        {"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "tooluse_x", "name": "get_weather"}}},
    ),
    ("contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {"input": '{"city": '}}}),
    ("contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {"input": '"Paris"}'}}}),
    ("contentBlockStop", {"contentBlockIndex": 3}),
    ("messageStop", {"stopReason": "tool_use"}),
    (
        "metadata",
        {
            "usage": {"inputTokens": 40, "outputTokens": 9, "totalTokens": 49, "cacheWriteInputTokens": 3},
            "metrics": {"latencyMs": 7},
        },
    ),
)


def replay(pieces: list[bytes], translator: Translator | None = None) -> tuple[bytes, list[Usage]]:
    translator = translator or AnthropicToBedrock()
    translate(translator, base(stream=True, tools=TOOLS), Target(NOVA, stream=True))
    translator.response_headers(200, {"content-type": EVENTSTREAM, "x-amzn-requestid": "r1"})
    body, usages = b"", []
    for n, piece in enumerate(pieces):
        chunk = translator.response_body(piece, n == len(pieces) - 1)
        body += chunk.body
        if chunk.usage is not None:
            usages.append(chunk.usage)
    return body, usages


def test_the_stream_fixture_decodes_the_same_with_botocore() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(STREAM)
    assert [m.headers[":event-type"] for m in buffer][:2] == ["messageStart", "contentBlockDelta"]


def test_a_stream_becomes_anthropic_events_with_the_usage_once_at_the_end() -> None:
    body, [usage] = replay([STREAM])
    events = check_anthropic_stream(body)
    message = accumulate_anthropic(events)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "text", "tool_use"]
    assert message["content"][1]["text"] == "Héllo, wörld"
    assert orjson.loads(message["content"][3]["partial_json"]) == {"city": "Paris"}
    assert message["id"] == "msg_bdrk_r1" and message["model"] == NOVA
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 40 and message["usage"]["output_tokens"] == 9
    assert usage == Usage(input_tokens=40, output_tokens=9, cache_creation_input_tokens=3)
    assert events[0]["message"]["usage"]["input_tokens"] > 0  # the estimate, until Converse reports its own


def test_stream_fed_one_byte_at_a_time_translates_identically() -> None:
    whole = replay([STREAM])
    assert replay([STREAM[i : i + 1] for i in range(len(STREAM))]) == whole
    assert replay([STREAM, b""]) == whole
    assert replay([b"", STREAM]) == whole


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_stream_split_at_random_points_translates_identically(points: list[int]) -> None:
    assert replay(split_at(STREAM, points)) == replay([STREAM])


def test_an_openai_client_gets_the_same_stream_as_chat_chunks() -> None:
    translator = registry.translator_for(Api.OPENAI, Api.BEDROCK)
    assert translator is not None
    body = {
        "model": "nova",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    translate(translator, body, Target(NOVA, stream=True))
    translator.response_headers(200, {"content-type": EVENTSTREAM})
    out = translator.response_body(STREAM, True)
    completion = accumulate_openai(check_openai_stream(out.body, include_usage=True))
    assert completion["content"] == "Héllo, wörld\n\nsecond text block" and completion["finish_reason"] == "tool_calls"
    assert completion["tools"][0]["name"] == "get_weather"
    assert orjson.loads(completion["tools"][0]["arguments"]) == {"city": "Paris"}
    assert completion["usage"]["prompt_tokens"] == 43 and completion["usage"]["completion_tokens"] == 9
    assert out.usage is not None and out.usage.input_tokens == 40


@pytest.mark.parametrize(
    ("data", "status", "said"),
    [
        (STREAM[:-5], 502, "truncated"),
        (
            frames(
                ("messageStart", {"role": "assistant"}),
                ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
            ),
            502,
            "before the message completed",
        ),
        (
            encode_message({":event-type": "messageStart", ":message-type": "event"}, b"not json"),
            502,
            "invalid messageStart",
        ),
        (
            frames(("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{}"}}})),
            502,
            "never started",
        ),
        (
            frames(("messageStart", {"role": "assistant"}))
            + encode_message(
                {
                    ":exception-type": "throttlingException",
                    ":content-type": "application/json",
                    ":message-type": "exception",
                },
                b'{"message": "Too many tokens"}',
            ),
            529,
            "Too many tokens",
        ),
    ],
    ids=["cut-frame", "no-message-stop", "payload-not-json", "tool-input-without-start", "exception-frame"],
)
def test_a_broken_or_failed_stream_ends_with_one_error_event(data: bytes, status: int, said: str) -> None:
    body, usages = replay([data])
    events = check_anthropic_stream(body)
    error = events[-1]
    assert error["type"] == "error" and said in error["error"]["message"]
    assert error["error"]["type"] == ("overloaded_error" if status == 529 else "api_error")
    assert usages == []  # Converse never said


def test_a_corrupt_crc_ends_the_stream_with_an_error_event() -> None:
    data = bytearray(STREAM)
    data[-1] ^= 0xFF
    events = check_anthropic_stream(replay([bytes(data)])[0])
    assert events[-1]["type"] == "error" and "CRC" in events[-1]["error"]["message"]


def test_a_stream_ending_after_message_stop_without_metadata_still_closes() -> None:
    data = frames(
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
        ("messageStop", {"stopReason": "end_turn"}),
    )
    body, usages = replay([data])
    assert accumulate_anthropic(check_anthropic_stream(body))["stop_reason"] == "end_turn"
    assert usages == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_primed_translator_answers_like_one_that_translated_the_request(stream: bool) -> None:
    body = base(stream=stream, tools=TOOLS)
    target = Target(NOVA, stream=stream)
    raw = STREAM if stream else orjson.dumps(ANSWER)
    content_type = EVENTSTREAM if stream else "application/json"
    translated = AnthropicToBedrock()
    translate(translated, body, target)
    primed = AnthropicToBedrock()
    primed.prime(replace(response_context(parse_request(Api.ANTHROPIC, body), translated.estimate), model=NOVA))
    answers = []
    for translator in (translated, primed):
        out = answer_of(translator, raw, content_type=content_type)
        answers.append((sse_events(out.body) if stream else orjson.loads(out.body), out.usage))
    assert answers[0] == answers[1]


# --- round trips through the fake Converse provider -------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_call", [False, True])
def test_fake_converse_round_trip(stream: bool, tool_call: bool) -> None:
    body = base(stream=stream, tools=TOOLS, messages=[{"role": "user", "content": "hello there"}])
    translator = AnthropicToBedrock()
    upstream = translate(translator, body, Target(NOVA, stream=stream))
    api = ConverseApi()
    converse = orjson.loads(upstream.body)
    reply = plan_reply(
        api.name, api.parse(converse, len(upstream.body), NOVA), force_tool_call=tool_call, cached_tokens=0
    )
    translator.response_headers(200, {"content-type": EVENTSTREAM if stream else "application/json"})
    if stream:
        out = translator.response_body(b"".join(api.render_stream(reply, converse, 3)), True)
        message = accumulate_anthropic(check_anthropic_stream(out.body))
    else:
        out = translator.response_body(api.render_json(reply, converse), True)
        message = anthropic.types.Message.model_validate_json(out.body).model_dump()
    assert message["stop_reason"] == ("tool_use" if tool_call else "end_turn")
    if tool_call:
        block = message["content"][-1]
        arguments = orjson.loads(block["partial_json"]) if stream else block["input"]
        assert block["name"] == "get_weather" and arguments == {"city": "Paris"}
    else:
        assert message["content"][0]["text"] == f"Hello from fake-converse model {NOVA}: hello there"
    assert out.usage is not None and out.usage.output_tokens == reply.output_tokens
    assert out.usage.input_tokens == reply.input_tokens


def test_without_bedrocks_request_id_each_answer_gets_an_id_of_its_own() -> None:
    ids = set()
    for _ in range(2):
        translator = AnthropicToBedrock()
        translate(translator, base(), Target(NOVA))
        translator.response_headers(200, {"content-type": "application/json"})
        ids.add(orjson.loads(translator.response_body(orjson.dumps(ANSWER), True).body)["id"])
    assert len(ids) == 2 and all(i.startswith("msg_bdrk_") for i in ids)
