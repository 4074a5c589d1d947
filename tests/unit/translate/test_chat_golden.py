"""Golden cases for Anthropic <-> OpenAI translation, one folder per case under tests/golden/<pair>/.

Each folder holds ``client_request.json``; ``case.json`` (optional: ``target`` fields, upstream
``status`` and ``content_type``, a description); ``provider_request.json`` (expected
``{"path", "headers", "body"}``); ``provider_response.json`` or ``.sse``; and the expected
``client_response.json`` or ``.sse``. SSE expectations compare decoded events, so a hand edit
need not match the byte layout. Rewrite expectations with ``--update-golden`` and review the diff.
"""

from __future__ import annotations

import anthropic.types
import openai.types.chat
import orjson
import pytest
from chat_cases import Case, all_cases, make_translator

from extproc.translate.base import Api
from tests.unit.stream_checks import check_anthropic_stream, check_openai_stream, sse_events


def _expect(case: Case, name: str, actual: bytes, update: bool) -> bytes:
    path = case.path / name
    if update:
        path.write_bytes(actual)
    assert path.exists(), f"{path} missing: run pytest tests/unit --update-golden"
    return path.read_bytes()


def _pretty(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.name)
def test_golden_case_translates_as_recorded(case: Case, update_golden: bool) -> None:
    translator = make_translator(case.pair)
    client_request = case.client_request
    snapshot = orjson.dumps(client_request)
    upstream = translator.request(client_request, case.target())
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
        if case.pair == "anthropic_openai":
            check_anthropic_stream(chunk.body)
        else:
            check_openai_stream(chunk.body)
    else:
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(chunk.body)), update_golden)
        assert orjson.loads(chunk.body) == orjson.loads(expected)
        if translator.client_api is Api.ANTHROPIC:
            anthropic.types.Message.model_validate_json(chunk.body)
        else:
            openai.types.chat.ChatCompletion.model_validate_json(chunk.body)
