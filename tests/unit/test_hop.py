"""extproc.hop: the decision hop answers every request as the ext_proc processor does.

The corpus of tests/unit/test_plan.py (every scenario, a fallback chain, count_tokens counted and
forwarded, unknown model, provider without its key, bodies a translator refuses, bad JSON) goes
through both transports: the same reply (status and body) or the same rewrite (body, headers set
and removed, routing labels), or, for a fallback chain, a deferral to the ext_proc path. Then the
response side: a translated answer read through ``/respond`` is what the processor would send.
"""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccr.v1.contract import (
    HOP_CONTEXT_KEY,
    HOP_ROUTE_KEY,
    HOP_STREAM_KEY,
    METADATA_NAMESPACE,
    REWRITE_HEADER,
    REWRITE_RESPONSE,
)
from control_plane.policy import load_policy
from extproc import hop
from extproc.hop import HopContext
from extproc.plan import GENERATE, Chain, plan
from extproc.processor import RequestProcessor
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api, ResponseContext
from tests.unit.test_plan import AUTH_CASES, CASES, PATHS, POLICY, anthropic, auth_state, raw_of
from tests.unit.test_processor import body, headers, response_headers, set_headers_of

HOP_ONLY_LABELS = {HOP_ROUTE_KEY, HOP_CONTEXT_KEY, HOP_STREAM_KEY}


@pytest.fixture(scope="module")
def plan_state() -> GatewayState:
    """The corpus' policy (tests/unit/test_plan.py)."""
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})
    return gateway


def parse(answer: bytes) -> tuple[str, list[tuple[str, str, str]], bytes]:
    """The Lua filter's reading of an answer (control_plane/resources/decision_hop.lua)."""
    head, _, payload = answer.partition(b"\n\n")
    first, *lines = head.decode().split("\n")
    assert first.startswith("ccr1 ")
    ops = [tuple(line.split("\t", 2)) for line in lines]
    assert all(len(op) == 3 for op in ops), ops
    return first[len("ccr1 ") :], ops, payload  # type: ignore[return-value]


def via_hop(state: GatewayState, api: Api, kind: str, extra: dict, raw: bytes) -> dict:
    client_headers = {"authorization": "Bearer c"} if api is Api.OPENAI else {}
    client_headers.update(extra)
    action, ops, payload = parse(hop.decide(state, "POST", PATHS[(api, kind)], client_headers, raw))
    labels = {name: value for op, name, value in ops if op == "label" and name not in HOP_ONLY_LABELS}
    if action == "reply":
        status = next(int(name) for op, name, _ in ops if op == "status")
        route = next((value for op, name, value in ops if op == "header" and name == "x-ccr-route"), None)
        return {"reply": (status, orjson.loads(payload), route), "labels": labels}
    assert action == "forward"
    return {
        "body": orjson.loads(payload) if payload else None,  # none: the client's bytes go on
        "set": {name: value for op, name, value in ops if op == "set" and name != REWRITE_HEADER},
        "remove": sorted(name for op, name, _ in ops if op == "remove"),
        "labels": labels,
    }


def via_ext_proc(state: GatewayState, api: Api, kind: str, extra: dict, raw: bytes) -> dict:
    processor = RequestProcessor(state)
    auth = {"authorization": "Bearer c"} if api is Api.OPENAI else {}
    processor.handle(headers("POST", PATHS[(api, kind)], **auth, **extra))
    response = processor.handle(body(raw))
    labels = {key: value.string_value for key, value in labels_of(response).items()}
    if response.HasField("immediate_response"):
        reply = response.immediate_response
        sent = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
        return {"reply": (int(reply.status.code), orjson.loads(reply.body), sent.get("x-ccr-route")), "labels": labels}
    common = response.request_body.response
    return {
        "body": orjson.loads(common.body_mutation.body) if common.HasField("body_mutation") else None,
        "set": set_headers_of(response),
        "remove": sorted(common.header_mutation.remove_headers),
        "labels": labels,
    }


