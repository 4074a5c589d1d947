"""extproc.request_steps at the HTTP edge: methods, header size, encodings, the model endpoints and
x-ccr-route on the gateway's own answers, the same through the decision hop and ext_proc."""

from __future__ import annotations

import orjson
import pytest

from ccr.v1.contract import ENCODING_HEADER, ROUTE_HEADER
from control_plane.policy import load_policy
from extproc import hop
from extproc.processor import RequestProcessor
from extproc.request_steps import MAX_REQUEST_HEADER_BYTES, Endpoint, Reply, allowed_methods, endpoint_step
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api
from tests.unit.test_hop import parse
from tests.unit.test_plan import POLICY, anthropic
from tests.unit.test_processor import body, headers

OPENAI = {"authorization": "Bearer c"}


@pytest.fixture(scope="module")
def plan_state() -> GatewayState:
    """The corpus' policy (tests/unit/test_plan.py)."""
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})
    return gateway


def via_hop(state: GatewayState, method: str, path: str, extra: dict, raw: bytes = b"") -> tuple[int, dict, bytes]:
    action, ops, payload = parse(hop.decide(state, method, path, dict(extra), raw))
    assert action == "reply", (action, ops)
    status = next(int(name) for op, name, _ in ops if op == "status")
    return status, {name: value for op, name, value in ops if op == "header"}, payload


def via_ext_proc(state: GatewayState, method: str, path: str, extra: dict, raw: bytes = b"") -> tuple[int, dict, bytes]:
    processor = RequestProcessor(state)
    response = processor.handle(headers(method, path, end_of_stream=not raw, **extra))
    if not response.HasField("immediate_response"):
        response = processor.handle(body(raw))
    reply = response.immediate_response
    sent = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
    return int(reply.status.code), sent, reply.body


def both(state: GatewayState, method: str, path: str, extra: dict | None = None, raw: bytes = b""):
    """The reply, after checking both decision paths give it alike."""
    answer = via_hop(state, method, path, extra or {}, raw)
    assert via_ext_proc(state, method, path, extra or {}, raw) == answer
    return answer


def test_a_known_path_with_another_method_is_a_405_with_allow(plan_state):
    status, sent, payload = both(plan_state, "OPTIONS", "/v1/messages")
    assert (status, sent["allow"]) == (405, "POST")
    assert orjson.loads(payload)["error"]["type"] == "invalid_request_error"
    status, sent, payload = both(plan_state, "DELETE", "/v1/chat/completions", OPENAI)
    assert (status, sent["allow"]) == (405, "POST") and "DELETE" in orjson.loads(payload)["error"]["message"]
    assert both(plan_state, "POST", "/v1/models")[1]["allow"] == "GET, HEAD"


def test_an_unknown_path_is_a_404_without_allow(plan_state):
    status, sent, _ = both(plan_state, "OPTIONS", "/v1/nothing")
    assert status == 404 and "allow" not in sent


def test_head_answers_like_get(plan_state):
    assert both(plan_state, "HEAD", "/v1/models")[0] == 200
    assert both(plan_state, "HEAD", "/v1/models/gpt-4o", OPENAI)[0] == 200
    assert allowed_methods("/v1/models/x") == ("GET", "HEAD")
    assert allowed_methods("/v1/messages/count_tokens") == ("POST",)


def test_the_model_endpoints_answer_in_the_callers_shape(plan_state):
    status, _, payload = both(plan_state, "GET", "/v1/models/claude-sonnet-4-5", {"anthropic-version": "1"})
    assert status == 200 and orjson.loads(payload)["type"] == "model"
    status, _, payload = both(plan_state, "GET", "/v1/models/gpt-4o", OPENAI)
    assert status == 200 and orjson.loads(payload)["object"] == "model"
    status, _, payload = both(plan_state, "GET", "/v1/models/nope", OPENAI)
    assert status == 404 and "nope" in orjson.loads(payload)["error"]["message"]
    status, _, payload = both(plan_state, "GET", "/v1/models?limit=1")
    assert status == 200 and len(orjson.loads(payload)["data"]) == 1 and orjson.loads(payload)["has_more"]
    assert both(plan_state, "GET", "/v1/models?limit=0")[0] == 400


@pytest.mark.parametrize("path, extra", [("/v1/messages", {}), ("/v1/chat/completions", OPENAI)])
def test_headers_over_the_limit_are_a_431_in_the_clients_format(plan_state, path, extra):
    big = {"x-big": "a" * MAX_REQUEST_HEADER_BYTES, **extra}
    status, _, payload = both(plan_state, "POST", path, big, orjson.dumps(anthropic()))
    error = orjson.loads(payload)
    assert status == 431 and "gateway limit" in (error["error"]["message"])
    assert ("type" in error) is (path == "/v1/messages")


def test_headers_at_the_limit_pass():
    fits = {"x-big": "a" * (MAX_REQUEST_HEADER_BYTES - len("x-big") - 4)}
    _, step = endpoint_step(None, "GET", "/v1/models", fits, has_body=False)
    assert isinstance(step, Reply) and step.status == 503  # past the size check: no policy here


def test_an_encoding_envoy_did_not_decode_is_a_415(plan_state):
    status, _, payload = both(plan_state, "POST", "/v1/messages", {"content-encoding": "deflate"}, b"x\x9c")
    assert status == 415 and "deflate" in orjson.loads(payload)["error"]["message"]
    _, step = endpoint_step(plan_state.table, "POST", "/v1/messages", {"content-encoding": "identity"}, True)
    assert isinstance(step, Endpoint)


def test_a_body_envoy_decoded_to_nothing_is_named_as_undecodable(plan_state):
    status, _, payload = both(plan_state, "POST", "/v1/messages", {ENCODING_HEADER: "gzip"})
    assert status == 400 and "Content-Encoding 'gzip'" in orjson.loads(payload)["error"]["message"]


def test_answers_decided_after_routing_carry_the_route_and_earlier_ones_do_not(plan_state):
    status, sent, _ = both(plan_state, "POST", "/v1/messages", {}, orjson.dumps(anthropic("claude-nokey")))
    assert status == 503
    assert sent[ROUTE_HEADER] == "scenario=model; provider=nokey; model=claude-nokey; attempts=0"
    status, sent, _ = both(plan_state, "POST", "/v1/messages", {}, orjson.dumps(anthropic("nope,x")))
    assert status == 404 and ROUTE_HEADER not in sent
    status, sent, _ = both(plan_state, "POST", "/v1/messages", {}, b"{")
    assert status == 400 and ROUTE_HEADER not in sent


def test_the_api_of_an_unknown_path_comes_from_the_headers():
    api, _ = endpoint_step(None, "GET", "/nothing", OPENAI, has_body=False)
    assert api is Api.OPENAI
    api, _ = endpoint_step(None, "GET", "/nothing", {"anthropic-version": "1", **OPENAI}, has_body=False)
    assert api is Api.ANTHROPIC
