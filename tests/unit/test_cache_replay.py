"""Cached answers replayed as streams, and client streams reassembled into answers
(extproc.cache.replay), held to the official SDKs: a client that accumulates the replayed stream
with the ``anthropic`` SDK (``accumulate_event``, what ``MessageStream`` runs) or the ``openai`` SDK
(``ChatCompletionStreamState``) ends up with the cached message: text, thinking and signature,
tool calls with their parsed input, stop reason, usage. Answers are the golden translator
answers (tests/golden, what the gateway really sends clients) and a few native-provider shapes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from unittest import mock

import anthropic.types
import openai.types.chat
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState

from extproc.cache import replay
from extproc.cache.replay import answer_from_sse, sse_from_answer
from extproc.translate.base import Api
from tests.unit.stream_checks import check_anthropic_stream, check_openai_stream, split_at, sse_events

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

# --- answers -----------------------------------------------------------------------------------

ANTHROPIC_NATIVE = {
    "id": "msg_01HCachedReplay7",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {
            "type": "thinking",
            "thinking": "The user wants the weather.\nCheck the docs first.",
            "signature": "EqQBCkYIBRgCKkD9sig==",
        },
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr"},
        {
            "type": "text",
            "text": "Per the manual, the unit is Celsius.",
            "citations": [
                {
                    "type": "char_location",
                    "cited_text": "Units: Celsius.",
                    "document_index": 0,
                    "document_title": "manual.txt",
                    "start_char_index": 0,
                    "end_char_index": 15,
                }
            ],
        },
        {"type": "server_tool_use", "id": "srvtoolu_01A", "name": "web_search", "input": {"query": "Paris weather"}},
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_01A",
            "content": [
                {
                    "type": "web_search_result",
                    "title": "Paris forecast",
                    "url": "https://weather.example/paris",
                    "encrypted_content": "EqgfCioIARgB",
                    "page_age": "1 hour ago",
                }
            ],
        },
        {"type": "text", "text": "Let me look that up — «Paris» 🌦\n\nOne moment."},
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {"location": "Paris, FR", "unit": "c", "days": [1, 2], "detail": {"hourly": False, "note": None}},
        },
        {"type": "tool_use", "id": "toolu_01NoArgs", "name": "ping", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 14000,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 503,
        "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        "service_tier": "standard",
    },
}

ANTHROPIC_STOP_SEQUENCE = {
    "id": "msg_01StopSeq",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "1, 2, 3, "}],
    "stop_reason": "stop_sequence",
    "stop_sequence": "4",
    "usage": {"input_tokens": 12, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
}

OPENAI_NATIVE = {
    "id": "chatcmpl-CBh3zPq1Xc9sL2",
    "object": "chat.completion",
    "created": 1756315657,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_F1xW2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris, FR","unit":"c"}'},
                    },
                    {"id": "call_G2yZ3", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_b3f1157249",
}

LONG_TEXT = "".join(f'Ligne {i}: café ✓ 😀 "quoted" \\ back\n' for i in range(400))  # ~14k chars
OPENAI_LONG = {
    "id": "chatcmpl-long",
    "object": "chat.completion",
    "created": 1756315700,
    "model": "deepseek-reasoner",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": LONG_TEXT, "reasoning_content": "Think. " * 900},
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 40, "completion_tokens": 4096, "total_tokens": 4136},
}

OPENAI_TWO_CHOICES = {
    "id": "chatcmpl-n2",
    "object": "chat.completion",
    "created": 1756315800,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Heads.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Tails.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
}


def golden_answers(api: Api) -> list[tuple[str, dict[str, Any]]]:
    """The non-streaming client answers of every golden case whose client speaks ``api``, errors aside."""
    found = []
    for path in sorted(GOLDEN.glob(f"{api.value}_*/*/client_response.json")):
        answer = orjson.loads(path.read_bytes())
        if answer.get("type") != "error" and "error" not in answer:
            found.append((f"{path.parent.parent.name}/{path.parent.name}", answer))
    return found


def golden_streams(api: Api) -> list[tuple[str, bytes]]:
    return [
        (f"{path.parent.parent.name}/{path.parent.name}", path.read_bytes())
        for path in sorted(GOLDEN.glob(f"{api.value}_*/*/client_response.sse"))
    ]


ANTHROPIC_ANSWERS = [("native", ANTHROPIC_NATIVE), ("stop_sequence", ANTHROPIC_STOP_SEQUENCE)]
ANTHROPIC_ANSWERS += golden_answers(Api.ANTHROPIC)
OPENAI_ANSWERS = [("native", OPENAI_NATIVE), ("long", OPENAI_LONG), *golden_answers(Api.OPENAI)]


def ids(cases: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in cases]


# --- what the SDKs make of a stream -----------------------------------------------------------


def anthropic_sdk_message(stream: bytes) -> anthropic.types.Message:
    """The Message the anthropic SDK's stream helper accumulates (MessageStream runs
    ``accumulate_event`` on each event; ``ping`` is not a RawMessageStreamEvent, it skips it)."""
    snapshot = None
    json_buffers: dict[int, bytes] = {}
    for _, payload in sse_events(stream):
        if payload["type"] == "ping":
            continue
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=json_buffers)
    assert snapshot is not None
    return snapshot


def openai_sdk_state(stream: bytes) -> ChatCompletionStreamState:
    state: ChatCompletionStreamState = ChatCompletionStreamState()
    for _, payload in sse_events(stream):
        if payload != "[DONE]":
            state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(payload))
    return state


SDK_ONLY = {"parsed", "parsed_arguments", "parsed_output"}  # the SDKs' own additions


def without_nulls(value: Any) -> Any:
    """Null fields dropped (an SDK model lists every optional field, set or not), and the SDKs'
    own additions; what is left must match the cached answer exactly."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None and k not in SDK_ONLY}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def openai_sdk_view(completion: dict[str, Any]) -> dict[str, Any]:
    """The SDK's snapshot numbers tool calls in an ``index`` field of its own; nothing else differs."""
    view = without_nulls(completion)
    for choice in view["choices"]:
        for call in choice["message"].get("tool_calls", []):
            call.pop("index", None)
    return view


