"""The response cache on the decision hop (extproc.cache.answers through extproc.hop): a policy
that caches, a miss that carries its store instruction, /store keeping the answer, the hit that
follows (JSON and replayed stream), and what bypasses the cache."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from ccr.v1.contract import CACHE_CAP_KEY, CACHE_CLUSTER_KEY, CACHE_LABEL, CACHE_SAVED_LABEL, CACHE_STORE_KEY
from control_plane.policy import load_policy
from extproc import hop
from extproc.cache.answers import store_answer
from extproc.cache.replay import sse_from_answer
from extproc.cache.store import LocalLruStore
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api
from tests.unit.stream_checks import sse_events
from tests.unit.test_hop import parse

POLICY = """
providers:
  - {name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", models: [claude-sonnet-4-5]}
router: {default: "ant,claude-sonnet-4-5"}
cache: {ttl: 10m}
"""
ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "hello there"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 3},
}


def state() -> GatewayState:
    gateway = GatewayState(cache=LocalLruStore(1 << 20))
    gateway.table = compile_policy(load_policy(POLICY, "gw.yaml").to_proto("1"), environ={})
    gateway.hop_cluster = "ccr_hop_0"
    return gateway


def ask(gateway: GatewayState, *, stream: bool = False, temperature: float | None = 0, headers: dict | None = None):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
    answer = hop.decide(
        gateway, "POST", "/v1/messages", {"content-type": "application/json", **(headers or {})}, orjson.dumps(body)
    )
    if isinstance(answer, hop.Pending):
        answer = asyncio.run(answer.answer)
    return parse(answer)


def store_from(ops: list) -> str:
    return next(value for op, name, value in ops if op == "label" and name == CACHE_STORE_KEY)


def test_a_miss_goes_on_with_its_store_instruction_and_the_next_request_is_a_hit() -> None:
    gateway = state()
    action, ops, _ = ask(gateway)
    assert action == "forward"
    labels = {name: value for op, name, value in ops if op == "label"}
    assert labels[CACHE_LABEL] == "miss" and labels[CACHE_CLUSTER_KEY] == "ccr_hop_0"
    assert int(labels[CACHE_CAP_KEY]) == 1 << 20  # the default max_entry_bytes (1MiB)
    assert ("answer", "x-ccr-cache", "miss") in ops and ("remove", "accept-encoding", "") in ops
    assert asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(ANSWER))
    )
    action, ops, payload = ask(gateway)
    assert action == "reply" and ("header", "x-ccr-cache", "hit") in ops
    assert orjson.loads(payload) == ANSWER
    assert ("label", CACHE_LABEL, "hit") in ops


def test_a_streamed_request_is_answered_from_the_cache_as_a_stream() -> None:
    gateway = state()
    _, ops, _ = ask(gateway, stream=True)
    assert asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(ANSWER))
    )
    action, ops, payload = ask(gateway, stream=True)
    assert action == "reply" and ("header", "content-type", "text/event-stream") in ops
    assert payload.startswith(b"event: message_start") and b"hello there" in payload and b"message_stop" in payload


def test_only_complete_streams_and_json_answers_are_stored() -> None:
    gateway = state()
    _, ops, _ = ask(gateway)
    token = store_from(ops)
    assert not asyncio.run(
        store_answer(
            gateway.cache, gateway.flights, token, 200, "text/event-stream", b"event: message_start\ndata: {}\n\n"
        )
    )
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert not asyncio.run(
        store_answer(gateway.cache, gateway.flights, token, 200, "application/json", orjson.dumps(error))
    )
    assert not asyncio.run(
        store_answer(gateway.cache, gateway.flights, "not a token", 200, "application/json", orjson.dumps(ANSWER))
    )
    assert ask(gateway)[0] == "forward"  # nothing was stored


@pytest.mark.parametrize(
    ("temperature", "headers", "expected"),
    [
        (None, {}, "bypass"),
        (0.7, {}, "bypass"),
        (0, {"cache-control": "no-store"}, "bypass"),
        (0, {"cache-control": "no-cache"}, "store"),
    ],
)
def test_what_may_not_use_the_cache_says_so(temperature, headers, expected) -> None:
    gateway = state()
    _, ops, _ = ask(gateway)
    asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(ANSWER))
    )
    action, ops, _ = ask(gateway, temperature=temperature, headers=headers)
    assert action == "forward" and ("answer", "x-ccr-cache", expected) in ops
    assert (CACHE_STORE_KEY in {name for op, name, _ in ops if op == "label"}) == (expected == "store")


def test_a_policy_without_a_cache_adds_nothing() -> None:
    gateway = state()
    gateway.table = compile_policy(load_policy(POLICY.replace("cache: {ttl: 10m}\n", ""), "gw.yaml").to_proto("1"), {})
    action, ops, _ = ask(gateway)
    assert action == "forward" and not any(name == "x-ccr-cache" for _, name, _ in ops)


def test_a_store_token_names_the_key_ttl_and_who_answered() -> None:
    _, ops, _ = ask(state())
    key, ttl_s, api, provider, model, flight_id = orjson.loads(base64.urlsafe_b64decode(store_from(ops)))
    assert (len(key), ttl_s, api, provider, model) == (64, 600.0, "anthropic", "ant", "claude-sonnet-4-5")
    assert len(flight_id) == 16  # the miss leads the flight of its key: its /store ends it


def test_anthropic_beta_flags_are_part_of_the_key_in_any_order() -> None:
    gateway = state()
    _, ops, _ = ask(gateway, headers={"anthropic-beta": "a-1,b-2"})
    asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(ANSWER))
    )
    assert ask(gateway, headers={"anthropic-beta": "b-2, a-1"})[0] == "reply"  # the same flags
    assert ask(gateway, headers={"anthropic-beta": "a-1"})[0] == "forward"  # other flags, another answer
    assert ask(gateway)[0] == "forward"


@pytest.mark.parametrize("include_usage", [True, False])
def test_an_openai_stream_is_stored_only_with_its_usage(include_usage: bool) -> None:
    """A hit must carry the original usage: a stream that never had it (no include_usage) is not
    kept, rather than answered later without usage, or with an invented one."""
    from extproc.cache.replay import sse_from_answer
    from extproc.translate.base import Api

    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    raw = sse_from_answer(Api.OPENAI, answer, include_usage=include_usage)
    store = LocalLruStore(1 << 20)
    token = base64.urlsafe_b64encode(orjson.dumps(["k" * 64, 60.0, "openai", "oai", "gpt-4o", ""])).decode()
    assert asyncio.run(store_answer(store, None, token, 200, "text/event-stream", raw)) is include_usage
    assert ("k" * 64 in store) is include_usage


# --- OpenAI Responses ---------------------------------------------------------------------------

RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1_700_000_000,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "model": "claude-sonnet-4-5",
    "output": [
        {
            "id": "msg_1_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hello there", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 300,
        "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 50},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 303,
    },
}


def ask_responses(gateway: GatewayState, *, stream: bool = False, **fields):
    """A deterministic Responses request, ``store: false`` as the Codex CLI sends it (a request
    the gateway keeps never uses the cache: see the test below)."""
    body = {"model": "claude-sonnet-4-5", "input": "hi", "temperature": 0, "store": False, **fields}
    body = {name: value for name, value in body.items() if value is not None}
    if stream:
        body["stream"] = True
    headers = {"content-type": "application/json", "authorization": "Bearer sk-anything"}
    answer = hop.decide(gateway, "POST", "/v1/responses", headers, orjson.dumps(body))
    if isinstance(answer, hop.Pending):
        answer = asyncio.run(answer.answer)
    return parse(answer)


def test_a_responses_request_is_cached_like_a_chat_request() -> None:
    """A miss carries the store instruction; its JSON answer is a hit after, as JSON or replayed as
    the typed Responses events, with the original usage; what the Codex CLI changes on every
    request (its session and turn ids) does not change the key."""
    gateway = state()
    action, ops, _ = ask_responses(gateway, prompt_cache_key="session-1", client_metadata={"turn_id": "1"})
    assert action == "forward" and ("answer", "x-ccr-cache", "miss") in ops
    _, _, api, *_ = orjson.loads(base64.urlsafe_b64decode(store_from(ops)))
    assert api == "responses"
    assert asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(RESPONSE))
    )
    action, ops, payload = ask_responses(
        gateway, prompt_cache_key="session-2", client_metadata={"turn_id": "9"}, user="u", metadata={"a": "b"}
    )
    assert action == "reply" and ("header", "x-ccr-cache", "hit") in ops
    assert orjson.loads(payload) == RESPONSE
    # The saved usage in Anthropic's meaning: 50 uncached input, 3 output, 200 read, 50 written.
    assert ("label", CACHE_SAVED_LABEL, "50,3,200,50") in ops
    action, ops, payload = ask_responses(gateway, stream=True)
    assert action == "reply" and ("header", "content-type", "text/event-stream") in ops
    events = sse_events(payload)
    assert [name for name, _ in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1][1]["response"] == RESPONSE
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    # What changes the answer changes the key: a miss.
    assert ask_responses(gateway, include=["reasoning.encrypted_content"])[0] == "forward"
    assert ask_responses(gateway, instructions="Be brief.")[0] == "forward"


def test_a_streamed_responses_answer_is_stored_whole_and_a_failed_one_never() -> None:
    gateway = state()
    _, ops, _ = ask_responses(gateway, stream=True)
    stream = sse_from_answer(Api.RESPONSES, RESPONSE)
    failed = stream[: stream.rindex(b"event: response.completed")]
    failed += b'event: response.failed\ndata: {"type":"response.failed","response":{}}\n\n'
    assert not asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "text/event-stream", failed)
    )
    _, ops, _ = ask_responses(gateway)  # still a miss
    unfinished = orjson.dumps({**RESPONSE, "status": "in_progress"})
    assert not asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", unfinished)
    )
    _, ops, _ = ask_responses(gateway, stream=True)
    assert asyncio.run(store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "text/event-stream", stream))
    action, _, payload = ask_responses(gateway)
    assert action == "reply" and orjson.loads(payload) == RESPONSE


def test_a_responses_request_without_temperature_zero_bypasses_a_deterministic_cache() -> None:
    """The Codex CLI sends no temperature (the API's default is 1): cached under ``when: always``."""
    action, ops, _ = ask_responses(state(), temperature=None)
    assert action == "forward" and ("answer", "x-ccr-cache", "bypass") in ops


@pytest.mark.parametrize(("store", "kept"), [(None, True), (True, True), (False, False)])
def test_a_responses_request_the_gateway_keeps_never_uses_the_cache(store: bool | None, kept: bool) -> None:
    """With stored responses on (the policy's default), a request with store not false gets its own
    stored response (readable and continued by its own key): a hit, another request's answer and
    id, would not be one. With them off, store changes nothing and is not in the key."""
    gateway = state()
    action, ops, _ = ask_responses(gateway, store=store)
    assert action == "forward" and ("answer", "x-ccr-cache", "bypass" if kept else "miss") in ops
    off = state()
    off.table = compile_policy(load_policy(POLICY + "responses: {store: false}\n", "gw.yaml").to_proto("1"), {})
    _, ops, _ = ask_responses(off, store=store)
    assert ("answer", "x-ccr-cache", "miss") in ops
    asyncio.run(store_answer(off.cache, off.flights, store_from(ops), 200, "application/json", orjson.dumps(RESPONSE)))
    assert ask_responses(off, store=not store)[0] == "reply"


def test_a_stored_answer_that_cannot_be_replayed_as_a_stream_is_a_miss() -> None:
    """An entry JSON clients could read but no stream can carry (here a Responses message whose
    text is no string) is a miss for a streaming client, never an error."""
    gateway = state()
    _, ops, _ = ask_responses(gateway)
    odd = {**RESPONSE, "output": [{**RESPONSE["output"][0], "content": [{"type": "output_text", "text": 5}]}]}
    assert asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(odd))
    )
    assert ask_responses(gateway)[0] == "reply"
    action, ops, _ = ask_responses(gateway, stream=True)
    assert action == "forward" and ("answer", "x-ccr-cache", "miss") in ops
