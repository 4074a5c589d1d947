"""The response cache on the decision hop (extproc.cache.answers through extproc.hop): a policy
that caches, a miss that carries its store instruction, /store keeping the answer, the hit that
follows (JSON and replayed stream), and what bypasses the cache."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from ccr.v1.contract import CACHE_CAP_KEY, CACHE_CLUSTER_KEY, CACHE_LABEL, CACHE_STORE_KEY
from control_plane.policy import load_policy
from extproc import hop
from extproc.cache.answers import store_answer
from extproc.cache.store import LocalLruStore
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
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
