"""Byte-identical repeats of cached requests (extproc.cache.repeats through extproc.hop): a repeat
is answered from the entry its bytes led to before, without being parsed or routed again; anything
that could change its route or its key takes the full path."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from control_plane.policy import load_policy
from extproc import hop
from extproc.cache.answers import store_answer
from extproc.cache.repeats import Repeat, Repeats, routes_by_body
from extproc.routing_table import compile_policy
from tests.unit.test_cache_answers import ANSWER, POLICY, state, store_from
from tests.unit.test_hop import parse

BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 10,
    "temperature": 0,
    "messages": [{"role": "user", "content": "hi"}],
}


def send(gateway, body: dict = BODY, headers: dict | None = None):
    answer = hop.decide(
        gateway, "POST", "/v1/messages", {"content-type": "application/json", **(headers or {})}, orjson.dumps(body)
    )
    if isinstance(answer, hop.Pending):
        answer = asyncio.run(answer.answer)
    return parse(answer)


@pytest.fixture
def planned(monkeypatch) -> list[int]:
    """How many requests were parsed and routed (extproc.plan.plan calls)."""
    calls: list[int] = []
    real = hop.plan

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hop, "plan", counting)
    return calls


def stored(gateway) -> None:
    _, ops, _ = send(gateway)
    assert asyncio.run(
        store_answer(gateway.cache, gateway.flights, store_from(ops), 200, "application/json", orjson.dumps(ANSWER))
    )


def test_a_repeat_is_answered_without_being_parsed_or_routed_again(planned) -> None:
    gateway = state()
    stored(gateway)  # the first request: planned, looked up (a miss), its answer stored
    assert len(planned) == 1 and len(gateway.repeats) == 1
    action, ops, payload = send(gateway)
    assert action == "reply" and ("header", "x-ccr-cache", "hit") in ops and orjson.loads(payload) == ANSWER
    assert ("label", "provider", "ant") in ops and ("label", "cache", "hit") in ops  # its ledger record
    assert len(planned) == 1  # not planned again


def test_a_repeat_whose_entry_is_gone_takes_the_full_path(planned) -> None:
    gateway = state()
    _, ops, _ = send(gateway)  # a miss: remembered; its provider fails, nothing is stored
    asyncio.run(store_answer(gateway.cache, gateway.flights, store_from(ops), 502, "", b""))
    action, ops, _ = send(gateway)
    assert action == "forward" and ("answer", "x-ccr-cache", "miss") in ops
    assert len(planned) == 2


@pytest.mark.parametrize("headers", [{"cache-control": "no-cache"}, {"x-ccr-cache-ttl": "60"}])
def test_a_request_that_speaks_to_the_cache_is_never_a_repeat(planned, headers: dict) -> None:
    gateway = state()
    stored(gateway)
    send(gateway, headers=headers)
    assert len(planned) == 2


def test_other_bytes_or_another_caller_are_not_the_same_request() -> None:
    gateway = state()
    table = gateway.table
    repeats = Repeats()
    raw = orjson.dumps(BODY)
    same = repeats.digest(table, "/v1/messages", {}, raw)
    assert same == repeats.digest(table, "/v1/messages", {"content-type": "x"}, raw)  # transport headers
    assert same != repeats.digest(table, "/v1/messages", {}, raw + b" ")
    assert same != repeats.digest(table, "/v1/messages", {"x-api-key": "sk-ccr-other"}, raw)
    assert same != repeats.digest(table, "/v1/messages", {"anthropic-beta": "flag"}, raw)


def test_a_new_policy_forgets_every_repeat(planned) -> None:
    gateway = state()
    stored(gateway)
    gateway.table = compile_policy(load_policy(POLICY, "gw.yaml").to_proto("2"), environ={})
    assert send(gateway)[0] == "reply"  # the same entry, found by the full path: routed again
    assert len(planned) == 2


def test_a_policy_that_routes_by_more_than_the_body_has_no_repeats() -> None:
    split = POLICY.replace(
        'router: {default: "ant,claude-sonnet-4-5"}',
        'router: {default: "ant,claude-sonnet-4-5"}\naliases:\n  fast: [{target: "ant,claude-sonnet-4-5", weight: 1},'
        ' {target: "ant,claude-haiku-4-5", weight: 1}]',
    ).replace("models: [claude-sonnet-4-5]", "models: [claude-sonnet-4-5, claude-haiku-4-5]")
    table = compile_policy(load_policy(split, "gw.yaml").to_proto("1"), environ={})
    assert not routes_by_body(table)
    assert Repeats().digest(table, "/v1/messages", {}, b"{}") is None
    plain = compile_policy(load_policy(POLICY, "gw.yaml").to_proto("1"), environ={})
    assert routes_by_body(plain)


def test_the_memory_is_bounded() -> None:
    gateway = state()
    repeats = Repeats(capacity=2)
    table = gateway.table
    digests = [repeats.digest(table, "/v1/messages", {}, bytes([i])) for i in range(3)]
    for size, digest in enumerate(digests, 1):
        repeats.put(digest, Repeat(None, {}, "p", "m", size))  # type: ignore[arg-type]
    assert len(repeats) == 2 and repeats.get(digests[0]) is None
    assert not repeats.may_hold(1) and repeats.may_hold(2) and repeats.may_hold(3)  # the evicted one's size