def assert_anthropic_sdk_sees(answer: dict[str, Any], stream: bytes) -> None:
    message = anthropic_sdk_message(stream)
    assert without_nulls(message.to_dict()) == without_nulls(answer)
    # And field by field, what a client reads:
    assert message.stop_reason == answer["stop_reason"] and message.stop_sequence == answer["stop_sequence"]
    assert message.usage.to_dict() == anthropic.types.Usage.model_validate(answer["usage"]).to_dict()
    for block, cached in zip(message.content, answer["content"], strict=True):
        assert block.type == cached["type"]
        if block.type == "text":
            assert block.text == cached["text"]
        elif block.type == "thinking":
            assert (block.thinking, block.signature) == (cached["thinking"], cached["signature"])
        elif block.type in ("tool_use", "server_tool_use"):
            assert (block.id, block.name, block.input) == (cached["id"], cached["name"], cached["input"])


def assert_openai_sdk_sees(answer: dict[str, Any], stream: bytes, include_usage: bool) -> None:
    state = openai_sdk_state(stream)
    snapshot = state.current_completion_snapshot.to_dict()
    expected = dict(answer) if include_usage else {k: v for k, v in answer.items() if k != "usage"}
    assert openai_sdk_view(snapshot) == without_nulls(expected)
    if any(c["finish_reason"] in ("length", "content_filter") for c in answer["choices"]):
        return  # get_final_completion refuses those by design (LengthFinishReasonError)
    final = state.get_final_completion()
    for choice, cached in zip(final.choices, answer["choices"], strict=True):
        assert choice.finish_reason == cached["finish_reason"]
        assert choice.message.content == cached["message"]["content"]
        calls = cached["message"].get("tool_calls") or []
        assert len(choice.message.tool_calls or []) == len(calls)
        for call, cached_call in zip(choice.message.tool_calls or [], calls, strict=True):
            assert (call.id, call.function.name) == (cached_call["id"], cached_call["function"]["name"])
            assert orjson.loads(call.function.arguments) == orjson.loads(cached_call["function"]["arguments"])
    assert (final.usage.to_dict() if final.usage else None) == (answer.get("usage") if include_usage else None)