def labels_of(response) -> dict:
    """The routing labels an ext_proc answer sets (dynamic metadata), replies included."""
    if METADATA_NAMESPACE not in response.dynamic_metadata.fields:
        return {}
    return dict(response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields)


@pytest.mark.parametrize(("name", "api", "kind", "extra", "payload"), CASES, ids=[c[0] for c in CASES])
def test_the_hop_and_ext_proc_give_every_request_the_same_answer(plan_state, name, api, kind, extra, payload):
    raw = raw_of(payload)
    assert via_hop(plan_state, api, kind, extra, raw) == via_ext_proc(plan_state, api, kind, extra, raw)


def test_a_chain_goes_to_its_cluster_with_the_context_of_every_member(plan_state):
    raw = orjson.dumps(anthropic(thinking={"type": "enabled", "budget_tokens": 2048}))
    assert isinstance(plan(plan_state.table, Api.ANTHROPIC, GENERATE, {}, raw), Chain)
    action, ops, payload = parse(hop.decide(plan_state, "POST", "/v1/messages", {}, raw))
    assert (action, payload) == ("forward", b"")  # the client's body: each attempt is rewritten upstream
    assert ("set", REWRITE_HEADER, REWRITE_RESPONSE) in ops
    context = HopContext.decode(next(v for op, n, v in ops if op == "label" and n == HOP_STREAM_KEY))
    assert [member[0] for member in context.chain] == ["ant", "oai", "gem"]
    answered = context.answered_by("gem")
    assert (answered.provider, answered.provider_name, answered.context.model) == (
        Api.GEMINI,
        "gem",
        "gemini-2.5-pro",
    )
    assert answered.route_header("think") == "scenario=think; provider=gem; model=gemini-2.5-pro"
    assert context.answered_by(None).provider_name == "ant"  # unknown: the first


def test_endpoint_answers_need_no_body(plan_state):
    action, ops, payload = parse(hop.decide(plan_state, "GET", "/v1/models", {}, b""))
    assert action == "reply" and ("status", "200", "") in ops
    assert {m["id"] for m in orjson.loads(payload)["data"]} >= {"claude-sonnet-4-5", "gpt-4o"}
    action, ops, _ = parse(hop.decide(plan_state, "POST", "/v1/nothing", {}, b"{}"))
    assert ("status", "404", "") in ops and ("label", "details", "ccr_unknown_endpoint") in ops
    assert ("status", "400", "") in parse(hop.decide(plan_state, "POST", "/v1/messages", {}, b""))[1]
    assert ("status", "503", "") in parse(hop.decide(GatewayState(), "POST", "/v1/messages", {}, b"{}"))[1]


@pytest.mark.parametrize(
    ("method", "path", "extra", "raw"),
    [
        ("GET", "/v1/models", {}, b""),
        ("GET", "/v1/models/claude-sonnet-4-5", {}, b""),
        ("GET", "/v1/messages", {}, b""),  # 405: a gateway endpoint, so a usage record
        ("POST", "/v1/nothing", {}, b"{}"),  # 404: no endpoint label, no record
        ("POST", "/v1/messages", {}, b""),
        ("POST", "/v1/messages", {"content-encoding": "deflate"}, b"{}"),
        ("POST", "/v1/chat/completions", {"x-big": "x" * 70_000}, b"{}"),
    ],
)
def test_the_gateways_endpoint_answers_carry_the_same_labels_on_both_paths(plan_state, method, path, extra, raw):
    action, ops, _ = parse(hop.decide(plan_state, method, path, extra, raw))
    assert action == "reply"
    hop_labels = {name: value for op, name, value in ops if op == "label"}
    processor = RequestProcessor(plan_state)
    response = processor.handle(headers(method, path, end_of_stream=not raw, **extra))
    ext_proc_labels = {key: value.string_value for key, value in labels_of(response).items()}
    assert hop_labels == ext_proc_labels
    assert ("endpoint" in hop_labels) == (path != "/v1/nothing")
    assert ("details" in hop_labels) == ("error_type" in hop_labels) == (not path.startswith("/v1/models"))


