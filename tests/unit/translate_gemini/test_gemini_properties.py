"""Hypothesis properties of both Gemini translators: requests fail only with ClientRequestError and
never mutate the client body; any Gemini answer, split anywhere, gives output that validates against
the official SDK types, keeps the stream-order invariants, and does not depend on the split."""

from __future__ import annotations

import copy
import itertools
import json

import anthropic.types
import openai.types.chat
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gemini_schema import SCHEMA

from extproc.translate.anthropic_gemini import AnthropicToGemini
from extproc.translate.base import Api, ClientRequestError, UpstreamProtocolError
from extproc.translate.openai_gemini import OpenAIToGemini
from tests.unit.golden_cases import CREATED, make_target
from tests.unit.stream_checks import check_anthropic_stream, check_openai_stream
from tests.unit.translating import translate

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(max_size=12)
WORDS = st.text(min_size=1, max_size=12)  # message text: empty text is dropped, so rarely useful
NAME = st.sampled_from(["Read", "Bash", "mcp__fs__list", "web.search", "x"])
JUNK = st.none() | st.integers(-2, 3) | st.booleans() | TEXT | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2)
ARGS = st.dictionaries(
    st.sampled_from(["a", "path", "n"]), st.integers(-(2**63), 2**63 - 1) | TEXT | st.none(), max_size=3
)


