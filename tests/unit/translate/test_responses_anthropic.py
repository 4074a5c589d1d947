"""ResponsesToAnthropic: golden cases (tests/fixtures/responses/<case>/, the layout of
tests/unit/golden_cases.py; two are requests captured from the real Codex CLI), every stream
replayed whole, byte by byte, with each line ending and at hypothesis-chosen split points, and
what the translator writes read back by the openai SDK itself: ``Response.model_validate`` for a
JSON answer, every stream event validated against the SDK's event union and the whole stream run
through ``client.responses.stream`` / ``create(stream=True)`` over a mock transport.

Rewrite expectations with ``--update-golden`` and review the diff."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from extproc.plan import response_context
from extproc.translate.base import Api, ResponseContext, Target, Usage
from extproc.translate.client_request import parse_request
from extproc.translate.responses_anthropic import ResponsesToAnthropic
from tests.unit.stream_checks import split_at, sse_events
from tests.unit.translating import translate

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "responses"
CREATED = 1_700_000_000
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


@dataclass(frozen=True)
class Case:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.path / "case.json"
        return json.loads(meta.read_text()) if meta.exists() else {}

    @property
    def client_request(self) -> dict[str, Any]:
        return orjson.loads((self.path / "client_request.json").read_bytes())

    def target(self) -> Target:
        settings_: dict[str, Any] = {"model": "provider-model", **self.meta.get("target", {})}
        settings_["stream"] = self.client_request.get("stream") is True
        settings_["capabilities"] = frozenset(settings_.get("capabilities", ()))
        return Target(**settings_)

    @property
    def status(self) -> int:
        return int(self.meta.get("status", 200))

    @property
    def streams(self) -> bool:
        return (self.path / "provider_response.sse").exists()

    def provider_response(self) -> bytes:
        return (self.path / f"provider_response.{'sse' if self.streams else 'json'}").read_bytes()

    def content_type(self) -> str:
        return self.meta.get("content_type", "text/event-stream" if self.streams else "application/json")


CASES = [Case(p) for p in sorted(FIXTURES.iterdir()) if (p / "client_request.json").exists()]
STREAMS = [c for c in CASES if c.target().stream and c.status < 300]


def make() -> ResponsesToAnthropic:
    return ResponsesToAnthropic(clock=lambda: CREATED)


def _expect(case: Case, name: str, actual: bytes, update: bool) -> bytes:
    path = case.path / name
    if update:
        path.write_bytes(actual)
    assert path.exists(), f"{path} missing: run pytest {__file__} --update-golden"
    return path.read_bytes()


def _pretty(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


# --- the stream a Responses client reads ---------------------------------------------------------


def check_responses_stream(body: bytes) -> list[dict[str, Any]]:
    """Every event validates against the SDK's event union and names its type in ``event:``;
    sequence numbers run 0, 1, 2...; response.created first, then response.in_progress; exactly
    one terminal event (completed / incomplete / failed), last; every output item added is done,
    in order, before the end; deltas name an open item. Returns the payloads."""
    events = sse_events(body)
    payloads = []
    for n, (name, payload) in enumerate(events):
        assert name == payload["type"], (name, payload)
        assert payload["sequence_number"] == n, payload
        STREAM_EVENT.validate_python(payload)
        payloads.append(payload)
    types = [p["type"] for p in payloads]
    assert types[0] == "response.created", types
    if types[-1] != "response.failed" or len(types) > 2:
        assert types[1] == "response.in_progress", types
    assert sum(types.count(t) for t in TERMINAL) == 1 and types[-1] in TERMINAL, types
    open_items: dict[int, str] = {}
    done: list[int] = []
    for payload in payloads:
        kind = payload["type"]
        if kind == "response.output_item.added":
            assert payload["output_index"] == len(done) + len(open_items), payload
            open_items[payload["output_index"]] = payload["item"]["id"]
        elif kind == "response.output_item.done":
            assert open_items.pop(payload["output_index"]) == payload["item"]["id"]
            done.append(payload["output_index"])
        elif "item_id" in payload:
            assert open_items.get(payload["output_index"]) == payload["item_id"], payload
    assert not open_items and done == sorted(done)
    final = payloads[-1]["response"]
    Response.model_validate(final)
    assert [item["id"] for item in final["output"]] == [
        p["item"]["id"] for p in payloads if p["type"] == "response.output_item.done"
    ]
    return payloads


def sdk_client(body: bytes, content_type: str) -> openai.OpenAI:
    """The official client, its HTTP answered with ``body`` (what the gateway sends)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    return openai.OpenAI(
        api_key="sk-test", base_url="http://gateway/v1", http_client=httpx.Client(transport=httpx.MockTransport(answer))
    )


