"""AnthropicToBedrock: an Anthropic client's request to AWS Bedrock's InvokeModel (Anthropic models)
and the answer back, through golden fixtures (tests/fixtures/bedrock/<case>/; ``client: openai`` or
``responses`` in case.json runs the chain those clients get). A stream fixture is
``provider_response.frames.json``: the event-stream frames, readable (a ``chunk`` frame names the
Anthropic event it carries, base64-wrapped here as Bedrock does); its bytes are checked to decode
the same with botocore. Every stream is replayed whole, byte by byte and at hypothesis-chosen split
points. Rewrite expectations with ``--update-golden`` and review the diff."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anthropic.types
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.plan import response_context
from extproc.translate import registry
from extproc.translate.anthropic_bedrock import AnthropicToBedrock, bedrock_error_status
from extproc.translate.aws_eventstream import encode_message
from extproc.translate.base import Api, Target, Translator, Usage
from extproc.translate.chained import Chained
from extproc.translate.client_request import parse_request
from extproc.translate.openai_anthropic import OpenAIToAnthropic
from extproc.translate.responses_anthropic import ResponsesToAnthropic
from fake_provider.bedrock_api import BedrockApi
from fake_provider.reply import plan_reply
from tests.unit.golden_cases import CREATED
from tests.unit.stream_checks import (
    accumulate_anthropic,
    check_anthropic_stream,
    check_openai_stream,
    split_at,
    sse_events,
)
from tests.unit.translating import FixtureCase, translate

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bedrock"
EVENTSTREAM = "application/vnd.amazon.eventstream"


def frames_bytes(frames: list[dict[str, Any]]) -> bytes:
    out = []
    for frame in frames:
        if "event" in frame:
            payload = {"bytes": base64.b64encode(orjson.dumps(frame["event"])).decode(), "p": "abcd"}
        else:
            payload = frame["payload"]
        out.append(encode_message(frame["headers"], orjson.dumps(payload)))
    return b"".join(out)


@dataclass(frozen=True)
class Case(FixtureCase):
    @property
    def streams(self) -> bool:
        return (self.path / "provider_response.frames.json").exists()

    def frames(self) -> list[dict[str, Any]]:
        return orjson.loads((self.path / "provider_response.frames.json").read_bytes())

    def provider_response(self) -> bytes:
        if self.streams:
            return frames_bytes(self.frames())
        return (self.path / "provider_response.json").read_bytes()

    def content_type(self) -> str:
        return self.meta.get("content_type", EVENTSTREAM if self.streams else "application/json")

    def translator(self) -> Translator:
        if self.client is Api.OPENAI:
            return Chained(OpenAIToAnthropic(clock=lambda: CREATED), AnthropicToBedrock())
        if self.client is Api.RESPONSES:
            return Chained(ResponsesToAnthropic(clock=lambda: CREATED), AnthropicToBedrock())
        return AnthropicToBedrock()


CASES = [Case(path) for path in sorted(FIXTURES.iterdir()) if (path / "client_request.json").exists()]
STREAMS = [case for case in CASES if case.streams and case.status < 300]


def _expect(case: Case, name: str, actual: bytes, update: bool) -> bytes:
    path = case.path / name
    if update:
        path.write_bytes(actual)
    assert path.exists(), f"{path} missing: run pytest {__file__} --update-golden"
    return path.read_bytes()


def _pretty(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_translates_as_recorded(case: Case, update_golden: bool) -> None:
    translator = case.translator()
    snapshot = orjson.dumps(case.client_request)
    client_request = case.client_request
    upstream = translate(translator, client_request, case.target())
    assert orjson.dumps(client_request) == snapshot, "request() must not mutate the parsed body"
    actual_request = {"path": upstream.path, "headers": dict(upstream.headers), "body": orjson.loads(upstream.body)}
    expected = _expect(case, "provider_request.json", _pretty(actual_request), update_golden)
    assert actual_request == orjson.loads(expected)
    body = actual_request["body"]
    assert "model" not in body and "stream" not in body
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert not any(name.lower() in ("authorization", "x-api-key") for name in actual_request["headers"])

    headers = dict(translator.response_headers(case.status, {"content-type": case.content_type()}))
    client_stream = case.target().stream and case.status < 300
    assert headers["content-type"] == ("text/event-stream" if client_stream else "application/json")
    if case.status >= 300:
        answer = translator.response_error(case.status, case.provider_response())
        assert answer.status == case.meta.get("client_status", case.status)
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(answer.body)), update_golden)
        assert orjson.loads(answer.body) == orjson.loads(expected)
        anthropic.types.ErrorResponse.model_validate_json(answer.body)
        return
    chunk = translator.response_body(case.provider_response(), True)
    if client_stream:
        expected = _expect(case, "client_response.sse", chunk.body, update_golden)
        assert sse_events(chunk.body) == sse_events(expected)
        if case.client is Api.ANTHROPIC:
            check_anthropic_stream(chunk.body)
        elif case.client is Api.OPENAI:
            check_openai_stream(chunk.body, include_usage=True)
    else:
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(chunk.body)), update_golden)
        assert orjson.loads(chunk.body) == orjson.loads(expected)
        if case.client is Api.ANTHROPIC:
            assert chunk.body == case.provider_response(), "a buffered Message goes back byte for byte"
            anthropic.types.Message.model_validate_json(chunk.body)


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
def test_stream_fixture_bytes_decode_the_same_with_botocore(case: Case) -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(case.provider_response())
    decoded = list(buffer)
    assert [m.headers for m in decoded] == [f["headers"] for f in case.frames()]
    for message, frame in zip(decoded, case.frames(), strict=True):
        if "event" in frame:
            assert orjson.loads(base64.b64decode(orjson.loads(message.payload)["bytes"])) == frame["event"]


# --- streams, however they are cut ------------------------------------------------------------------


def _replay(case: Case, pieces: list[bytes]) -> tuple[bytes, list[Usage]]:
    translator = case.translator()
    translate(translator, case.client_request, case.target())
    translator.response_headers(case.status, {"content-type": case.content_type()})
    body, usages = b"", []
    for n, piece in enumerate(pieces):
        chunk = translator.response_body(piece, n == len(pieces) - 1)
        body += chunk.body
        if chunk.usage is not None:
            usages.append(chunk.usage)
    return body, usages


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
def test_stream_fed_one_byte_at_a_time_translates_identically(case: Case) -> None:
    data = case.provider_response()
    whole = _replay(case, [data])
    assert len(whole[1]) <= 1, "usage is reported once"
    assert _replay(case, [data[i : i + 1] for i in range(len(data))]) == whole
    assert _replay(case, [data, b""]) == whole
    assert _replay(case, [b"", data]) == whole


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_split_at_random_points_translates_identically(case: Case, data: st.DataObject) -> None:
    raw = case.provider_response()
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=30), label="split points")
    assert _replay(case, split_at(raw, points)) == _replay(case, [raw])


@pytest.mark.parametrize("case", [c for c in CASES if c.status < 300], ids=lambda c: c.name)
def test_a_primed_translator_answers_like_one_that_translated_the_request(case: Case) -> None:
    target = case.target()
    translated = case.translator()
    translate(translated, case.client_request, target)
    primed = case.translator()
    request = replace(parse_request(case.client, case.client_request), stream=target.stream)
    context = response_context(request, getattr(translated, "estimate", 0))
    primed.prime(replace(context, model=target.model))  # type: ignore[attr-defined]
    answers = []
    for translator in (translated, primed):
        translator.response_headers(200, {"content-type": case.content_type()})
        body = translator.response_body(case.provider_response(), True).body
        answers.append(sse_events(body) if target.stream else orjson.loads(body))
    assert answers[0] == answers[1]


def test_the_usage_reported_is_the_providers_own() -> None:
    case = next(c for c in CASES if c.name == "stream_text_cached_usage")
    _, [usage] = _replay(case, [case.provider_response()])
    assert usage == Usage(input_tokens=200, output_tokens=12, cache_read_input_tokens=1000)
    buffered = next(c for c in CASES if c.name == "text_json_clamped_and_unsigned_thinking_dropped")
    _, [usage] = _replay(buffered, [buffered.provider_response()])
    assert usage == Usage(input_tokens=25, output_tokens=4, cache_creation_input_tokens=7)


def test_a_stream_without_usage_falls_back_to_bedrocks_invocation_metrics() -> None:
    case = next(c for c in CASES if c.name == "stream_text_cached_usage")
    frames = [f for f in case.frames() if f.get("event", {}).get("type") not in ("message_start", "message_delta")]
    translator = AnthropicToBedrock()
    translate(translator, case.client_request, case.target())
    translator.response_headers(200, {"content-type": EVENTSTREAM})
    usage = translator.response_body(frames_bytes(frames), True).usage
    assert usage == Usage(input_tokens=1200, output_tokens=12)


def test_a_corrupt_frame_ends_the_stream_with_an_error_event() -> None:
    case = next(c for c in CASES if c.name == "stream_text_cached_usage")
    data = bytearray(case.provider_response())
    data[-1] ^= 0xFF  # the last frame's CRC
    body, _ = _replay(case, [bytes(data)])
    events = check_anthropic_stream(body)
    assert events[-1]["type"] == "error"
    assert "CRC" in events[-1]["error"]["message"]


@pytest.mark.parametrize(
    ("chunk_payload", "why"),
    [
        (b"not json", "invalid chunk"),
        (b'{"bytes": "!!!"}', "invalid chunk"),
        (b'{"bytes": "' + base64.b64encode(b'{"no": "type"}') + b'"}', "invalid chunk"),
    ],
)
def test_a_malformed_chunk_is_an_error_event_not_skipped(chunk_payload: bytes, why: str) -> None:
    headers = {":event-type": "chunk", ":message-type": "event"}
    translator = AnthropicToBedrock()
    translate(
        translator,
        {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]},
        Target("m", stream=True),
    )
    translator.response_headers(200, {"content-type": EVENTSTREAM})
    body = translator.response_body(encode_message(headers, chunk_payload), True).body
    [(name, payload)] = sse_events(body)
    assert name == "error" and why in payload["error"]["message"]


# --- the request mapping's choices ------------------------------------------------------------------


def test_the_path_names_the_url_encoded_model_and_the_streaming_verb() -> None:
    body = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-v1:0"
    upstream = translate(AnthropicToBedrock(), body, Target(arn, base_path="/proxy"))
    assert (
        upstream.path
        == "/proxy/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-5-v1%3A0/invoke"
    )
    streamed = translate(AnthropicToBedrock(), {**body, "stream": True}, Target("m", stream=True))
    assert streamed.path == "/model/m/invoke-with-response-stream"


@pytest.mark.parametrize(
    ("error_type", "status", "stream", "expected"),
    [
        ("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/", 429, False, 429),
        ("throttlingException", 0, True, 529),
        ("", 408, False, 504),
        ("", 424, False, 502),
        ("AccessDeniedException", 403, False, 403),
        ("validationException", 0, True, 400),
        ("", 418, False, 418),
    ],
)
def test_bedrock_error_status(error_type: str, status: int, stream: bool, expected: int) -> None:
    assert bedrock_error_status(error_type, status, stream) == expected


@pytest.mark.parametrize(
    "message",
    [
        "The request signature we calculated does not match the signature you provided.",
        "Signature expired: 20261207T101010Z is now earlier than 20261207T102510Z (20261207T103010Z - 5 min.)",
        "The security token included in the request is expired",
        "Missing Authentication Token",
    ],
)
def test_aws_refusing_the_gateways_credentials_is_a_502_in_the_clients_format(message: str) -> None:
    """Envoy signed with the gateway's credentials: a refusal (a wrong or expired key, a clock too
    far off) is not the client's doing, and says what to check."""
    translated = AnthropicToBedrock().response_error(403, orjson.dumps({"message": message}))
    assert translated.status == 502
    error = orjson.loads(translated.body)["error"]
    assert error["type"] == "api_error" and error["message"].startswith("Bedrock refused the gateway's AWS credentials")
    assert message in error["message"]