# --- replay: a cached answer as the stream the client's SDK expects -----------------------------


def test_the_native_shapes_are_what_the_sdks_call_answers() -> None:
    anthropic.types.Message.model_validate(ANTHROPIC_NATIVE)
    for completion in (OPENAI_NATIVE, OPENAI_LONG, OPENAI_TWO_CHOICES):
        openai.types.chat.ChatCompletion.model_validate(completion)


@pytest.mark.parametrize(("name", "answer"), ANTHROPIC_ANSWERS, ids=ids(ANTHROPIC_ANSWERS))
def test_an_anthropic_answer_replays_as_the_stream_the_sdk_accumulates_back(name: str, answer: dict) -> None:
    stream = sse_from_answer(Api.ANTHROPIC, answer)
    check_anthropic_stream(stream)
    assert_anthropic_sdk_sees(answer, stream)


@pytest.mark.parametrize("include_usage", [True, False], ids=["include_usage", "no_usage"])
@pytest.mark.parametrize(("name", "answer"), OPENAI_ANSWERS, ids=ids(OPENAI_ANSWERS))
def test_an_openai_answer_replays_as_the_stream_the_sdk_accumulates_back(
    name: str, answer: dict, include_usage: bool
) -> None:
    stream = sse_from_answer(Api.OPENAI, answer, include_usage=include_usage)
    check_openai_stream(stream, include_usage=include_usage)
    assert_openai_sdk_sees(answer, stream, include_usage)


def test_several_choices_replay_each_under_its_own_index() -> None:
    stream = sse_from_answer(Api.OPENAI, OPENAI_TWO_CHOICES, include_usage=True)
    assert_openai_sdk_sees(OPENAI_TWO_CHOICES, stream, include_usage=True)
    assert answer_from_sse(Api.OPENAI, stream) == OPENAI_TWO_CHOICES


def test_the_replayed_anthropic_stream_has_the_events_a_client_expects_in_order() -> None:
    events = [payload for _, payload in sse_events(sse_from_answer(Api.ANTHROPIC, ANTHROPIC_NATIVE))]
    kinds = [(e["type"], e.get("delta", {}).get("type") or e.get("content_block", {}).get("type")) for e in events]
    assert kinds == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", "thinking"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", "redacted_thinking"),
        ("content_block_stop", None),
        ("content_block_start", "text"),
        ("content_block_delta", "citations_delta"),
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("content_block_start", "server_tool_use"),
        ("content_block_delta", "input_json_delta"),
        ("content_block_stop", None),
        ("content_block_start", "web_search_tool_result"),
        ("content_block_stop", None),
        ("content_block_start", "text"),
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("content_block_start", "tool_use"),
        ("content_block_delta", "input_json_delta"),
        ("content_block_stop", None),
        ("content_block_start", "tool_use"),
        ("content_block_delta", "input_json_delta"),
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]
    start = events[0]["message"]
    assert (start["id"], start["model"], start["role"]) == (
        "msg_01HCachedReplay7",
        "claude-sonnet-4-5-20250929",
        "assistant",
    )
    assert start["usage"]["input_tokens"] == 2095 and start["usage"]["cache_read_input_tokens"] == 14000
    assert start["usage"]["output_tokens"] == 0 and start["stop_reason"] is None and start["content"] == []
    delta = events[-2]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 503