# --- golden cases --------------------------------------------------------------------------------


def test_the_cases_cover_streams_json_errors_and_the_codex_cli() -> None:
    names = {case.name for case in CASES}
    assert {"codex_text_turn", "codex_tool_loop", "error_rate_limited", "stream_json_fallback"} <= names
    assert len(STREAMS) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_case_translates_as_recorded(case: Case, update_golden: bool) -> None:
    translator = make()
    client_request = case.client_request
    snapshot = orjson.dumps(client_request)
    upstream = translate(translator, client_request, case.target())
    assert orjson.dumps(client_request) == snapshot, "request() must not mutate the parsed body"

    actual_request = {"path": upstream.path, "headers": dict(upstream.headers), "body": orjson.loads(upstream.body)}
    expected = _expect(case, "provider_request.json", _pretty(actual_request), update_golden)
    assert actual_request == orjson.loads(expected)
    # The body is a valid Anthropic request: what a chain's inner translator is given.
    parse_request(Api.ANTHROPIC, actual_request["body"])

    headers = dict(translator.response_headers(case.status, {"content-type": case.content_type()}))
    client_stream = case.target().stream and case.status < 300
    assert headers["content-type"] == ("text/event-stream" if client_stream else "application/json")

    if case.status >= 300:
        answer = translator.response_error(case.status, case.provider_response())
        assert answer.status == case.status
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(answer.body)), update_golden)
        assert orjson.loads(answer.body) == orjson.loads(expected)
        assert set(orjson.loads(answer.body)["error"]) == {"message", "type", "param", "code"}
        return

    chunk = translator.response_body(case.provider_response(), True)
    if client_stream:
        expected = _expect(case, "client_response.sse", chunk.body, update_golden)
        assert sse_events(chunk.body) == sse_events(expected)
        check_responses_stream(chunk.body)
    else:
        expected = _expect(case, "client_response.json", _pretty(orjson.loads(chunk.body)), update_golden)
        assert orjson.loads(chunk.body) == orjson.loads(expected)
        Response.model_validate_json(chunk.body)


@pytest.mark.parametrize("case", [c for c in CASES if c.status < 300], ids=lambda c: c.name)
def test_the_openai_sdk_reads_the_answer(case: Case) -> None:
    translator = make()
    translate(translator, case.client_request, case.target())
    translator.response_headers(200, {"content-type": case.content_type()})
    body = translator.response_body(case.provider_response(), True).body
    request = {k: v for k, v in case.client_request.items() if k in ("model", "input")}
    if not case.target().stream:
        response = sdk_client(body, "application/json").responses.create(**request)
        assert response.id.startswith("resp_")
        assert response.output_text == "".join(
            part.text for item in response.output if item.type == "message" for part in item.content
        )
        return
    events = sse_events(body)
    final = events[-1][1]["response"]
    with sdk_client(body, "text/event-stream").responses.stream(**request) as stream:
        seen = [event.type for event in stream]
        if final["status"] != "failed":
            response = stream.get_final_response()
            assert response.status == final["status"]
            assert [item.id for item in response.output] == [item["id"] for item in final["output"]]
    assert seen == [payload["type"] for _, payload in events]
    created = list(sdk_client(body, "text/event-stream").responses.create(stream=True, **request))
    assert [event.sequence_number for event in created] == list(range(len(events)))


# --- streams, however they are cut ------------------------------------------------------------------


def replay(case: Case, pieces: list[bytes]) -> tuple[bytes, list[Usage]]:
    translator = make()
    translate(translator, case.client_request, case.target())
    translator.response_headers(200, {"content-type": case.content_type()})
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
    whole = replay(case, [case.provider_response()])
    assert len(whole[1]) <= 1, "usage is reported once"
    for data in _line_endings(case.provider_response()):
        assert replay(case, [data]) == whole
        assert replay(case, [data[i : i + 1] for i in range(len(data))]) == whole
    assert replay(case, [case.provider_response(), b""]) == whole


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c.name)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_split_at_random_points_translates_identically(case: Case, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(_line_endings(case.provider_response())), label="line endings")
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=30), label="split points")
    assert replay(case, split_at(raw, points)) == replay(case, [case.provider_response()])


def _freeform(case: Case) -> bool:
    return any(tool.get("type") == "custom" for tool in case.client_request.get("tools") or ())


def test_some_case_calls_a_freeform_tool() -> None:
    """The primed test below covers a custom_tool_call (ResponseContext.custom_tools)."""
    assert any(_freeform(c) and b"custom_tool_call" in (c.path / _answer_file(c)).read_bytes() for c in CASES)


def _answer_file(case: Case) -> str:
    return "client_response.sse" if (case.path / "client_response.sse").exists() else "client_response.json"