def test_access_denied_to_a_model_stays_a_403() -> None:
    body = orjson.dumps({"message": "You don't have access to the model with the specified model ID."})
    assert AnthropicToBedrock().response_error(403, body).status == 403


@pytest.mark.parametrize("client", [Api.ANTHROPIC, Api.OPENAI, Api.RESPONSES])
def test_every_client_api_reaches_bedrock(client: Api) -> None:
    translator = registry.translator_for(client, Api.BEDROCK)
    assert translator is not None and translator.provider_api is Api.BEDROCK


# --- round trips through the fake Bedrock provider --------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_call", [False, True])
def test_fake_bedrock_round_trip(stream: bool, tool_call: bool) -> None:
    tools = [{"name": "Read", "description": "read", "input_schema": {"type": "object", "properties": {}}}]
    body = {
        "model": "claude",
        "max_tokens": 1000,
        "stream": stream,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "tools": tools,
        "messages": [{"role": "user", "content": "read the file please"}],
    }
    translator = AnthropicToBedrock()
    upstream = translate(translator, body, Target("anthropic.claude-v1:0", stream=stream))
    api = BedrockApi()
    sent = orjson.loads(upstream.body)
    reply = plan_reply(
        api.name,
        api.parse(sent, len(upstream.body), "anthropic.claude-v1:0"),
        force_tool_call=tool_call,
        cached_tokens=0,
    )
    translator.response_headers(200, {"content-type": EVENTSTREAM if stream else "application/json"})
    if stream:
        out = translator.response_body(b"".join(api.render_stream(reply, sent, 3)), True)
        message = accumulate_anthropic(check_anthropic_stream(out.body))
        assert message["stop_reason"] == ("tool_use" if tool_call else "end_turn")
    else:
        out = translator.response_body(api.render_json(reply, sent), True)
        message = anthropic.types.Message.model_validate_json(out.body).model_dump()
    assert message["content"][0]["type"] == "thinking"
    assert out.usage is not None and out.usage.output_tokens == reply.output_tokens