def test_a_translated_stream_carries_its_context_to_ext_proc_and_a_whole_answer_to_respond(plan_state):
    def ops_of(payload: dict) -> list[tuple[str, str, str]]:
        return parse(hop.decide(plan_state, "POST", "/v1/messages", {}, orjson.dumps(payload)))[1]

    streamed = ops_of(anthropic("gpt-4o", stream=True))
    assert ("set", REWRITE_HEADER, REWRITE_RESPONSE) in streamed
    assert {name for op, name, _ in streamed if op == "label"} >= {HOP_STREAM_KEY, HOP_ROUTE_KEY}
    whole = ops_of(anthropic("gpt-4o"))
    assert HOP_CONTEXT_KEY in {name for op, name, _ in whole if op == "label"}
    assert not any(name == REWRITE_HEADER for _, name, _ in whole)
    passthrough = ops_of(anthropic())  # an Anthropic provider: the answer goes back as it is
    labels = {name: value for op, name, value in passthrough if op == "label"}
    assert HOP_CONTEXT_KEY not in labels and HOP_STREAM_KEY not in labels
    assert labels[HOP_ROUTE_KEY] == "scenario=model; provider=ant; model=claude-sonnet-4-5"


OPENAI_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-2024",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def context_of(plan_state: GatewayState, payload: dict, key: str = HOP_CONTEXT_KEY) -> str:
    ops = parse(hop.decide(plan_state, "POST", "/v1/messages", {}, orjson.dumps(payload)))[1]
    return next(value for op, name, value in ops if op == "label" and name == key)


def test_respond_reads_the_answer_as_the_ext_proc_processor_does(plan_state):
    payload = anthropic("gpt-4o", metadata={"user_id": '{"session_id": "s-1"}'})
    raw = orjson.dumps(OPENAI_ANSWER)
    action, ops, translated = parse(
        hop.respond(plan_state, context_of(plan_state, payload), 200, "application/json", raw)
    )
    processor = RequestProcessor(plan_state)
    processor.handle(headers("POST", "/v1/messages"))
    processor.handle(body(payload))
    processor.handle(response_headers(200))
    expected = processor.handle(_response_body(raw)).response_body.response.body_mutation.body
    assert action == "response" and ("status", "200", "") in ops
    assert orjson.loads(translated) == orjson.loads(expected)
    assert orjson.loads(translated)["content"] == [{"type": "text", "text": "Hi there"}]


def test_respond_turns_provider_errors_and_broken_answers_into_the_clients_format(plan_state):
    context = context_of(plan_state, anthropic("gpt-4o"))
    error = orjson.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})
    _, ops, payload = parse(hop.respond(plan_state, context, 429, "application/json", error))
    assert ("status", "429", "") in ops
    assert orjson.loads(payload)["error"]["message"] == "slow down"
    assert orjson.loads(payload)["type"] == "error"
    _, ops, payload = parse(hop.respond(plan_state, context, 200, "application/json", b"[1]"))
    assert ("status", "502", "") in ops
    assert "invalid response" in orjson.loads(payload)["error"]["message"]


def test_count_tokens_forwarded_to_gemini_is_read_back_as_input_tokens():
    state = GatewayState()
    context = HopContext(Api.ANTHROPIC, Api.GEMINI, True, ResponseContext("gemini-2.5-pro", False), "gem", "")
    _, ops, payload = parse(hop.respond(state, context.encode(), 200, "application/json", b'{"totalTokens": 42}'))
    assert ("status", "200", "") in ops and orjson.loads(payload) == {"input_tokens": 42}