# A primed translator knows the freeform tools from the ResponseContext (extproc.plan computes
# them): their calls come out as custom_tool_call items there too.
@pytest.mark.parametrize("case", [c for c in CASES if c.status < 300], ids=lambda c: c.name)
def test_a_primed_translator_answers_like_one_that_translated_the_request(case: Case) -> None:
    target = case.target()
    translated = make()
    translate(translated, case.client_request, target)
    primed = make()
    request = replace(parse_request(Api.RESPONSES, case.client_request), stream=target.stream)
    primed.prime(replace(response_context(request, 0), model=target.model))
    answers = []
    for translator in (translated, primed):
        translator.response_headers(200, {"content-type": case.content_type()})
        answers.append(translator.response_body(case.provider_response(), True))
    assert answers[0] == answers[1]


def test_usage_counts_cached_tokens_inside_input_tokens() -> None:
    case = Case(FIXTURES / "text")
    translator = make()
    translate(translator, case.client_request, case.target())
    translator.response_headers(200, {"content-type": "application/json"})
    chunk = translator.response_body(case.provider_response(), True)
    assert chunk.usage == Usage(
        input_tokens=12, output_tokens=2, cache_read_input_tokens=30, cache_creation_input_tokens=5
    )
    usage = orjson.loads(chunk.body)["usage"]
    assert usage["input_tokens"] == 47 and usage["input_tokens_details"]["cached_tokens"] == 30
    assert usage["total_tokens"] == 49


def test_a_stream_reports_the_final_usage_with_its_terminal_event() -> None:
    body, usages = replay(Case(FIXTURES / "codex_text_turn"), [Case(FIXTURES / "codex_text_turn").provider_response()])
    assert usages == [Usage(input_tokens=9000, output_tokens=7, cache_read_input_tokens=2000)]
    final = sse_events(body)[-1][1]
    assert final["type"] == "response.completed"
    assert final["response"]["usage"]["input_tokens"] == 11000


# --- any Anthropic stream -------------------------------------------------------------------------

_FRAGMENT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_BLOCK = st.tuples(
    st.sampled_from(["text", "thinking", "tool_use", "redacted_thinking"]), st.lists(_FRAGMENT, max_size=4)
)


def _anthropic_stream(blocks: list[tuple[str, list[str]]], stop: str, cut: int | None, error: bool) -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_P", "model": "m", "content": [], "usage": {"input_tokens": 3}}}
    ]
    for index, (kind, fragments) in enumerate(blocks):
        block: dict[str, Any] = {"type": kind}
        if kind == "tool_use":
            block.update(id=f"toolu_{index}", name="f", input={})
        elif kind == "redacted_thinking":
            block["data"] = "x"
        else:
            block[kind] = ""
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        delta = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}.get(kind)
        field = {"text": "text", "thinking": "thinking", "tool_use": "partial_json"}.get(kind)
        for fragment in fragments if delta else ():
            events.append({"type": "content_block_delta", "index": index, "delta": {"type": delta, field: fragment}})
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 9}})
    events.append({"type": "message_stop"})
    if cut is not None:
        events = events[: cut % len(events)]
    if error:
        events.append({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(_BLOCK, max_size=5),
    stop=st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal", "pause_turn"]),
    cut=st.none() | st.integers(0, 40),
    error=st.booleans(),
    points=st.lists(st.integers(0, 4000), max_size=12),
)
def test_any_anthropic_stream_becomes_a_well_formed_responses_stream(blocks, stop, cut, error, points) -> None:
    """Whatever the blocks, the stop reason, a cut or an error: events the SDK validates, in
    order, one terminal event; split anywhere, the same bytes; every text as its fragments."""
    raw = _anthropic_stream(blocks, stop, cut, error)

    def run(pieces: list[bytes]) -> bytes:
        translator = make()
        translator.prime(ResponseContext("model", True))
        translator.response_headers(200, {"content-type": "text/event-stream"})
        return b"".join(translator.response_body(p, n == len(pieces) - 1).body for n, p in enumerate(pieces))

    body = run([raw])
    assert run(split_at(raw, points)) == body
    payloads = check_responses_stream(body)
    final = payloads[-1]
    if cut is None and not error:
        expected = "response.incomplete" if stop in ("max_tokens", "refusal") else "response.completed"
        assert final["type"] == expected
        texts = ["".join(f) for kind, f in blocks if kind == "text"]
        written = [i["content"][0]["text"] for i in final["response"]["output"] if i["type"] == "message"]
        assert written == texts
    else:
        assert final["type"] in ("response.failed", "response.completed", "response.incomplete")
        assert error or cut is not None