def _maybe_junk(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the well-formed value, one time in twenty a JSON value of the wrong type."""
    return st.sampled_from([True] * 19 + [False]).flatmap(lambda ok: strategy if ok else JUNK)


# -- Anthropic requests -------------------------------------------------------------------------------

A_SOURCE = st.one_of(
    st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.just("image/png"), "data": TEXT}),
    st.fixed_dictionaries({"type": st.just("url"), "url": st.just("https://example.com/a.jpg")}),
    st.fixed_dictionaries({"type": st.just("text"), "media_type": st.just("text/plain"), "data": TEXT}),
    st.fixed_dictionaries({"type": st.sampled_from(["file", "weird"]), "file_id": TEXT}),
)
A_TEXT = st.fixed_dictionaries({"type": st.just("text"), "text": _maybe_junk(WORDS)}, optional={"cache_control": JUNK})
A_USER_BLOCK = st.one_of(
    A_TEXT,
    st.fixed_dictionaries({"type": st.sampled_from(["image", "document"]), "source": _maybe_junk(A_SOURCE)}),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": st.sampled_from(["id0", "id1", "nope"]),
            "content": _maybe_junk(TEXT | st.lists(A_TEXT, max_size=2)),
        },
        optional={"is_error": st.booleans()},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["thinking", "redacted_thinking", "web_search_tool_result", "foo"])}
    ),
)
A_ASSISTANT_BLOCK = st.one_of(
    A_TEXT,
    st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": st.sampled_from(["id0", "id1"]), "name": NAME, "input": _maybe_junk(ARGS)}
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": TEXT, "signature": TEXT}),
)
A_MESSAGE = st.sampled_from([0, 1] * 10 + [2]).flatmap(lambda n: A_MESSAGES[n])
A_MESSAGES = (
    st.fixed_dictionaries({"role": st.just("user"), "content": WORDS | st.lists(A_USER_BLOCK, max_size=3)}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": WORDS | st.lists(A_ASSISTANT_BLOCK, max_size=3)}),
    st.fixed_dictionaries({"role": JUNK, "content": TEXT}),
)
A_TOOL = st.one_of(
    st.fixed_dictionaries({"name": NAME, "input_schema": SCHEMA}, optional={"description": TEXT}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search_20250305", "bash_20250124"]), "name": NAME}),
)
A_REQUEST = st.fixed_dictionaries(
    {"model": st.just("claude"), "messages": _maybe_junk(st.lists(A_MESSAGE, min_size=1, max_size=5))},
    optional={
        "max_tokens": _maybe_junk(st.integers(1, 200_000)),
        "system": _maybe_junk(TEXT | st.lists(A_TEXT, max_size=2)),
        "tools": _maybe_junk(st.lists(A_TOOL, max_size=3)),
        "tool_choice": _maybe_junk(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["auto", "any", "none", "tool", "bad"])}, optional={"name": NAME}
            )
        ),
        "thinking": _maybe_junk(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["enabled", "adaptive", "disabled", "x"])},
                optional={"budget_tokens": st.integers(-1, 100_000)},
            )
        ),
        "temperature": _maybe_junk(st.floats(0, 1)),
        "top_k": _maybe_junk(st.integers(1, 50)),
        "stop_sequences": _maybe_junk(st.lists(TEXT, max_size=7)),
        "metadata": JUNK,
        "context_management": JUNK,
        "stream": st.booleans(),
    },
)

# -- OpenAI requests ----------------------------------------------------------------------------------

O_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _maybe_junk(WORDS)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {
                    "url": st.sampled_from(
                        ["data:image/png;base64,AAAA", "https://example.com/x.gif", "data:text/plain,hi", ""]
                    )
                }
            ),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_audio"), "input_audio": st.fixed_dictionaries({"data": TEXT, "format": st.just("mp3")})}
    ),
    st.fixed_dictionaries(
        {"type": st.just("file"), "file": st.fixed_dictionaries({}, optional={"file_data": TEXT, "file_id": TEXT})}
    ),
    st.fixed_dictionaries({"type": st.just("mystery")}),
)
O_CALL = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["c0", "c1"]),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": NAME, "arguments": _maybe_junk(st.sampled_from(["{}", '{"a":1}', "[1]", "oops"]))}
        ),
    }
)
O_MESSAGE = st.sampled_from([0, 1, 1, 1, 2, 2, 3] * 4 + [4]).flatmap(lambda n: O_MESSAGES[n])
O_MESSAGES = (
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer"]), "content": TEXT | st.lists(O_PART, max_size=2)}
    ),
    st.fixed_dictionaries({"role": st.just("user"), "content": _maybe_junk(WORDS | st.lists(O_PART, max_size=3))}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.none() | TEXT},
        optional={"tool_calls": _maybe_junk(st.lists(O_CALL, max_size=2))},
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "tool_call_id": st.sampled_from(["c0", "c1", "c1", "zz"]), "content": TEXT}
    ),
    st.fixed_dictionaries({"role": JUNK, "content": TEXT}),
)
O_TOOL = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": NAME}, optional={"parameters": SCHEMA, "description": TEXT}),
    }
)
O_REQUEST = st.fixed_dictionaries(
    {"model": st.just("gpt"), "messages": _maybe_junk(st.lists(O_MESSAGE, min_size=1, max_size=5))},
    optional={
        "max_tokens": _maybe_junk(st.integers(1, 200_000)),
        "max_completion_tokens": _maybe_junk(st.integers(1, 200_000)),
        "tools": _maybe_junk(st.lists(O_TOOL, max_size=3)),
        "tool_choice": _maybe_junk(
            st.sampled_from(["auto", "none", "required", "bad"])
            | st.just({"type": "function", "function": {"name": "Read"}})
        ),
        "stop": _maybe_junk(TEXT | st.lists(TEXT, max_size=6)),
        "n": st.sampled_from([1, 1, 1, 1, 1, 1, 1, 1, 1, 2]),
        "reasoning_effort": _maybe_junk(st.sampled_from(["low", "medium", "high", "none", "max"])),
        "response_format": _maybe_junk(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])},
                optional={"json_schema": st.fixed_dictionaries({"schema": SCHEMA})},
            )
        ),
        "web_search_options": st.just({}),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
TARGET_OVERRIDES = st.fixed_dictionaries(
    {"max_output_tokens": st.none() | st.integers(1, 70_000), "capabilities": st.sampled_from([[], ["thinking"]])}
)


def _check_request(translator, body, overrides) -> None:
    before = copy.deepcopy(body)
    try:
        upstream = translate(translator, body, make_target(body, overrides))
    except ClientRequestError as exc:
        assert exc.message and exc.status == 400
        assert body == before
        return
    assert body == before, "request() mutated the client body"
    out = orjson.loads(upstream.body)
    assert out["contents"], "Gemini needs at least one content"
    roles = [c["role"] for c in out["contents"]]
    assert all(r in ("user", "model") for r in roles)
    assert all(a != b for a, b in itertools.pairwise(roles)), "same-role contents are merged"
    assert all(c["parts"] for c in out["contents"])
    limit = overrides["max_output_tokens"]
    generation = out.get("generationConfig", {})
    if limit is not None and "maxOutputTokens" in generation:
        assert generation["maxOutputTokens"] <= limit
    assert len(generation.get("stopSequences", ())) <= 5


@FAST
@given(A_REQUEST, TARGET_OVERRIDES)
def test_anthropic_requests_fail_only_with_client_request_error(body, overrides) -> None:
    _check_request(AnthropicToGemini(), body, overrides)


@FAST
@given(O_REQUEST, TARGET_OVERRIDES)
def test_openai_requests_fail_only_with_client_request_error(body, overrides) -> None:
    _check_request(OpenAIToGemini(clock=lambda: CREATED), body, overrides)


# -- Gemini answers -----------------------------------------------------------------------------------

PART = st.one_of(
    st.fixed_dictionaries({"text": TEXT}, optional={"thoughtSignature": st.just("c2ln")}),
    st.fixed_dictionaries({"text": TEXT, "thought": st.just(True)}),
    st.fixed_dictionaries({"functionCall": st.fixed_dictionaries({"name": NAME}, optional={"args": ARGS, "id": TEXT})}),
    st.fixed_dictionaries({"inlineData": st.just({"mimeType": "image/png", "data": "AA=="})}),
    JUNK,
)
FINISH = st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "MALFORMED_FUNCTION_CALL", "OTHER"])
USAGE = st.fixed_dictionaries(
    {"promptTokenCount": st.integers(0, 10_000)},
    optional={
        "candidatesTokenCount": st.integers(0, 1000),
        "cachedContentTokenCount": st.integers(0, 10_000),
        "thoughtsTokenCount": st.integers(0, 1000),
        "toolUsePromptTokenCount": st.integers(0, 100),
    },
)
CHUNK = st.fixed_dictionaries(
    {
        "candidates": st.lists(
            st.fixed_dictionaries(
                {"content": st.fixed_dictionaries({"parts": st.lists(PART, min_size=1, max_size=3)})},
                optional={"finishReason": FINISH},
            ),
            max_size=1,
        )
    },
    optional={"usageMetadata": USAGE, "modelVersion": st.just("gemini-x"), "responseId": st.just("r1")},
)
ODD_CHUNK = st.one_of(
    st.just({"promptFeedback": {"blockReason": "SAFETY"}}),
    st.just({"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}),
    st.just({"error": "weird"}),
    st.just([1, 2]),
)


@st.composite
def gemini_stream(draw) -> bytes:
    chunks = draw(st.lists(CHUNK, min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=5))
    if draw(st.integers(0, 3)) == 0:
        chunks.insert(draw(st.integers(0, len(chunks))), draw(ODD_CHUNK))
    frames = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
    if draw(st.integers(0, 9)) == 0:
        frames.insert(draw(st.integers(0, len(frames))), b"data: {not json\n\n")
    if draw(st.booleans()):
        frames.insert(0, b": keep-alive\n\n")
    raw = b"".join(frames)
    return raw.replace(b"\n", draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))


def _feed(translator, pieces: list[bytes]) -> bytes:
    out = [translator.response_body(p, False).body for p in pieces]
    return b"".join(out) + translator.response_body(b"", True).body


def _split(data: st.DataObject, raw: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def _streaming(client: Api, include_usage: bool = False):
    if client is Api.ANTHROPIC:
        translator = AnthropicToGemini()
        body = {"model": "c", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    else:
        translator = OpenAIToGemini(clock=lambda: CREATED)
        body = {"model": "g", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    translate(translator, body, make_target(body))
    return translator


@FAST
@given(gemini_stream(), st.data())
def test_any_gemini_stream_gives_a_valid_anthropic_stream_whatever_the_split(raw: bytes, data) -> None:
    whole = _feed(_streaming(Api.ANTHROPIC), [raw])
    check_anthropic_stream(whole)
    assert _feed(_streaming(Api.ANTHROPIC), _split(data, raw)) == whole


@FAST
@given(gemini_stream(), st.booleans(), st.data())
def test_any_gemini_stream_gives_a_valid_openai_stream_whatever_the_split(raw: bytes, usage: bool, data) -> None:
    whole = _feed(_streaming(Api.OPENAI, usage), [raw])
    check_openai_stream(whole, include_usage=usage)
    assert _feed(_streaming(Api.OPENAI, usage), _split(data, raw)) == whole


@FAST
@given(CHUNK | st.just({"promptFeedback": {"blockReason": "OTHER"}, "usageMetadata": {"promptTokenCount": 3}}))
def test_any_gemini_answer_gives_sdk_valid_messages_and_completions(answer: dict) -> None:
    raw = orjson.dumps(answer)
    for client in (Api.ANTHROPIC, Api.OPENAI):
        translator = AnthropicToGemini() if client is Api.ANTHROPIC else OpenAIToGemini(clock=lambda: CREATED)
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        translate(translator, body, make_target(body))
        result = translator.response_body(raw, True)
        parsed = json.loads(result.body)
        if client is Api.ANTHROPIC:
            anthropic.types.Message.model_validate(parsed)
        else:
            openai.types.chat.ChatCompletion.model_validate(parsed)
        assert result.usage is not None


@FAST
@given(st.binary(max_size=40) | st.just(b"[]") | st.just(b'{"error":{"code":500}}'))
def test_a_non_stream_answer_that_is_not_a_response_is_an_upstream_protocol_error(raw: bytes) -> None:
    translator = AnthropicToGemini()
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    translate(translator, body, make_target(body))
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    try:
        result = translator.response_body(raw, True)
    except UpstreamProtocolError:
        assert not isinstance(parsed, dict) or "error" in parsed
    else:
        assert isinstance(parsed, dict)
        anthropic.types.Message.model_validate(json.loads(result.body))