def test_the_replayed_openai_stream_sends_role_content_calls_finish_usage_done() -> None:
    chunks = check_openai_stream(sse_from_answer(Api.OPENAI, OPENAI_NATIVE, include_usage=True), include_usage=True)
    deltas = [c["choices"][0]["delta"] if c["choices"] else "usage" for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": None, "refusal": None, "annotations": []},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_F1xW2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"location":"Paris, FR","unit":"c"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "call_G2yZ3", "type": "function", "function": {"name": "ping", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
        "usage",
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"] == OPENAI_NATIVE["usage"]
    assert {(c["id"], c["created"], c["model"], c["system_fingerprint"]) for c in chunks} == {
        ("chatcmpl-CBh3zPq1Xc9sL2", 1756315657, "gpt-4.1-2025-04-14", "fp_b3f1157249")
    }


def test_without_include_usage_no_chunk_carries_usage() -> None:
    chunks = check_openai_stream(sse_from_answer(Api.OPENAI, OPENAI_NATIVE), include_usage=False)
    assert all("usage" not in chunk for chunk in chunks)


def test_long_text_is_cut_into_bounded_pieces_that_join_back() -> None:
    stream = sse_from_answer(Api.OPENAI, OPENAI_LONG)
    contents = [c["choices"][0]["delta"].get("content") for c in check_openai_stream(stream) if c["choices"]]
    pieces = [piece for piece in contents if piece]
    assert len(pieces) == -(-len(LONG_TEXT) // replay.PIECE_CHARS) > 1
    assert all(len(piece) <= replay.PIECE_CHARS for piece in pieces) and "".join(pieces) == LONG_TEXT
    assert max(len(line) for line in stream.split(b"\n")) < 64 * 1024  # fits a 64 KiB line reader


def test_a_long_tool_input_streams_in_pieces_the_sdk_parses() -> None:
    answer = copy.deepcopy(ANTHROPIC_STOP_SEQUENCE)
    answer["stop_reason"], answer["stop_sequence"] = "tool_use", None
    answer["content"] = [{"type": "tool_use", "id": "toolu_W", "name": "Write", "input": {"content": LONG_TEXT}}]
    stream = sse_from_answer(Api.ANTHROPIC, answer)
    partials = [p["delta"]["partial_json"] for _, p in sse_events(stream) if p["type"] == "content_block_delta"]
    assert len(partials) > 1
    assert anthropic_sdk_message(stream).content[0].input == {"content": LONG_TEXT}


def test_a_thinking_block_without_signature_sends_no_signature_delta() -> None:
    answer = dict(golden_answers(Api.ANTHROPIC)[0][1])
    answer["content"] = [{"type": "thinking", "thinking": "hmm", "signature": ""}, {"type": "text", "text": "ok"}]
    stream = sse_from_answer(Api.ANTHROPIC, answer)
    assert b"signature_delta" not in stream
    assert anthropic_sdk_message(stream).content[0].signature == ""


@pytest.mark.parametrize(
    ("api", "answer"),
    [
        (Api.ANTHROPIC, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}),
        (Api.ANTHROPIC, {"content": "not a list"}),
        (Api.ANTHROPIC, {"content": [{"text": "no type"}]}),
        (Api.OPENAI, {"choices": "none"}),
        (Api.OPENAI, {"id": "x", "created": 1, "model": "m", "choices": [{"message": {"content": 7}}]}),
        (Api.OPENAI, {"choices": []}),
        (Api.GEMINI, {"candidates": []}),
    ],
)
def test_something_that_is_not_an_answer_of_the_api_is_refused(api: Api, answer: dict) -> None:
    with pytest.raises(ValueError):
        sse_from_answer(api, answer)


# --- round trips: answer -> stream -> answer ------------------------------------------------------


@pytest.mark.parametrize(("name", "answer"), ANTHROPIC_ANSWERS, ids=ids(ANTHROPIC_ANSWERS))
def test_an_anthropic_answer_survives_stream_and_reassembly(name: str, answer: dict) -> None:
    assert answer_from_sse(Api.ANTHROPIC, sse_from_answer(Api.ANTHROPIC, answer)) == answer


@pytest.mark.parametrize(("name", "answer"), OPENAI_ANSWERS, ids=ids(OPENAI_ANSWERS))
def test_an_openai_answer_survives_stream_and_reassembly(name: str, answer: dict) -> None:
    assert answer_from_sse(Api.OPENAI, sse_from_answer(Api.OPENAI, answer, include_usage=True)) == answer
    without_usage = answer_from_sse(Api.OPENAI, sse_from_answer(Api.OPENAI, answer))
    assert without_usage == {k: v for k, v in answer.items() if k != "usage"}  # nothing to take it from


@given(st.text(), st.text(), st.integers(min_value=1, max_value=9))
@settings(max_examples=150, deadline=None)
def test_any_text_survives_both_apis_at_any_piece_size(text: str, thinking: str, piece_chars: int) -> None:
    anthropic_answer = copy.deepcopy(ANTHROPIC_STOP_SEQUENCE)
    anthropic_answer["content"] = [
        {"type": "thinking", "thinking": thinking, "signature": "sig"},
        {"type": "text", "text": text},
        {"type": "tool_use", "id": "toolu_1", "name": "echo", "input": {"text": text}},
    ]
    openai_answer = copy.deepcopy(OPENAI_TWO_CHOICES)
    openai_answer["choices"] = openai_answer["choices"][:1]
    message = openai_answer["choices"][0]["message"]
    message["content"], message["reasoning_content"] = text, thinking
    message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": text}}]
    with mock.patch.object(replay, "PIECE_CHARS", piece_chars):
        anthropic_stream = sse_from_answer(Api.ANTHROPIC, anthropic_answer)
        openai_stream = sse_from_answer(Api.OPENAI, openai_answer, include_usage=True)
    assert answer_from_sse(Api.ANTHROPIC, anthropic_stream) == anthropic_answer
    assert answer_from_sse(Api.OPENAI, openai_stream) == openai_answer
    assert_anthropic_sdk_sees(anthropic_answer, anthropic_stream)
    assert openai_sdk_state(openai_stream).current_completion_snapshot.choices[0].message.content == text


# --- reassembly of what the gateway streamed to clients -----------------------------------------

ANTHROPIC_STREAMS = golden_streams(Api.ANTHROPIC)
OPENAI_STREAMS = golden_streams(Api.OPENAI)


@pytest.mark.parametrize(("name", "stream"), ANTHROPIC_STREAMS, ids=ids(ANTHROPIC_STREAMS))
def test_a_gateway_anthropic_stream_reassembles_into_what_the_sdk_accumulates(name: str, stream: bytes) -> None:
    answer = answer_from_sse(Api.ANTHROPIC, stream)
    if "error" in name:
        assert answer is None  # a stream that failed is never stored
        return
    assert answer is not None
    anthropic.types.Message.model_validate(answer)
    assert without_nulls(anthropic_sdk_message(stream).to_dict()) == without_nulls(answer)
    replayed = sse_from_answer(Api.ANTHROPIC, answer)
    assert answer_from_sse(Api.ANTHROPIC, replayed) == answer


@pytest.mark.parametrize(("name", "stream"), OPENAI_STREAMS, ids=ids(OPENAI_STREAMS))
def test_a_gateway_openai_stream_reassembles_into_what_the_sdk_accumulates(name: str, stream: bytes) -> None:
    answer = answer_from_sse(Api.OPENAI, stream)
    if "error" in name:
        assert answer is None
        return
    assert answer is not None
    openai.types.chat.ChatCompletion.model_validate(answer)
    snapshot = openai_sdk_state(stream).current_completion_snapshot.to_dict()
    assert openai_sdk_view(snapshot) == without_nulls(answer)
    include_usage = "usage" in answer
    assert answer_from_sse(Api.OPENAI, sse_from_answer(Api.OPENAI, answer, include_usage=include_usage)) == answer


# --- unfinished or failed streams are never stored -------------------------------------------------


def frames(stream: bytes) -> list[bytes]:
    return [frame + b"\n\n" for frame in stream.split(b"\n\n") if frame]


@pytest.mark.parametrize(("name", "answer"), ANTHROPIC_ANSWERS[:4], ids=ids(ANTHROPIC_ANSWERS[:4]))
def test_an_anthropic_stream_cut_before_message_stop_is_not_stored(name: str, answer: dict) -> None:
    parts = frames(sse_from_answer(Api.ANTHROPIC, answer))
    assert b"message_stop" in parts[-1]
    for end in range(len(parts)):
        assert answer_from_sse(Api.ANTHROPIC, b"".join(parts[:end])) is None, end


@pytest.mark.parametrize(("name", "answer"), OPENAI_ANSWERS[:4], ids=ids(OPENAI_ANSWERS[:4]))
def test_an_openai_stream_cut_before_its_finish_reason_is_not_stored(name: str, answer: dict) -> None:
    parts = frames(sse_from_answer(Api.OPENAI, answer, include_usage=True))
    finish = next(i for i, part in enumerate(parts) if b'"finish_reason":"' in part)
    for end in range(finish + 1):
        assert answer_from_sse(Api.OPENAI, b"".join(parts[:end])) is None, end
    # A finish_reason is the end of the answer; the usage chunk and [DONE] may follow or be lost.
    without_usage = {k: v for k, v in answer.items() if k != "usage"}
    assert answer_from_sse(Api.OPENAI, b"".join(parts[: finish + 1])) == without_usage


@given(st.integers(min_value=0, max_value=1_000_000), st.sampled_from(ANTHROPIC_ANSWERS[:2] + OPENAI_ANSWERS[:1]))
def test_a_stream_cut_anywhere_is_stored_whole_or_not_at_all(cut: int, case: tuple[str, dict]) -> None:
    _, answer = case
    api = Api.OPENAI if "choices" in answer else Api.ANTHROPIC
    stream = sse_from_answer(api, answer, include_usage=True)
    result = answer_from_sse(api, stream[: cut % (len(stream) + 1)])
    assert result is None or result == answer or result == {k: v for k, v in answer.items() if k != "usage"}


def test_an_error_event_anywhere_means_nothing_is_stored() -> None:
    parts = frames(sse_from_answer(Api.ANTHROPIC, ANTHROPIC_NATIVE))
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    for at in (1, len(parts) // 2, len(parts) - 1):
        assert answer_from_sse(Api.ANTHROPIC, b"".join([*parts[:at], error, *parts[at:]])) is None
    parts = frames(sse_from_answer(Api.OPENAI, OPENAI_NATIVE, include_usage=True))
    error = b'data: {"error":{"message":"upstream failed","type":"server_error","param":null,"code":null}}\n\n'
    assert answer_from_sse(Api.OPENAI, b"".join([*parts[:3], error, b"data: [DONE]\n\n"])) is None
    assert answer_from_sse(Api.OPENAI, b"".join([*parts[:-2], error, parts[-1]])) is None


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"data: [DONE]\n\n",
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
        b'event: message_start\ndata: {"type":"message_start","message":"nope"}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n',
        b"event: message_start\ndata: {not json\n\n",
    ],
)
def test_malformed_anthropic_streams_are_not_stored(stream: bytes) -> None:
    assert answer_from_sse(Api.ANTHROPIC, stream) is None


