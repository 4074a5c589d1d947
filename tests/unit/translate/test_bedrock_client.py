"""A Bedrock client's codec (extproc.translate.bedrock_client): Anthropic SSE re-framed as AWS
event-stream ``chunk`` events, errors in Bedrock's shape, the betas where each provider reads them.
Every stream is replayed whole, byte by byte and at hypothesis-chosen split points, and read back
both with our decoder and with the Anthropic SDK's Bedrock decoder (botocore's parser)."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.sse import encode_event
from extproc.translate.aws_eventstream import EventStreamDecoder, Message
from extproc.translate.base import Api, ResponseContext, Target
from extproc.translate.bedrock_client import BedrockClient, BedrockPassthrough
from extproc.translate.chained import Chained
from extproc.translate.client_request import BedrockCall, from_bedrock, parse_request
from extproc.translate.registry import translator_for
from tests.unit.stream_checks import split_at

USER = [{"role": "user", "content": "hi"}]
EVENTS = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                          "model": "m", "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello é 世界"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
    {"type": "message_stop"},
]  # fmt: skip
SSE = b"".join(encode_event(orjson.dumps(event), event["type"]) for event in EVENTS)
WITHOUT_PING = [event for event in EVENTS if event["type"] != "ping"]


def streaming_codec() -> BedrockClient:
    codec = BedrockClient()
    codec.prime(ResponseContext("m", stream=True))
    assert codec.response_headers(200, {"content-type": "text/event-stream"}) == (
        ("content-type", "application/vnd.amazon.eventstream"),
    )
    return codec


def reframed(pieces: list[bytes]) -> bytes:
    codec = streaming_codec()
    out = [codec.response_body(piece, False).body for piece in pieces]
    out.append(codec.response_body(b"", True).body)
    return b"".join(out)


def frames(data: bytes) -> list[Message]:
    decoder = EventStreamDecoder()
    return decoder.feed(data) + decoder.close()


def chunk_events(data: bytes) -> list[dict]:
    out = []
    for message in frames(data):
        assert message.message_type == "event" and message.event_type == "chunk", message
        assert message.headers[":content-type"] == "application/json"
        out.append(orjson.loads(base64.b64decode(orjson.loads(message.payload)["bytes"])))
    return out


def sdk_events(data: bytes) -> list[tuple[str, dict]]:
    """What the Anthropic SDK's Bedrock stream reads (botocore's event-stream parser underneath)."""
    from anthropic.lib.bedrock._stream_decoder import AWSEventStreamDecoder

    return [(sse.event, json.loads(sse.data)) for sse in AWSEventStreamDecoder().iter_bytes(iter([data]))]


def test_each_sse_event_becomes_one_chunk_frame_and_pings_are_dropped() -> None:
    data = reframed([SSE])
    assert chunk_events(data) == WITHOUT_PING
    assert sdk_events(data) == [(event["type"], event) for event in WITHOUT_PING]


def test_one_byte_at_a_time_gives_the_same_bytes() -> None:
    assert reframed([SSE[i : i + 1] for i in range(len(SSE))]) == reframed([SSE])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SSE)), max_size=8))
def test_any_split_of_the_sse_gives_the_same_bytes(points: list[int]) -> None:
    assert reframed(split_at(SSE, points)) == reframed([SSE])


def test_an_error_event_becomes_an_exception_frame_and_ends_the_stream() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    sse = SSE[: SSE.index(b"event: content_block_stop")] + encode_event(orjson.dumps(error), "error")
    data = reframed([sse, encode_event(b'{"type":"message_stop"}', "message_stop")])  # nothing after it
    last = frames(data)[-1]
    assert last.message_type == "exception" and last.event_type == "throttlingException"
    assert orjson.loads(last.payload) == {"message": "busy"}
    event, payload = sdk_events(data)[-1]
    assert event == "error" and payload["error"] == {"type": "throttlingException", "message": "busy"}


def test_a_stream_cut_short_ends_with_an_exception() -> None:
    data = reframed([SSE[: SSE.index(b"event: message_delta")]])
    last = frames(data)[-1]
    assert last.message_type == "exception" and last.event_type == "internalServerException"


def test_a_json_answer_to_a_stream_request_is_replayed_as_chunks() -> None:
    codec = BedrockClient()
    codec.prime(ResponseContext("m", stream=True))
    codec.response_headers(200, {"content-type": "application/json"})
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
               "content": [{"type": "text", "text": "Hi"}], "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
    raw = orjson.dumps(message)
    assert codec.response_body(raw[:10], False).body == b""
    kinds = [event["type"] for event in chunk_events(codec.response_body(raw[10:], True).body)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


def test_a_json_answer_goes_back_as_it_is() -> None:
    codec = BedrockClient()
    codec.prime(ResponseContext("m", stream=False))
    assert codec.response_headers(200, {"content-type": "application/json"}) == (("content-type", "application/json"),)
    assert codec.response_body(b'{"id":"msg"}', True).body == b'{"id":"msg"}'


def test_errors_take_bedrocks_shape() -> None:
    error = BedrockClient().response_error(
        429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}'
    )
    assert (error.status, orjson.loads(error.body)) == (429, {"message": "slow"})


# --- the request side --------------------------------------------------------------------------------


def bedrock_request(stream: bool = False, **fields: object):
    sent = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": USER, **fields}
    body = from_bedrock(sent, BedrockCall("claude-x", stream))
    return parse_request(Api.BEDROCK, body)


def test_a_bedrock_body_becomes_an_anthropic_body() -> None:
    sent = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": USER, "anthropic_beta": ["b1"]}
    assert from_bedrock(sent, BedrockCall("us.anthropic.claude:0", True)) == {
        "max_tokens": 5,
        "messages": USER,
        "anthropic_beta": ["b1"],
        "model": "us.anthropic.claude:0",
        "stream": True,
    }
    assert "stream" not in from_bedrock({**sent, "stream": True}, BedrockCall("m", False))  # the path says so
    assert "model" not in sent  # the client's body is left as it was


def test_to_an_anthropic_provider_the_betas_become_the_header() -> None:
    translator = translator_for(Api.BEDROCK, Api.ANTHROPIC)
    assert isinstance(translator, Chained)
    upstream = translator.request(bedrock_request(anthropic_beta=["b1", "b2"]), Target("claude-y"))
    assert upstream.path == "/v1/messages"
    assert orjson.loads(upstream.body) == {"max_tokens": 50, "messages": USER, "model": "claude-y"}
    assert dict(upstream.headers) == {"anthropic-version": "2023-06-01", "anthropic-beta": "b1,b2"}


@pytest.mark.parametrize(
    ("provider", "path"), [(Api.BEDROCK, "/model/claude-y/invoke"), (Api.VERTEX, "/claude-y:rawPredict")]
)
def test_to_a_bedrock_or_vertex_provider_the_betas_stay_in_the_body(provider: Api, path: str) -> None:
    translator = translator_for(Api.BEDROCK, provider)
    assert translator is not None
    upstream = translator.request(bedrock_request(anthropic_beta=["b1"]), Target("claude-y"))
    assert upstream.path == path
    sent = orjson.loads(upstream.body)
    assert sent["anthropic_beta"] == ["b1"] and "model" not in sent and "anthropic-beta" not in dict(upstream.headers)


def test_to_an_openai_provider_the_betas_are_dropped() -> None:
    translator = translator_for(Api.BEDROCK, Api.OPENAI)
    assert translator is not None
    upstream = translator.request(bedrock_request(stream=True, anthropic_beta=["b1"]), Target("gpt-4o", stream=True))
    assert "anthropic_beta" not in orjson.loads(upstream.body) and not any(
        "anthropic" in h for h, _ in upstream.headers
    )


def test_a_bedrock_provider_answers_a_bedrock_client_untouched_and_its_usage_is_read() -> None:
    translator = translator_for(Api.BEDROCK, Api.BEDROCK)
    assert isinstance(translator, BedrockPassthrough)
    upstream = translator.request(bedrock_request(stream=True), Target("us.anthropic.m:0", stream=True))
    assert upstream.path == "/model/us.anthropic.m%3A0/invoke-with-response-stream"
    assert orjson.loads(upstream.body)["anthropic_version"] == "bedrock-2023-05-31"
    assert translator.response_headers(200, {"content-type": "application/vnd.amazon.eventstream"}) == ()
    stream = reframed([SSE])  # Bedrock's own frames of the same events
    cut = len(stream) // 2
    first, last = translator.response_body(stream[:cut], False), translator.response_body(stream[cut:], True)
    assert first.body + last.body == stream
    assert last.usage is not None and (last.usage.input_tokens, last.usage.output_tokens) == (3, 4)
    assert translator.response_error(400, b'{"message":"no"}').body == b'{"message":"no"}'


def test_a_bedrock_providers_json_answer_goes_back_byte_for_byte() -> None:
    translator = translator_for(Api.BEDROCK, Api.BEDROCK)
    assert translator is not None
    translator.request(bedrock_request(), Target("m"))
    translator.response_headers(200, {"content-type": "application/json"})
    raw = b'{"id": "msg_1", "type": "message", "usage": {"input_tokens": 5, "output_tokens": 2}}'
    assert translator.response_body(raw[:9], False).body == b""
    out = translator.response_body(raw[9:], True)
    assert out.body == raw and out.usage is not None and out.usage.input_tokens == 5
