"""AnthropicToResponses: an Anthropic client's request to an OpenAI Responses provider and the answer
back, through golden fixtures (tests/fixtures/responses_provider/<case>/, the layout of
tests/unit/golden_cases.py; ``client: openai`` in case.json runs the chain an OpenAI Chat client gets),
every stream replayed whole, byte by byte, with each line ending and at hypothesis-chosen split
points; plus the request mapping's choices and round trips through the fake Responses provider.
Rewrite expectations with ``--update-golden`` and review the diff."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.plan import response_context
from extproc.translate.anthropic_responses import AnthropicToResponses, usage_from_responses
from extproc.translate.base import Api, Target, Translator, Usage
from extproc.translate.chained import Chained
from extproc.translate.client_request import parse_request
from extproc.translate.openai_anthropic import OpenAIToAnthropic
from fake_provider.reply import plan_reply
from fake_provider.responses_api import ResponsesApi
from tests.unit.golden_cases import CREATED
from tests.unit.stream_checks import (
    accumulate_anthropic,
    check_anthropic_stream,
    check_openai_stream,
    split_at,
    sse_events,
)
from tests.unit.translating import FixtureCase, translate

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "responses_provider"


@dataclass(frozen=True)
class Case(FixtureCase):
    @property
    def streams(self) -> bool:
        return (self.path / "provider_response.sse").exists()

    def provider_response(self) -> bytes:
        return (self.path / f"provider_response.{'sse' if self.streams else 'json'}").read_bytes()

    def content_type(self) -> str:
        return self.meta.get("content_type", "text/event-stream" if self.streams else "application/json")

    def translator(self) -> Translator:
        if self.client is Api.OPENAI:
            return Chained(OpenAIToAnthropic(clock=lambda: CREATED), AnthropicToResponses())
        return AnthropicToResponses()


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


def _check_stream(case: Case, body: bytes) -> list[dict[str, Any]]:
    if case.client is Api.ANTHROPIC:
        return check_anthropic_stream(body)
    options = case.client_request.get("stream_options") or {}
    return check_openai_stream(body, include_usage=options.get("include_usage") is True)


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
    assert actual_request["path"] == "/v1/responses"
    assert actual_request["body"]["store"] is False

    headers = dict(translator.response_headers(case.status, {"content-type": case.content_type()}))
    client_stream = case.target().stream and case.status < 300
    assert headers["content-type"] == ("text/event-stream" if client_stream else "application/json")
    if case.status >= 300:
        answer = translator.response_error(case.status, case.provider_response())
        assert answer.status == case.status
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(answer.body)), update_golden)
        assert orjson.loads(answer.body) == orjson.loads(expected)
        return
    chunk = translator.response_body(case.provider_response(), True)
    if client_stream:
        expected = _expect(case, "client_response.sse", chunk.body, update_golden)
        assert sse_events(chunk.body) == sse_events(expected)
        _check_stream(case, chunk.body)
    else:
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(chunk.body)), update_golden)
        assert orjson.loads(chunk.body) == orjson.loads(expected)
        if case.client is Api.ANTHROPIC:
            anthropic.types.Message.model_validate_json(chunk.body)
        else:
            openai.types.chat.ChatCompletion.model_validate_json(chunk.body)


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


def _line_endings(data: bytes) -> list[bytes]:
    lf = data.replace(b"\r\n", b"\n")
    return [lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")]


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
def test_stream_fed_one_byte_at_a_time_with_any_line_ending_translates_identically(case: Case) -> None:
    whole = _replay(case, [case.provider_response()])
    assert len(whole[1]) <= 1, "usage is reported once"
    for data in _line_endings(case.provider_response()):
        assert _replay(case, [data]) == whole
        assert _replay(case, [data[i : i + 1] for i in range(len(data))]) == whole
    assert _replay(case, [case.provider_response(), b""]) == whole


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_split_at_random_points_translates_identically(case: Case, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(_line_endings(case.provider_response())), label="line endings")
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=30), label="split points")
    assert _replay(case, split_at(raw, points)) == _replay(case, [case.provider_response()])


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
    case = next(c for c in CASES if c.name == "stream_reasoning_then_text")
    _, [usage] = _replay(case, [case.provider_response()])
    assert usage == Usage(input_tokens=3000 - 2048, output_tokens=40, cache_read_input_tokens=2048)
    chat = next(c for c in CASES if c.name == "chat_client_text")
    _, [usage] = _replay(chat, [chat.provider_response()])
    assert usage == Usage(input_tokens=2100 - 2048, output_tokens=5, cache_read_input_tokens=2048)


# --- the request mapping's choices ------------------------------------------------------------------

TARGET = Target(model="gpt-5", base_path="/v1", capabilities=frozenset({"thinking"}))


def _body(request: dict[str, Any], target: Target = TARGET) -> dict[str, Any]:
    base = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return orjson.loads(translate(AnthropicToResponses(), {**base, **request}, target).body)


def test_max_tokens_is_clamped_to_the_target_and_raised_to_the_responses_minimum() -> None:
    assert _body({"max_tokens": 5000}, replace(TARGET, max_output_tokens=1000))["max_output_tokens"] == 1000
    assert _body({"max_tokens": 1})["max_output_tokens"] == 16


def test_thinking_becomes_reasoning_only_for_targets_that_think() -> None:
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 31999}}
    assert _body(thinking)["reasoning"] == {"effort": "high", "summary": "auto"}
    assert "reasoning" not in _body(thinking, replace(TARGET, capabilities=frozenset()))
    omitted = {"thinking": {"type": "enabled", "budget_tokens": 2000, "display": "omitted"}}
    assert _body(omitted)["reasoning"] == {"effort": "low"}
    assert "reasoning" not in _body({"thinking": {"type": "disabled"}})


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "name": "Read"}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: object) -> None:
    tool = {"name": "Read", "input_schema": {"type": "object"}}
    body = _body({"tools": [tool], "tool_choice": choice})
    assert body["tool_choice"] == expected
    assert body["tools"] == [{"type": "function", "name": "Read", "parameters": {"type": "object"}, "strict": False}]


def test_a_tool_result_with_an_image_and_an_error_keeps_both() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    messages = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Shot", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [image]}],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "Shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": "x"}]},
    ]
    items = _body({"messages": messages})["input"]
    assert items[2] == {
        "type": "function_call_output",
        "call_id": "t1",
        "output": [
            {"type": "input_text", "text": "Error:"},
            {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
        ],
    }
    assert items[4] == {"type": "function_call_output", "call_id": "t2", "output": "Error: x"}


def test_encrypted_reasoning_is_dropped_with_a_debug_note(caplog: pytest.LogCaptureFixture) -> None:
    case = next(c for c in CASES if c.name == "tool_loop_history_and_reasoning")
    translator = case.translator()
    translate(translator, case.client_request, case.target())
    translator.response_headers(200, {"content-type": "application/json"})
    with caplog.at_level(logging.DEBUG, logger="ccr.extproc.translate"):
        body = translator.response_body(case.provider_response(), True).body
    assert b"gAAAAB" not in body
    assert "encrypted_content dropped" in caplog.text


def test_responses_usage_counts_cached_tokens_apart() -> None:
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60}, "output_tokens": 7}
    assert usage_from_responses(usage) == Usage(input_tokens=40, output_tokens=7, cache_read_input_tokens=60)
    assert usage_from_responses(None) == Usage()
    assert usage_from_responses({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 9}}).input_tokens == 0


# --- round trips through the fake Responses provider ------------------------------------------------

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
BODIES = {
    Api.ANTHROPIC: {
        "model": "claude",
        "max_tokens": 1000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "tools": [{"name": "Read", "description": "read", "input_schema": SCHEMA}],
        "messages": [{"role": "user", "content": "read the file please"}],
    },
    Api.OPENAI: {
        "model": "gpt",
        "reasoning_effort": "low",
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "Read", "parameters": SCHEMA}}],
        "messages": [{"role": "user", "content": "read the file please"}],
    },
}


@pytest.mark.parametrize("client", [Api.ANTHROPIC, Api.OPENAI])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_call", [False, True])
def test_fake_responses_round_trip(client: Api, stream: bool, tool_call: bool) -> None:
    body = {**BODIES[client], "stream": stream}
    translator: Translator = (
        AnthropicToResponses()
        if client is Api.ANTHROPIC
        else Chained(OpenAIToAnthropic(clock=lambda: CREATED), AnthropicToResponses())
    )
    target = replace(TARGET, stream=stream)
    upstream = translate(translator, body, target)
    api = ResponsesApi()
    sent = orjson.loads(upstream.body)
    conversation = api.parse(sent, len(upstream.body), None)
    assert conversation.first_tool is not None and conversation.wants_thinking
    reply = plan_reply("responses", conversation, force_tool_call=tool_call, cached_tokens=7)
    translator.response_headers(200, {"content-type": "text/event-stream" if stream else "application/json"})
    if stream:
        raw = b"".join(api.render_stream(reply, sent, 3))
        first = translator.response_body(raw, False)
        last = translator.response_body(b"", True)
        out, usage = first.body + last.body, first.usage or last.usage
        if client is Api.ANTHROPIC:
            events = check_anthropic_stream(out)
            assert events[-2]["delta"]["stop_reason"] == ("tool_use" if tool_call else "end_turn")
            assert events[-2]["usage"]["cache_read_input_tokens"] == 7
            message = accumulate_anthropic(events)
            assert message["content"][0]["thinking"] == reply.thinking
        else:
            chunks = check_openai_stream(out, include_usage=True)
            assert chunks[-2]["choices"][0]["finish_reason"] == ("tool_calls" if tool_call else "stop")
            assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 7
    else:
        result = translator.response_body(api.render_json(reply, sent), True)
        answer = json.loads(result.body)
        usage = result.usage
        if client is Api.ANTHROPIC:
            message = anthropic.types.Message.model_validate(answer)
            assert message.stop_reason == ("tool_use" if tool_call else "end_turn")
            assert message.content[0].type == "thinking"
        else:
            completion = openai.types.chat.ChatCompletion.model_validate(answer)
            assert completion.choices[0].finish_reason == ("tool_calls" if tool_call else "stop")
    assert usage is not None
    assert usage == Usage(reply.input_tokens - 7, reply.output_tokens, 7)


# --- an untrusted provider: any sequence of typed events --------------------------------------------

_EVENT_TYPES = (
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.output_item.done",
    "response.output_text.delta",
    "response.refusal.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
    "response.audio.delta",
)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1, 3), st.text(max_size=5))
_ITEMS = st.one_of(
    _SCALARS,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["message", "function_call", "reasoning", "web_search_call"])},
        optional={"call_id": _SCALARS, "name": _SCALARS, "arguments": _SCALARS, "encrypted_content": _SCALARS},
    ),
)
_RESPONSES = st.one_of(
    _SCALARS,
    st.fixed_dictionaries(
        {},
        optional={
            "id": _SCALARS,
            "model": _SCALARS,
            "status": st.sampled_from(["completed", "incomplete", "failed", None]),
            "incomplete_details": st.one_of(_SCALARS, st.fixed_dictionaries({"reason": _SCALARS})),
            "usage": st.one_of(
                _SCALARS,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "input_tokens": _SCALARS,
                        "output_tokens": _SCALARS,
                        "input_tokens_details": st.one_of(_SCALARS, st.fixed_dictionaries({"cached_tokens": _SCALARS})),
                    },
                ),
            ),
            "error": st.one_of(_SCALARS, st.fixed_dictionaries({"code": _SCALARS, "message": _SCALARS})),
        },
    ),
)
_EVENTS = st.fixed_dictionaries(
    {"type": st.sampled_from(_EVENT_TYPES)},
    optional={
        "output_index": _SCALARS,
        "summary_index": _SCALARS,
        "delta": _SCALARS,
        "arguments": _SCALARS,
        "item": _ITEMS,
        "response": _RESPONSES,
        "code": _SCALARS,
        "message": _SCALARS,
    },
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENTS, max_size=12), show_thinking=st.booleans())
def test_any_event_sequence_gives_a_closed_stream_and_never_raises(
    events: list[dict[str, Any]], show_thinking: bool
) -> None:
    translator = AnthropicToResponses()
    context = response_context(parse_request(Api.ANTHROPIC, _MINIMAL), 10)
    translator.prime(replace(context, model="m", show_thinking=show_thinking))
    translator.response_headers(200, {"content-type": "text/event-stream"})
    raw = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    out = translator.response_body(raw, True).body
    names = [name for name, _ in sse_events(out)]
    assert names.count("message_start") <= 1
    assert names[-1] in ("message_stop", "error")
    assert names.count("message_stop") + names.count("error") == 1


_MINIMAL = {"model": "claude", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_the_web_search_server_tool_becomes_the_providers_own_where_it_has_one() -> None:
    request = {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}
    searching = replace(TARGET, capabilities=frozenset({"web_search"}))
    assert _body(request, searching)["tools"] == [{"type": "web_search"}]
    assert "tools" not in _body(request)