def test_out_of_order_blocks_or_a_bad_tool_input_are_not_stored() -> None:
    good = frames(sse_from_answer(Api.ANTHROPIC, ANTHROPIC_NATIVE))
    start_at = next(i for i, part in enumerate(good) if b"content_block_start" in part)
    no_start = good[:start_at] + good[start_at + 1 :]  # its deltas and stop come with no block open
    assert answer_from_sse(Api.ANTHROPIC, b"".join(no_start)) is None
    stream = sse_from_answer(Api.ANTHROPIC, ANTHROPIC_STOP_SEQUENCE)
    truncated_input = stream.replace(
        b'"content_block":{"type":"text","text":""}}',
        b'"content_block":{"type":"tool_use","id":"t","name":"n","input":{}}}',
    ).replace(b'"type":"text_delta","text":"1, 2, 3, "', b'"type":"input_json_delta","partial_json":"{\\"a\\": 1"')
    assert b"input_json_delta" in truncated_input
    assert answer_from_sse(Api.ANTHROPIC, truncated_input) is None  # the SDK would refuse it too


@given(st.binary(max_size=400))
def test_reassembly_never_raises_on_garbage(raw: bytes) -> None:
    for api in (Api.ANTHROPIC, Api.OPENAI):
        assert answer_from_sse(api, raw) is None or isinstance(answer_from_sse(api, raw), dict)


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=6), st.integers(0, 255))
def test_reassembly_never_raises_on_a_damaged_stream(points: list[int], byte: int) -> None:
    for api, answer in ((Api.ANTHROPIC, ANTHROPIC_NATIVE), (Api.OPENAI, OPENAI_NATIVE)):
        stream = sse_from_answer(api, answer, include_usage=True)
        damaged = bytes([byte]).join(split_at(stream, [p % (len(stream) + 1) for p in points]))
        result = answer_from_sse(api, damaged)
        assert result is None or isinstance(result, dict)


