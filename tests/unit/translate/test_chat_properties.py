"""Hypothesis properties of the Anthropic <-> OpenAI translators.

- request(): on any structured request (valid or with garbage in any field) only
  ClientRequestError escapes, the output is a JSON object, and the input is never mutated.
- Streams: any well-formed provider stream, split anywhere, yields a client stream that keeps the
  Anthropic event order (or OpenAI chunk shape), validates against the official SDK types, and
  loses no text, reasoning or tool-argument fragment.
- Whole responses validate against ``anthropic.types.Message`` / ``openai...ChatCompletion``.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.base import ClientRequestError, Target, UpstreamProtocolError
from extproc.translate.openai_anthropic import OpenAIToAnthropic
from tests.unit.golden_cases import CREATED
from tests.unit.stream_checks import (
    accumulate_anthropic,
    accumulate_openai,
    check_anthropic_stream,
    check_openai_stream,
    split_at,
)
from tests.unit.translating import translate

# The request strategies are big; hypothesis warns when it prints their repr.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

text = st.text(max_size=12)
word = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)
leaf = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False, width=32) | text
any_json = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the well-formed value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, any_json)


targets = st.builds(
    Target,
    model=word,
    base_path=st.sampled_from(["", "/v1", "/api/v1"]),
    stream=st.booleans(),
    max_output_tokens=st.none() | st.integers(1, 200_000),
    capabilities=st.frozensets(st.sampled_from(["tools", "thinking", "vision", "max_tokens"])),
)

# --- requests --------------------------------------------------------------------------------


def requests(garbage: bool) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """(Anthropic requests, OpenAI requests): well-formed ones, or with any JSON at all sometimes
    standing in for a field (``garbage``)."""

    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(strategy, strategy, strategy, any_json) if garbage else strategy

    # Anthropic
    a_text = st.fixed_dictionaries(
        {"type": st.just("text"), "text": text}, optional={"cache_control": st.just({"type": "ephemeral"})}
    )
    a_source = st.one_of(
        st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.just("image/png"), "data": word}),
        st.fixed_dictionaries({"type": st.just("url"), "url": st.just("https://x/y.png")}),
    )
    a_image = st.fixed_dictionaries({"type": st.just("image"), "source": maybe(a_source)})
    a_document = st.fixed_dictionaries(
        {
            "type": st.just("document"),
            "source": maybe(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("text"), "media_type": st.just("text/plain"), "data": text}),
                    st.fixed_dictionaries(
                        {"type": st.just("base64"), "media_type": st.just("application/pdf"), "data": word}
                    ),
                    st.fixed_dictionaries({"type": st.just("url"), "url": st.just("https://x/d.pdf")}),
                    st.fixed_dictionaries(
                        {"type": st.just("content"), "content": st.lists(a_text | a_image, max_size=2)}
                    ),
                )
            ),
        },
        optional={"title": text},
    )
    a_tool_use = st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": word, "name": word, "input": maybe(st.dictionaries(word, leaf, max_size=3))}
    )
    a_tool_result = st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": maybe(word)},
        optional={"content": maybe(text | st.lists(a_text | a_image, max_size=3)), "is_error": st.booleans()},
    )
    a_thinking = st.fixed_dictionaries(
        {"type": st.sampled_from(["thinking", "redacted_thinking"]), "thinking": text, "signature": word}
    )
    user_block = st.one_of(a_text, a_image, a_document, a_tool_result)
    assistant_block = st.one_of(a_text, a_tool_use, a_thinking)
    if garbage:
        odd = st.fixed_dictionaries({"type": st.sampled_from(["server_tool_use", "foo"])}) | any_json
        user_block = user_block | odd | a_tool_use
        assistant_block = assistant_block | odd | a_image
    a_message = st.one_of(
        st.fixed_dictionaries(
            {"role": maybe(st.just("user")), "content": maybe(text | st.lists(user_block, max_size=4))}
        ),
        st.fixed_dictionaries(
            {"role": maybe(st.just("assistant")), "content": maybe(text | st.lists(assistant_block, max_size=4))}
        ),
    )
    a_tool = st.one_of(
        st.fixed_dictionaries(
            {"name": word, "input_schema": maybe(st.just({"type": "object", "properties": {}}))},
            optional={"description": text, "cache_control": st.just({"type": "ephemeral"})},
        ),
        st.fixed_dictionaries({"type": st.just("web_search_20250305"), "name": st.just("web_search")}),
    )
    anthropic_requests = st.fixed_dictionaries(
        {"messages": maybe(st.lists(a_message, min_size=1, max_size=5)), "max_tokens": maybe(st.integers(1, 200_000))},
        optional={
            "model": word,
            "system": maybe(text | st.lists(a_text, max_size=3)),
            "tools": maybe(st.lists(a_tool, max_size=4)),
            "tool_choice": maybe(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["auto", "any", "none", "tool"]), "name": word},
                    optional={"disable_parallel_tool_use": st.booleans()},
                )
            ),
            "thinking": maybe(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": st.integers(1024, 64000)}),
                    st.just({"type": "adaptive"}),
                    st.just({"type": "disabled"}),
                )
            ),
            "output_config": maybe(
                st.fixed_dictionaries({"effort": st.sampled_from(["low", "medium", "high", "max"])})
            ),
            "temperature": maybe(st.floats(0, 1)),
            "top_p": maybe(st.floats(0, 1)),
            "top_k": st.integers(0, 100),
            "stop_sequences": maybe(st.lists(text, max_size=3)),
            "metadata": maybe(st.fixed_dictionaries({"user_id": text})),
            "stream": st.booleans(),
            "context_management": any_json,
            "betas": any_json,
            "service_tier": any_json,
            "container": any_json,
            "mcp_servers": any_json,
        },
    )

    # OpenAI
    o_text = st.fixed_dictionaries({"type": st.just("text"), "text": text})
    urls = ["https://x/a.png", "data:image/png;base64,AAAA", "data:image/webp;base64,AAAA"]
    o_image = st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": maybe(st.fixed_dictionaries({"url": st.sampled_from(urls)}))}
    )
    o_file = st.fixed_dictionaries(
        {"type": st.just("file"), "file": st.just({"filename": "a.pdf", "file_data": "data:application/pdf;base64,JV"})}
    )
    o_part = st.one_of(o_text, o_image, o_file)
    if garbage:
        o_part = o_part | st.fixed_dictionaries({"type": st.sampled_from(["file", "input_audio", "x"])}) | any_json
    o_call = st.fixed_dictionaries(
        {
            "id": maybe(word),
            "type": st.just("function"),
            "function": maybe(
                st.fixed_dictionaries({"name": word, "arguments": st.sampled_from(["{}", '{"a":1}', "", "{x"])})
            ),
        }
    )
    o_message = st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "developer"]), "content": maybe(text | st.lists(o_text, max_size=3))}
        ),
        st.fixed_dictionaries({"role": st.just("user"), "content": maybe(text | st.lists(o_part, max_size=3))}),
        st.fixed_dictionaries(
            {"role": st.just("assistant")},
            optional={"content": maybe(st.none() | text), "tool_calls": maybe(st.lists(o_call, max_size=3))},
        ),
        st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": maybe(word), "content": maybe(text)}),
    )
    if garbage:
        o_message = o_message | st.fixed_dictionaries({"role": maybe(word), "content": text})
    o_tool = st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": maybe(
                st.fixed_dictionaries(
                    {"name": word}, optional={"parameters": maybe(st.just({"type": "object", "properties": {}}))}
                )
            ),
        }
    )
    efforts = ["none", "minimal", "low", "medium", "high", "xhigh"]
    choices = st.sampled_from(["auto", "none", "required"]) | st.just({"type": "function", "function": {"name": "a"}})
    openai_requests = st.fixed_dictionaries(
        {"messages": maybe(st.lists(o_message, min_size=1, max_size=6))},
        optional={
            "model": word,
            "tools": maybe(st.lists(o_tool, max_size=3)),
            "tool_choice": maybe(choices),
            "parallel_tool_calls": st.booleans(),
            "reasoning_effort": maybe(st.sampled_from(efforts)),
            "max_tokens": maybe(st.integers(1, 100_000)),
            "max_completion_tokens": maybe(st.integers(1, 100_000)),
            "temperature": maybe(st.floats(0, 2)),
            "top_p": maybe(st.floats(0, 1)),
            "stop": maybe(text | st.lists(text, max_size=4)),
            "n": maybe(st.just(1)),
            "user": text,
            "response_format": maybe(st.sampled_from([{"type": "text"}, {"type": "json_object"}])),
            "stream_options": maybe(st.just({"include_usage": True})),
            "seed": maybe(st.integers(0, 2**31)),
            "logit_bias": any_json,
        },
    )
    return anthropic_requests, openai_requests


VALID_ANTHROPIC, VALID_OPENAI = requests(garbage=False)
NOTHING_TO_SEND = "messages: no user or assistant message"
UNPAIRED = "answers no earlier tool"
ODD_ANTHROPIC, ODD_OPENAI = requests(garbage=True)
anthropic_requests = st.one_of(VALID_ANTHROPIC, ODD_ANTHROPIC)
openai_requests = st.one_of(VALID_OPENAI, ODD_OPENAI)


@settings(max_examples=200, deadline=None)
@given(request=anthropic_requests, target=targets)
def test_anthropic_request_translation_only_raises_client_errors(request: dict[str, Any], target: Target) -> None:
    snapshot = orjson.dumps(request)
    try:
        upstream = translate(AnthropicToOpenAI(), request, target)
    except ClientRequestError as exc:
        assert exc.message and exc.status == 400
    else:
        body = orjson.loads(upstream.body)
        assert body["model"] == target.model and isinstance(body["messages"], list)
        assert upstream.path == target.base_path + "/chat/completions"
        for message in body["messages"]:
            assert message["role"] in ("system", "user", "assistant", "tool")
    assert orjson.dumps(request) == snapshot


@settings(max_examples=200, deadline=None)
@given(request=openai_requests, target=targets)
def test_openai_request_translation_only_raises_client_errors(request: dict[str, Any], target: Target) -> None:
    snapshot = orjson.dumps(request)
    try:
        upstream = translate(OpenAIToAnthropic(clock=lambda: CREATED), request, target)
    except ClientRequestError as exc:
        assert exc.message and exc.status == 400
    else:
        body = orjson.loads(upstream.body)
        assert body["messages"] and body["max_tokens"] >= 1
        roles = [m["role"] for m in body["messages"]]
        assert all(a != b for a, b in itertools.pairwise(roles)), "same-role messages merge"
        for message in body["messages"]:
            assert message["content"], "Anthropic refuses empty messages"
            for block in message["content"]:
                assert block["type"] != "text" or block["text"].strip()
        if "thinking" in body:
            assert body["thinking"]["budget_tokens"] < body["max_tokens"]
            assert "temperature" not in body
    assert orjson.dumps(request) == snapshot


@settings(max_examples=100, deadline=None)
@given(anthropic_request=VALID_ANTHROPIC, openai_request=VALID_OPENAI, target=targets)
def test_well_formed_requests_translate(
    anthropic_request: dict[str, Any], openai_request: dict[str, Any], target: Target
) -> None:
    for translator, request in ((AnthropicToOpenAI(), anthropic_request), (OpenAIToAnthropic(), openai_request)):
        try:
            translate(translator, request, target)
        except ClientRequestError as exc:
            # Only system messages or nothing but whitespace; or a tool result answering a call the
            # strategy did not make (it does not pair them).
            assert exc.message.startswith(NOTHING_TO_SEND) or UNPAIRED in exc.message, exc.message


@settings(max_examples=150, deadline=None)
@given(body=any_json)
def test_any_json_body_only_raises_client_errors(body: Any) -> None:
    for translator in (AnthropicToOpenAI(), OpenAIToAnthropic()):
        with contextlib.suppress(ClientRequestError):
            translate(translator, body, Target(model="m"))


# --- OpenAI stream -> Anthropic stream ------------------------------------------------------

piece = st.text(min_size=1, max_size=6)
openai_actions = st.lists(
    st.one_of(
        st.tuples(st.just("text"), piece),
        st.tuples(st.just("reasoning"), piece),
        st.tuples(st.just("tool"), word, st.lists(piece, max_size=4)),
    ),
    max_size=8,
)


def _openai_sse(actions: list[tuple[Any, ...]], finish: Any, usage: bool, done: bool, error_at: int | None) -> bytes:
    frames: list[dict[str, Any]] = []
    base = {"id": "chatcmpl-P", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def add(delta: dict[str, Any], finish_reason: Any = None) -> None:
        frames.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    add({"role": "assistant", "content": ""})
    tools = 0
    for action in actions:
        if action[0] == "text":
            add({"content": action[1]})
        elif action[0] == "reasoning":
            add({"reasoning_content": action[1]})
        else:
            _, name, fragments = action
            head = {
                "index": tools,
                "id": f"call_{tools}",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            add({"tool_calls": [head]})
            for fragment in fragments:
                add({"tool_calls": [{"index": tools, "function": {"arguments": fragment}}]})
            tools += 1
    if finish is not None:
        add({}, finish)
    if usage:
        frames.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    if error_at is not None:
        frames.insert(min(error_at, len(frames)), {"error": {"message": "boom", "type": "server_error"}})
    raw = b"".join(b"data: " + orjson.dumps(f) + b"\n\n" for f in frames)
    return raw + (b"data: [DONE]\n\n" if done else b"")


def _expected_blocks(actions: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
    blocks: list[tuple[str, str]] = []
    for action in actions:
        kind = {"text": "text", "reasoning": "thinking"}.get(action[0], "tool_use")
        if kind != "tool_use" and blocks and blocks[-1][0] == kind:
            blocks[-1] = (kind, blocks[-1][1] + action[1])
        else:
            blocks.append((kind, action[1] if kind != "tool_use" else "".join(action[2])))
    return blocks


def _feed(translator: Any, raw: bytes, points: list[int]) -> tuple[bytes, list[Any]]:
    pieces = split_at(raw, points)
    body, usages = b"", []
    for n, chunk in enumerate(pieces):
        result = translator.response_body(chunk, n == len(pieces) - 1)
        body += result.body
        if result.usage is not None:
            usages.append(result.usage)
    return body, usages


@settings(max_examples=150, deadline=None)
@given(
    actions=openai_actions,
    finish=st.sampled_from([None, "stop", "length", "tool_calls", "content_filter"]),
    usage=st.booleans(),
    done=st.booleans(),
    error_at=st.none() | st.integers(0, 12),
    crlf=st.booleans(),
    points=st.lists(st.integers(0, 4000), max_size=12),
)
def test_openai_stream_becomes_a_well_ordered_anthropic_stream(
    actions: list[tuple[Any, ...]],
    finish: Any,
    usage: bool,
    done: bool,
    error_at: int | None,
    crlf: bool,
    points: list[int],
) -> None:
    translator = AnthropicToOpenAI()
    translate(
        translator, {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, Target(model="m", stream=True)
    )
    translator.response_headers(200, {"content-type": "text/event-stream"})
    raw = _openai_sse(actions, finish, usage, done, error_at)
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    body, usages = _feed(translator, raw, points)
    payloads = check_anthropic_stream(body)
    assert len(usages) <= 1
    if error_at is not None:
        assert body.rstrip().endswith(b'"message":"boom"}}') and not usages
        return
    message = accumulate_anthropic(payloads)
    got = [(b["type"], b.get("text", b.get("thinking", b.get("partial_json", "")))) for b in message["content"]]
    assert got == _expected_blocks(actions)
    assert all(b["signature"] == "" for b in message["content"] if b["type"] == "thinking")
    assert (len(usages) == 1) is usage
    if any(a[0] == "tool" for a in actions) and finish in (None, "stop", "tool_calls"):
        assert message["stop_reason"] == "tool_use"


# --- Anthropic stream -> OpenAI stream ------------------------------------------------------

anthropic_blocks = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.lists(piece, max_size=3)),
        st.tuples(st.just("thinking"), st.lists(piece, max_size=3)),
        st.tuples(st.just("tool_use"), st.lists(piece, max_size=3)),
        st.tuples(st.just("redacted_thinking"), st.just([])),
    ),
    max_size=6,
)


def _anthropic_sse(
    blocks: list[tuple[str, list[str]]], stop_reason: str, cut: int | None, error_at: int | None
) -> bytes:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {"id": "msg_Q", "model": "c", "usage": {"input_tokens": 7, "output_tokens": 1}},
        },
        {"type": "ping"},
    ]
    tools = 0
    for index, (kind, pieces) in enumerate(blocks):
        if kind == "tool_use":
            start: dict[str, Any] = {"type": "tool_use", "id": f"toolu_{tools}", "name": "f", "input": {}}
            tools += 1
        elif kind == "redacted_thinking":
            start = {"type": "redacted_thinking", "data": "x"}
        else:
            start = {"type": kind, kind: ""}
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        for p in pieces:
            delta = {
                "text": {"type": "text_delta", "text": p},
                "thinking": {"type": "thinking_delta", "thinking": p},
                "tool_use": {"type": "input_json_delta", "partial_json": p},
            }[kind]
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        if kind == "thinking":
            events.append(
                {"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": "s"}}
            )
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 5}})
    events.append({"type": "message_stop"})
    if cut is not None:
        events = events[: max(cut, 1)]
    if error_at is not None:
        events.insert(
            min(error_at, len(events)), {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
        )
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


@settings(max_examples=150, deadline=None)
@given(
    blocks=anthropic_blocks,
    stop_reason=st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal"]),
    include_usage=st.booleans(),
    cut=st.none() | st.integers(1, 20),
    error_at=st.none() | st.integers(0, 20),
    points=st.lists(st.integers(0, 4000), max_size=12),
)
def test_anthropic_stream_becomes_valid_openai_chunks(
    blocks: list[tuple[str, list[str]]],
    stop_reason: str,
    include_usage: bool,
    cut: int | None,
    error_at: int | None,
    points: list[int],
) -> None:
    translator = OpenAIToAnthropic(clock=lambda: CREATED)
    request = {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": include_usage}}
    translate(translator, request, Target(model="m", stream=True))
    translator.response_headers(200, {"content-type": "text/event-stream"})
    body, usages = _feed(translator, _anthropic_sse(blocks, stop_reason, cut, error_at), points)
    chunks = check_openai_stream(body)
    assert len(usages) <= 1
    if error_at is not None or cut is not None:
        return  # still well-formed (checked above); content is a prefix
    result = accumulate_openai(chunks)
    assert result["content"] == "\n\n".join(t for k, ps in blocks if k == "text" and (t := "".join(ps)))
    assert result["reasoning"] == "\n\n".join(t for k, ps in blocks if k == "thinking" and (t := "".join(ps)))
    tool_args = ["".join(ps) for k, ps in blocks if k == "tool_use"]
    assert [result["tools"][i]["arguments"] for i in sorted(result["tools"])] == tool_args
    assert (result["usage"] is not None) is include_usage
    assert len(usages) == 1


# --- whole responses -------------------------------------------------------------------------

o_tool_call = st.fixed_dictionaries(
    {
        "id": maybe(word),
        "type": st.just("function"),
        "function": maybe(
            st.fixed_dictionaries(
                {"name": maybe(word), "arguments": maybe(st.sampled_from(["{}", '{"a":[1]}', "", "[1]", "{"]))}
            )
        ),
    }
)
completions = st.fixed_dictionaries(
    {
        "id": maybe(word),
        "model": maybe(word),
        "choices": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "message": maybe(
                            st.fixed_dictionaries(
                                {"role": st.just("assistant")},
                                optional={
                                    "content": maybe(st.none() | text),
                                    "reasoning_content": maybe(text),
                                    "refusal": maybe(st.none() | text),
                                    "tool_calls": maybe(st.lists(o_tool_call, max_size=3)),
                                },
                            )
                        ),
                        "finish_reason": maybe(st.sampled_from(["stop", "length", "tool_calls", "content_filter"])),
                    }
                ),
                min_size=1,
                max_size=2,
            )
        ),
    },
    optional={
        "usage": maybe(
            st.fixed_dictionaries(
                {"prompt_tokens": maybe(st.integers(0, 10**6)), "completion_tokens": maybe(st.integers(0, 10**6))}
            )
        )
    },
)


@settings(max_examples=150, deadline=None)
@given(completion=completions)
def test_any_completion_becomes_a_valid_anthropic_message_or_a_protocol_error(completion: dict[str, Any]) -> None:
    translator = AnthropicToOpenAI()
    translate(translator, {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, Target(model="m"))
    try:
        body = translator.response_body(orjson.dumps(completion), True).body
    except UpstreamProtocolError:
        return
    anthropic.types.Message.model_validate_json(body)


a_content_block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(text)}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": maybe(text), "signature": word}),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": maybe(word),
            "name": maybe(word),
            "input": maybe(st.dictionaries(word, leaf, max_size=2)),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["redacted_thinking", "server_tool_use", "new_kind"])}),
    any_json,
)
messages = st.fixed_dictionaries(
    {
        "id": maybe(word),
        "type": st.just("message"),
        "model": maybe(word),
        "content": maybe(st.lists(a_content_block, max_size=4)),
        "stop_reason": maybe(
            st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "pause_turn"])
        ),
        "usage": maybe(
            st.fixed_dictionaries(
                {"input_tokens": maybe(st.integers(0, 10**6)), "output_tokens": maybe(st.integers(0, 10**6))}
            )
        ),
    }
)


@settings(max_examples=150, deadline=None)
@given(message=messages, stream=st.booleans())
def test_any_message_becomes_a_valid_chat_completion_or_a_protocol_error(message: dict[str, Any], stream: bool) -> None:
    translator = OpenAIToAnthropic(clock=lambda: CREATED)
    translate(translator, {"messages": [{"role": "user", "content": "x"}]}, Target(model="m", stream=stream))
    translator.response_headers(200, {"content-type": "application/json"})
    try:
        body = translator.response_body(orjson.dumps(message), True).body
    except UpstreamProtocolError:
        assert not stream, "a stream client gets an error frame, not an exception"
        return
    if stream:
        check_openai_stream(body)
    else:
        openai.types.chat.ChatCompletion.model_validate_json(body)
