"""Every golden translator case (tests/unit/golden_cases.py), for every pair: the provider request,
the client answer, and every stream replayed whole, byte by byte, with each line ending, with a
trailing empty chunk and at hypothesis-chosen split points, always to the same client bytes and
the same single usage report. Rewrite expectations with ``--update-golden`` and review the diff."""

from __future__ import annotations

from dataclasses import replace

import anthropic.types
import openai.types.chat
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.plan import response_context
from extproc.translate.base import Api
from extproc.translate.client_request import parse_request
from tests.unit.golden_cases import Case, all_cases, make_translator, replay, stream_cases
from tests.unit.stream_checks import check_anthropic_stream, check_openai_stream, split_at, sse_events
from tests.unit.translating import translate

CASES = all_cases()
STREAMS = stream_cases()


def _expect(case: Case, name: str, actual: bytes, update: bool) -> bytes:
    path = case.path / name
    if update:
        path.write_bytes(actual)
    assert path.exists(), f"{path} missing: run pytest tests/unit/test_golden.py --update-golden"
    return path.read_bytes()


def _pretty(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def test_every_pair_has_cases() -> None:
    assert {case.pair for case in CASES} == {
        "anthropic_openai",
        "openai_anthropic",
        "anthropic_gemini",
        "openai_gemini",
        "anthropic_vertex",
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_case_translates_as_recorded(case: Case, update_golden: bool) -> None:
    translator = make_translator(case.pair)
    client_request = case.client_request
    snapshot = orjson.dumps(client_request)
    upstream = translate(translator, client_request, case.target())
    assert orjson.dumps(client_request) == snapshot, "request() must not mutate the parsed body"

    actual_request = {"path": upstream.path, "headers": dict(upstream.headers), "body": orjson.loads(upstream.body)}
    expected = _expect(case, "provider_request.json", _pretty(actual_request), update_golden)
    assert actual_request == orjson.loads(expected)

    headers = dict(translator.response_headers(case.status, {"content-type": case.provider_content_type()}))
    assert "content-length" not in headers
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
        if case.client is Api.ANTHROPIC:
            check_anthropic_stream(chunk.body)
        else:
            options = client_request.get("stream_options") or {}
            check_openai_stream(chunk.body, include_usage=options.get("include_usage") is True)
    else:
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(chunk.body)), update_golden)
        assert orjson.loads(chunk.body) == orjson.loads(expected)
        if case.client is Api.ANTHROPIC:
            anthropic.types.Message.model_validate_json(chunk.body)
        else:
            openai.types.chat.ChatCompletion.model_validate_json(chunk.body)


# --- streams, however they are cut ------------------------------------------------------------------


def _whole(case: Case) -> tuple[bytes, list]:
    result = replay(case, [case.provider_response()])
    assert len(result.usages) <= 1, "usage is reported once"
    return result.body, result.usages


# Pairs whose provider already speaks the client's SSE: the bytes go on as the provider framed them
# (its line endings too), so a stream framed otherwise gives the same events, not the same bytes.
_STREAMS_AS_SENT = frozenset({"anthropic_vertex"})


def _same_stream(case: Case, actual: bytes, expected: bytes) -> bool:
    return sse_events(actual) == sse_events(expected) if case.pair in _STREAMS_AS_SENT else actual == expected


def _line_endings(data: bytes) -> list[bytes]:
    lf = data.replace(b"\r\n", b"\n")
    return [lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")]


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
def test_stream_fed_one_byte_at_a_time_with_any_line_ending_translates_identically(case: Case) -> None:
    body, usages = _whole(case)
    for data in _line_endings(case.provider_response()):
        whole = replay(case, [data]).body
        assert _same_stream(case, whole, body)
        result = replay(case, [data[i : i + 1] for i in range(len(data))])  # splits inside "\r\n" too
        assert (result.body, result.usages) == (whole, usages)


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
def test_stream_split_after_the_last_byte_still_closes(case: Case) -> None:
    """The end of stream may come as a separate empty chunk."""
    body, usages = _whole(case)
    result = replay(case, [case.provider_response(), b""])
    assert (result.body, result.usages) == (body, usages)


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_split_at_random_points_translates_identically(case: Case, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(_line_endings(case.provider_response())), label="line endings")
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=30), label="split points")
    body, usages = _whole(case)
    whole = replay(case, [raw]).body
    assert _same_stream(case, whole, body)
    result = replay(case, split_at(raw, points))
    assert (result.body, result.usages) == (whole, usages)


# --- a translator primed from the plan's response context reads answers as one that translated -----


def _answer(body: bytes, stream: bool) -> object:
    return sse_events(body) if stream else orjson.loads(body)


@pytest.mark.parametrize("case", [c for c in CASES if c.status < 300], ids=lambda c: c.name)
def test_a_primed_translator_answers_like_one_that_translated_the_request(case: Case) -> None:
    target = case.target()
    translated = make_translator(case.pair)
    translate(translated, case.client_request, target)
    primed = make_translator(case.pair)
    # The same input-token guess as the translating one made (it shows where the provider reports none).
    request = replace(parse_request(case.client, case.client_request), stream=target.stream)
    context = response_context(request, getattr(translated, "estimate", 0))
    primed.prime(replace(context, model=target.model))
    answers = []
    for translator in (translated, primed):
        translator.response_headers(200, {"content-type": case.provider_content_type()})
        answers.append(_answer(translator.response_body(case.provider_response(), True).body, target.stream))
    assert answers[0] == answers[1]