# --- OpenAI Responses --------------------------------------------------------------------------


def _responses_cases():
    from tests.unit.translate.test_responses_anthropic import CASES

    return [case for case in CASES if case.status < 300 and case.streams and case.target().stream]


def _gateway_responses_stream(case) -> bytes:
    from tests.unit.translate.test_responses_anthropic import make
    from tests.unit.translating import translate

    translator = make()
    translate(translator, case.client_request, case.target())
    translator.response_headers(200, {"content-type": case.content_type()})
    return translator.response_body(case.provider_response(), True).body


_CUSTOM_CALL = {
    "type": "tool_use",
    "id": "toolu_01Patch",
    "name": "apply_patch",
    "input": {"input": "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"},
}


@pytest.mark.parametrize("stop_reason", ["end_turn", "max_tokens"])
def test_a_responses_answer_replays_as_the_stream_the_gateway_would_have_sent(stop_reason: str) -> None:
    """The JSON a Responses client got for an Anthropic message, replayed, is the very stream the
    translator writes for that message: same events, fields and sequence numbers."""
    from extproc.translate import anthropic_schema
    from extproc.translate.responses_anthropic import response_from_message
    from extproc.translate.responses_sse import ResponsesStream
    from tests.unit.translate.test_responses_anthropic import check_responses_stream

    message = {**ANTHROPIC_NATIVE, "content": [*ANTHROPIC_NATIVE["content"], _CUSTOM_CALL]}
    message["stop_reason"] = stop_reason
    custom = frozenset({"apply_patch"})
    answer, _ = response_from_message(message, 1_700_000_000, "fallback", custom)
    machine, streamed = ResponsesStream("fallback", 1_700_000_000, custom), []
    for event in anthropic_schema.events_from_message(message):
        machine.event(event, streamed)
    replayed = sse_from_answer(Api.RESPONSES, answer)
    assert sse_events(replayed) == sse_events(b"".join(streamed))
    payloads = check_responses_stream(replayed)
    assert payloads[-1]["response"] == answer
    assert {item["type"] for item in answer["output"]} == {
        "reasoning",
        "message",
        "web_search_call",
        "function_call",
        "custom_tool_call",
    }


