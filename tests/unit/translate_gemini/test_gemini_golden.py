"""Golden cases: request, upstream path and body, and client answer of every case folder; every
stream also replayed byte by byte, at hypothesis-chosen split points, and with each line ending."""

from __future__ import annotations

import json

import anthropic.types
import openai.types.chat
import orjson
import pytest
from gemini_cases import Case, all_cases, make_translator, pretty, replay, stream_cases
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.translate.base import Api
from tests.unit.stream_checks import check_anthropic_stream, check_openai_stream

CASES = all_cases()
STREAMS = stream_cases()


def _expect_text(case: Case, name: str, actual: str, update: bool) -> None:
    path = case.path / name
    if update:
        path.write_text(actual)
        return
    assert path.exists(), f"{path} missing: run pytest {__file__} --update-golden"
    assert actual == path.read_text(), f"{case.id}: {name} differs"


def _expect_json(case: Case, name: str, actual: object, update: bool) -> None:
    path = case.path / name
    if update:
        path.write_text(pretty(actual))
        return
    assert path.exists(), f"{path} missing: run pytest {__file__} --update-golden"
    assert actual == json.loads(path.read_text()), f"{case.id}: {name} differs"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_case_translates_as_recorded(case: Case, update_golden: bool) -> None:
    client_request = case.read_json("client_request.json")
    snapshot = orjson.dumps(client_request)
    translator = make_translator(case.client)
    upstream = translator.request(client_request, case.target())
    assert orjson.dumps(client_request) == snapshot, "request() mutated the client body"
    assert upstream.headers == ()  # never auth: the processor sets x-goog-api-key
    _expect_text(case, "provider_path.txt", upstream.path, update_golden)
    _expect_json(case, "provider_request.json", orjson.loads(upstream.body), update_golden)

    headers = dict(translator.response_headers(200, {"content-type": "x"}))
    data = case.provider_response()
    if case.streaming:
        assert headers == {"content-type": "text/event-stream"}
        body = translator.response_body(data, False).body + translator.response_body(b"", True).body
        _expect_text(case, "client_response.sse", body.decode(), update_golden)
        if case.client is Api.ANTHROPIC:
            check_anthropic_stream(body)
        else:
            options = client_request.get("stream_options") or {}
            check_openai_stream(body, include_usage=options.get("include_usage") is True)
    else:
        assert headers == {"content-type": "application/json"}
        result = translator.response_body(data, True)
        assert result.usage is not None
        answer = orjson.loads(result.body)
        _expect_json(case, "client_response.json", answer, update_golden)
        if case.client is Api.ANTHROPIC:
            anthropic.types.Message.model_validate(answer)
        else:
            openai.types.chat.ChatCompletion.model_validate(answer)


def _variants(case: Case) -> list[bytes]:
    data = case.provider_response()
    lf = data.replace(b"\r\n", b"\n")
    return [data, lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")]


@pytest.mark.parametrize("case", STREAMS, ids=[c.id for c in STREAMS])
def test_stream_output_does_not_depend_on_chunking_or_line_ends(case: Case) -> None:
    expected = (case.path / "client_response.sse").read_bytes()
    for data in _variants(case):
        assert replay(case, [data]) == expected
        assert replay(case, [data[i : i + 1] for i in range(len(data))]) == expected
    data = case.provider_response()
    # the last piece arriving together with end_of_stream
    translator = make_translator(case.client)
    translator.request(case.read_json("client_request.json"), case.target())
    assert translator.response_body(data, True).body == expected


@pytest.mark.parametrize("case", STREAMS, ids=[c.id for c in STREAMS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_stream_output_survives_any_split(case: Case, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(_variants(case)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert replay(case, pieces) == (case.path / "client_response.sse").read_bytes()