def test_the_session_learns_the_prompt_size_from_a_translated_answer(plan_state):
    state = GatewayState()
    state.table = plan_state.table
    payload = anthropic("gpt-4o", metadata={"user_id": '{"session_id": "s-9"}'})
    hop.respond(state, context_of(state, payload), 200, "application/json", orjson.dumps(OPENAI_ANSWER))
    assert state.sessions.last("s-9") == 12


@given(
    st.sampled_from(list(Api)),
    st.sampled_from([Api.ANTHROPIC, Api.OPENAI]),
    st.booleans(),
    st.text(max_size=30),
    st.integers(0, 10**7),
    st.text(max_size=30),
)
def test_a_context_survives_its_trip_through_envoy(provider, client, stream, model, estimate, session):
    context = HopContext(client, provider, False, ResponseContext(model, stream, estimate, turn=3), "p", session)
    token = context.encode()
    assert token.isascii() and "\t" not in token and "\n" not in token
    assert base64.urlsafe_b64decode(token)
    assert HopContext.decode(token) == context


def test_values_never_break_the_line_format():
    answer = hop._encode("forward", [("set", "x-a", "one\ttwo\nthree")], b"payload\n\nwith blank lines")
    action, ops, payload = parse(answer)
    assert (action, ops, payload) == ("forward", [("set", "x-a", "one two three")], b"payload\n\nwith blank lines")


def _response_body(raw: bytes):
    from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest

    return ProcessingRequest(response_body=HttpBody(body=raw, end_of_stream=True))


# --- virtual keys: both paths run the same auth step ------------------------------------------------


def auth_via_hop(state: GatewayState, api: Api, kind: str, extra: dict, raw: bytes) -> dict:
    action, ops, payload = parse(hop.decide(state, "POST", PATHS[(api, kind)], dict(extra), raw))
    labels = {name: value for op, name, value in ops if op == "label" and name not in HOP_ONLY_LABELS}
    if action == "reply":
        status = next(int(name) for op, name, _ in ops if op == "status")
        sent = {name: value for op, name, value in ops if op == "header" and name != "content-type"}
        return {"reply": (status, orjson.loads(payload), sent), "labels": labels}
    set_headers = {name: value for op, name, value in ops if op == "set" and name != REWRITE_HEADER}
    return {"forward": sorted(name for op, name, _ in ops if op == "remove"), "set": set_headers, "labels": labels}


def auth_via_ext_proc(state: GatewayState, api: Api, kind: str, extra: dict, raw: bytes) -> dict:
    processor = RequestProcessor(state)
    response = processor.handle(headers("POST", PATHS[(api, kind)], **extra))
    if not response.HasField("immediate_response"):
        response = processor.handle(body(raw))
    labels = {key: value.string_value for key, value in labels_of(response).items()}
    if response.HasField("immediate_response"):
        reply = response.immediate_response
        sent = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
        sent.pop("content-type", None)
        return {"reply": (int(reply.status.code), orjson.loads(reply.body), sent), "labels": labels}
    common = response.request_body.response
    forward = sorted(common.header_mutation.remove_headers)
    return {"forward": forward, "set": set_headers_of(response), "labels": labels}


@pytest.mark.parametrize(
    ("name", "required", "api", "kind", "extra", "payload", "times"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES]
)
def test_the_hop_and_ext_proc_authenticate_every_request_alike(name, required, api, kind, extra, payload, times):
    raw = raw_of(payload)
    hop_state, ext_proc_state = auth_state(required), auth_state(required)
    for _ in range(times):
        via_hop_answer = auth_via_hop(hop_state, api, kind, extra, raw)
        via_ext_proc_answer = auth_via_ext_proc(ext_proc_state, api, kind, extra, raw)
    assert via_hop_answer == via_ext_proc_answer
    for name in {"x-api-key", "authorization"} & set(extra):  # the client's credential never goes upstream
        if "forward" in via_hop_answer:
            assert name in via_hop_answer["forward"] or via_hop_answer["set"][name] != extra[name]