@pytest.mark.parametrize("case", _responses_cases(), ids=lambda case: case.name)
def test_a_gateway_responses_stream_is_stored_and_replays_as_the_sdk_reads_it(case) -> None:
    from tests.unit.translate.test_responses_anthropic import check_responses_stream, sdk_client

    stream = _gateway_responses_stream(case)
    final = sse_events(stream)[-1][1]
    answer = answer_from_sse(Api.RESPONSES, stream)
    if final["type"] == "response.failed":
        assert answer is None
        return
    assert answer == final["response"]
    replayed = sse_from_answer(Api.RESPONSES, answer)
    payloads = check_responses_stream(replayed)
    assert payloads[-1] == {**final, "sequence_number": len(payloads) - 1}
    assert answer_from_sse(Api.RESPONSES, replayed) == answer
    request = {k: v for k, v in case.client_request.items() if k in ("model", "input")}
    with sdk_client(replayed, "text/event-stream").responses.stream(**request) as sdk_stream:
        for _ in sdk_stream:
            pass
        response = sdk_stream.get_final_response()
    assert [(item.id, item.type) for item in response.output] == [(i["id"], i["type"]) for i in answer["output"]]
    texts = [p["text"] for i in answer["output"] if i["type"] == "message" for p in i["content"]]
    assert response.output_text == "".join(texts)
    assert response.usage is not None and response.usage.model_dump(exclude_unset=True) == answer["usage"]


RESPONSES_NATIVE = {
    "id": "resp_68af0c1",
    "object": "response",
    "created_at": 1_756_000_000,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": "Be brief.",
    "model": "gpt-5.5-2026-01-01",
    "output": [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Think."}, {"type": "summary_text", "text": "More."}],
            "encrypted_content": "gAAAAB-opaque",
        },
        {
            "id": "fs_1",
            "type": "file_search_call",
            "status": "completed",
            "queries": ["units"],
            "results": None,
        },
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "Celsius. " + "x" * (replay.PIECE_CHARS + 10),
                    "annotations": [
                        {
                            "type": "url_citation",
                            "url": "https://a.example",
                            "title": "A",
                            "start_index": 0,
                            "end_index": 8,
                        }
                    ],
                },
                {"type": "refusal", "refusal": "Not that part."},
            ],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
    ],
    "parallel_tool_calls": True,
    "temperature": 0.0,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "usage": {
        "input_tokens": 2100,
        "input_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 0},
        "output_tokens": 40,
        "output_tokens_details": {"reasoning_tokens": 25},
        "total_tokens": 2140,
    },
}


def test_a_responses_providers_own_answer_replays_whole_with_its_usage() -> None:
    """Items the gateway's translators never write (a file search, several parts, a refusal, an
    encrypted reasoning item) replay too, and the SDK accumulates the cached response."""
    from tests.unit.translate.test_responses_anthropic import check_responses_stream, sdk_client

    replayed = sse_from_answer(Api.RESPONSES, RESPONSES_NATIVE)
    payloads = check_responses_stream(replayed)
    assert payloads[-1]["response"] == RESPONSES_NATIVE
    assert all(len(orjson.dumps(p)) < 24 * 1024 + 2048 for p in payloads[:-1])  # text in bounded pieces
    assert answer_from_sse(Api.RESPONSES, replayed) == RESPONSES_NATIVE
    with sdk_client(replayed, "text/event-stream").responses.stream(model="m", input="hi") as sdk_stream:
        for _ in sdk_stream:
            pass
        response = sdk_stream.get_final_response()
    assert response.output_text.startswith("Celsius. ")
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 25


@pytest.mark.parametrize(
    "answer",
    [
        {**RESPONSES_NATIVE, "status": "failed"},
        {**RESPONSES_NATIVE, "status": "in_progress"},
        {**RESPONSES_NATIVE, "output": None},
        {**RESPONSES_NATIVE, "object": "chat.completion"},
        {**RESPONSES_NATIVE, "output": [{"id": "x"}]},
        ANTHROPIC_NATIVE,
    ],
)
def test_something_that_is_not_a_finished_responses_answer_is_refused(answer: dict) -> None:
    with pytest.raises(ValueError):
        sse_from_answer(Api.RESPONSES, answer)


def test_a_responses_stream_that_failed_or_was_cut_is_not_stored() -> None:
    replayed = sse_from_answer(Api.RESPONSES, RESPONSES_NATIVE)
    end = replayed.rindex(b"event: response.completed")
    assert answer_from_sse(Api.RESPONSES, replayed[:end]) is None
    failed = replayed[:end] + b'event: response.failed\ndata: {"type":"response.failed","response":{}}\n\n'
    assert answer_from_sse(Api.RESPONSES, failed) is None
    error = b'event: error\ndata: {"type":"error","message":"boom"}\n\n'
    assert answer_from_sse(Api.RESPONSES, error + replayed) is None
    # An item streamed that the final response does not hold: not the answer the client saw.
    frames = []
    for name, payload in sse_events(replayed):
        if payload["type"] == "response.output_item.done" and payload["item"]["type"] == "function_call":
            payload = {**payload, "item": {**payload["item"], "arguments": "{}"}}
        frames.append(f"event: {name}\ndata: {orjson.dumps(payload).decode()}\n\n".encode())
    assert answer_from_sse(Api.RESPONSES, b"".join(frames)) is None


@given(st.lists(st.integers(0, 20_000), max_size=10), st.integers(0, 255))
@settings(max_examples=60, deadline=None)
def test_a_damaged_responses_stream_never_raises(points: list[int], byte: int) -> None:
    raw = bytearray(sse_from_answer(Api.RESPONSES, RESPONSES_NATIVE))
    for point in points:
        if point < len(raw):
            raw[point] = byte
    answer = answer_from_sse(Api.RESPONSES, bytes(raw))
    assert answer is None or isinstance(answer, dict)
