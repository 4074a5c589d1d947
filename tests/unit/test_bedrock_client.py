"""Clients of Bedrock's InvokeModel paths (the Anthropic SDKs' Bedrock clients, Claude Code with
CLAUDE_CODE_USE_BEDROCK): an Anthropic request whose model and stream flag are in the path, routed
like any other to any provider format on both decision paths (the hop and ext_proc), and answered
in Bedrock's framing: a stream always goes through the response rewrite (SSE -> event-stream)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest

from ccr.v1.contract import HOP_CONTEXT_KEY, HOP_STREAM_KEY, REWRITE_HEADER
from control_plane.policy import load_policy
from extproc import hop
from extproc.plan import GENERATE, Answer, Chain, Forward, plan, translated
from extproc.processor import RequestProcessor
from extproc.request_steps import Endpoint, Reply, bedrock_endpoint, endpoint_step, strip_before_egress
from extproc.routing_table import compile_policy
from extproc.sse import encode_event
from extproc.state import GatewayState
from extproc.translate.aws_eventstream import EventStreamDecoder
from extproc.translate.base import Api
from extproc.translate.client_request import BedrockCall, read_request
from extproc.translate.registry import translator_for
from tests.unit.test_hop import parse
from tests.unit.test_plan import auth_state, presented
from tests.unit.test_processor import body, headers, response_headers, set_headers_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bedrock_client"
MODEL_ID = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
POLICY = f"""
providers:
  - {{name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", api_key_env: ANT_KEY,
     models: [claude-sonnet-4-5, claude-opus-5-5, {{name: "{MODEL_ID}", id: fake-sonnet}}]}}
  - {{name: aws, api: bedrock, base_url: "https://bedrock-runtime.us-east-1.amazonaws.com",
     models: [{{name: claude-aws, id: "{MODEL_ID}"}}]}}
  - {{name: oai, api: openai, base_url: "https://api.example.com/v1", models: [gpt-4o]}}
router:
  default: "ant,claude-sonnet-4-5"
fallback:
  "ant,claude-opus-5-5": ["oai,gpt-4o"]
"""
USER = [{"role": "user", "content": "hi"}]
SIGV4 = {
    "authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00",
    "x-amz-date": "20250101T000000Z",
    "x-amz-content-sha256": "abc",
    "x-amz-security-token": "client-session",
}


def invoke(model: str, stream: bool = False) -> str:
    return f"/model/{model}/invoke-with-response-stream" if stream else f"/model/{model}/invoke"


def bedrock_body(**fields: object) -> dict:
    return {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": USER, **fields}


@pytest.fixture(scope="module")
def state() -> GatewayState:
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})
    return gateway


# --- the paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model", "stream"),
    [
        ("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke", MODEL_ID, False),
        (f"/model/{MODEL_ID}/invoke-with-response-stream", MODEL_ID, True),  # Claude Code's literal ":"
        ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/invoke", "arn:aws:bedrock:us-east-1:1:inference-profile/x", False),
    ],
)  # fmt: skip
def test_invoke_paths_are_bedrock_endpoints_naming_model_and_stream(path: str, model: str, stream: bool) -> None:
    assert bedrock_endpoint(path) == Endpoint(Api.BEDROCK, "generate", path, bedrock=BedrockCall(model, stream))


@pytest.mark.parametrize(
    "path", ["/model/m/converse", "/model//invoke", "/model/m/invoke/extra", "/model/m/invoke-stream"]
)
def test_other_model_paths_are_no_bedrock_endpoint(state: GatewayState, path: str) -> None:
    assert bedrock_endpoint(path) is None
    _, step = endpoint_step(state.table, "POST", path, {}, has_body=True)
    assert isinstance(step, Reply) and step.status == 404
    assert orjson.loads(step.body) == {"message": f"no such endpoint: POST {path}"}


def test_a_bedrock_clients_refusals_take_bedrocks_shape(state: GatewayState) -> None:
    api, step = endpoint_step(state.table, "POST", invoke(MODEL_ID), {}, has_body=False)
    assert api is Api.BEDROCK and isinstance(step, Reply) and step.status == 400
    assert orjson.loads(step.body) == {"message": "request body is required"}
    answer = hop.decide(state, "POST", invoke(MODEL_ID), {}, orjson.dumps(bedrock_body(messages=[])))
    action, ops, payload = parse(answer)  # type: ignore[arg-type]
    assert action == "reply" and ("status", "400", "") in ops
    assert orjson.loads(payload) == {"message": "messages: required, must be a non-empty array"}


# --- planned like any Anthropic request ----------------------------------------------------------------


def test_to_an_anthropic_provider_the_model_is_mapped_and_bedrocks_fields_dropped(state: GatewayState) -> None:
    raw = orjson.dumps(bedrock_body(anthropic_beta=["interleaved-thinking-2025-05-14"]))
    outcome = plan(state.table, Api.BEDROCK, GENERATE, {}, raw, bedrock=BedrockCall(MODEL_ID, True))
    assert isinstance(outcome, Forward) and outcome.route.provider.name == "ant"
    assert outcome.upstream.path == "/v1/messages"
    assert orjson.loads(outcome.upstream.body) == {
        "max_tokens": 50,
        "messages": USER,
        "model": "fake-sonnet",
        "stream": True,
    }
    assert ("anthropic-beta", "interleaved-thinking-2025-05-14") in outcome.upstream.headers


def test_to_a_bedrock_provider_the_path_and_body_are_bedrocks(state: GatewayState) -> None:
    raw = orjson.dumps(bedrock_body(anthropic_beta=["b1"]))
    outcome = plan(state.table, Api.BEDROCK, GENERATE, {}, raw, bedrock=BedrockCall("claude-aws", True))
    assert isinstance(outcome, Forward)
    assert outcome.upstream.path == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    assert orjson.loads(outcome.upstream.body) == {**bedrock_body(), "anthropic_beta": ["b1"]}


def test_a_fallback_chain_carries_the_anthropic_body_each_attempt_translates(state: GatewayState) -> None:
    raw = orjson.dumps(bedrock_body(anthropic_beta=["b1"]))
    outcome = plan(state.table, Api.BEDROCK, GENERATE, {}, raw, bedrock=BedrockCall("claude-opus-5-5", True))
    assert isinstance(outcome, Chain) and outcome.body is not None
    sent = orjson.loads(outcome.body)
    assert sent["model"] == "claude-opus-5-5" and sent["stream"] is True and "anthropic_version" not in sent
    # What an attempt does with it (extproc.attempt): read as the client's, translated for its provider.
    route = state.table.target("oai", "gpt-4o")  # type: ignore[union-attr]
    assert route is not None
    upstream = translated(read_request(Api.BEDROCK, sent), route, translator_for(Api.BEDROCK, Api.OPENAI), True)
    assert not isinstance(upstream, Answer) and upstream.path == "/v1/chat/completions"


def test_a_signed_clients_headers_never_go_on() -> None:
    for name in SIGV4:
        for provider in Api:
            assert strip_before_egress(name, Api.BEDROCK, provider)
    assert not strip_before_egress("anthropic-beta", Api.BEDROCK, Api.ANTHROPIC)
    assert strip_before_egress("anthropic-version", Api.BEDROCK, Api.OPENAI)
    assert strip_before_egress("x-amzn-bedrock-trace", Api.BEDROCK, Api.ANTHROPIC)
    assert not strip_before_egress("x-amzn-bedrock-trace", Api.BEDROCK, Api.BEDROCK)


# --- the hop -------------------------------------------------------------------------------------------


def test_a_stream_through_the_hop_is_marked_for_the_response_rewrite_even_to_an_anthropic_provider(
    state: GatewayState,
) -> None:
    sent = {"anthropic-beta": "claude-code-20250219", "x-api-key": "k", **SIGV4}
    raw = orjson.dumps(bedrock_body(anthropic_beta=["interleaved-thinking-2025-05-14"]))
    action, ops, payload = parse(hop.decide(state, "POST", invoke(MODEL_ID, True), sent, raw))  # type: ignore[arg-type]
    assert action == "forward", payload
    sets = {name: value for op, name, value in ops if op == "set"}
    labels = {name: value for op, name, value in ops if op == "label"}
    removed = {name for op, name, _ in ops if op == "remove"}
    assert sets[":path"] == "/v1/messages" and sets["x-ccr-cluster"] == "provider_ant"
    assert sets[REWRITE_HEADER] == "response" and HOP_STREAM_KEY in labels
    # The client's header, then the body's list.
    assert sets["anthropic-beta"] == "claude-code-20250219,interleaved-thinking-2025-05-14"
    assert set(SIGV4) <= removed | set(sets)
    assert labels["client_api"] == "bedrock" and labels["requested_model"] == MODEL_ID
    assert orjson.loads(payload)["model"] == "fake-sonnet"


def test_a_json_answer_through_the_hop_is_read_by_respond(state: GatewayState) -> None:
    action, ops, _ = parse(hop.decide(state, "POST", invoke(MODEL_ID), {}, orjson.dumps(bedrock_body())))  # type: ignore[arg-type]
    labels = {name: value for op, name, value in ops if op == "label"}
    assert action == "forward" and HOP_CONTEXT_KEY in labels
    error = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    _, ops, payload = parse(hop.respond(state, labels[HOP_CONTEXT_KEY], 429, "application/json", error))
    assert ("status", "429", "") in ops and orjson.loads(payload) == {"message": "slow down"}
    answer = b'{"id":"msg_1","type":"message","content":[]}'
    _, ops, payload = parse(hop.respond(state, labels[HOP_CONTEXT_KEY], 200, "application/json", answer))
    assert ("status", "200", "") in ops and payload == answer


def test_a_bedrock_providers_stream_through_the_hop_is_read_on_the_way_for_its_usage(state: GatewayState) -> None:
    raw = orjson.dumps(bedrock_body())
    action, ops, _ = parse(hop.decide(state, "POST", invoke("claude-aws", True), {}, raw))  # type: ignore[arg-type]
    sets = {name: value for op, name, value in ops if op == "set"}
    labels = {name for op, name, _ in ops if op == "label"}
    assert action == "forward" and HOP_STREAM_KEY in labels and sets[REWRITE_HEADER] == "response"


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ({}, False),  # CLAUDE_CODE_SKIP_BEDROCK_AUTH alone: nothing to know the caller by
        (SIGV4, False),  # a SigV4 signature is no gateway key
        ({**SIGV4, "x-api-key": presented("validkey")}, True),  # the SDK with default_headers; ANTHROPIC_CUSTOM_HEADERS
        ({"authorization": f"Bearer {presented('validkey')}"}, True),  # Claude Code: AWS_BEARER_TOKEN_BEDROCK
    ],
)
def test_a_bedrock_client_presents_the_gateway_key_in_a_header(sent: dict, forwarded: bool) -> None:
    state = auth_state(True)
    path = invoke("claude-sonnet-4-5")
    action, ops, payload = parse(hop.decide(state, "POST", path, sent, orjson.dumps(bedrock_body())))  # type: ignore[arg-type]
    if forwarded:
        assert action == "forward", payload
    else:
        assert action == "reply" and ("status", "401", "") in ops
        assert "AWS_BEARER_TOKEN_BEDROCK" in orjson.loads(payload)["message"]


# --- what Claude Code sends in Bedrock mode ------------------------------------------------------------


def claude_code_request() -> dict:
    """Claude Code's first request in Bedrock mode (CLAUDE_CODE_USE_BEDROCK=1,
    CLAUDE_CODE_SKIP_BEDROCK_AUTH=1, the gateway key in ANTHROPIC_CUSTOM_HEADERS as x-api-key)."""
    return json.loads((FIXTURES / "claude_code_stream.json").read_text())


def test_claude_code_sends_what_the_gateway_serves() -> None:
    captured = claude_code_request()
    assert bedrock_endpoint(captured["path"]) == Endpoint(
        Api.BEDROCK, "generate", captured["path"], bedrock=BedrockCall(MODEL_ID, True)
    )
    assert "authorization" not in captured["headers"]  # SKIP_BEDROCK_AUTH: no signature
    assert captured["headers"]["x-api-key"]  # the gateway key, from ANTHROPIC_CUSTOM_HEADERS
    assert captured["body"]["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in captured["body"] and "stream" not in captured["body"]
    assert captured["body"]["anthropic_beta"]  # its betas, in the body besides the header's one


def test_claude_code_in_bedrock_mode_through_the_hop(state: GatewayState) -> None:
    captured = claude_code_request()
    sent_headers = {name: value for name, value in captured["headers"].items() if name != "x-api-key"}
    answer = hop.decide(state, "POST", captured["path"], sent_headers, orjson.dumps(captured["body"]))
    action, ops, payload = parse(answer)  # type: ignore[arg-type]
    assert action == "forward", payload
    sets = {name: value for op, name, value in ops if op == "set"}
    labels = {name: value for op, name, value in ops if op == "label"}
    assert sets["x-ccr-cluster"] == "provider_ant" and sets[":path"] == "/v1/messages"
    assert sets["anthropic-beta"].split(",") == [
        captured["headers"]["anthropic-beta"],
        *captured["body"]["anthropic_beta"],
    ]
    assert sets[REWRITE_HEADER] == "response" and HOP_STREAM_KEY in labels
    forwarded = orjson.loads(payload)
    assert forwarded["model"] == "fake-sonnet" and forwarded["stream"] is True
    assert "anthropic_version" not in forwarded and "anthropic_beta" not in forwarded
    assert labels["requested_model"] == MODEL_ID and labels["endpoint"] == captured["path"]


def test_claude_code_in_bedrock_mode_through_ext_proc(state: GatewayState) -> None:
    captured = claude_code_request()
    processor = RequestProcessor(state)
    sent = {name: value for name, value in captured["headers"].items() if name == "anthropic-beta"}
    first = processor.handle(headers("POST", captured["path"], **sent))
    assert not first.HasField("immediate_response")
    response = processor.handle(body(orjson.dumps(captured["body"])))
    assert not response.HasField("immediate_response"), response
    sets = set_headers_of(response)
    assert sets["x-ccr-cluster"] == "provider_ant" and sets[":path"] == "/v1/messages"
    assert "interleaved-thinking-2025-05-14" in sets["anthropic-beta"].split(",")
    forwarded = orjson.loads(response.request_body.response.body_mutation.body)
    assert forwarded["model"] == "fake-sonnet" and "anthropic_beta" not in forwarded


# --- ext_proc -------------------------------------------------------------------------------------------


def test_a_stream_through_ext_proc_is_reframed_as_event_stream(state: GatewayState) -> None:
    processor = RequestProcessor(state)
    first = processor.handle(headers("POST", invoke("us.anthropic.claude-sonnet-4-5-20250929-v1%3A0", True)))
    assert not first.HasField("immediate_response")
    rewrite = processor.handle(body(bedrock_body()))
    assert not rewrite.HasField("immediate_response"), rewrite
    assert set_headers_of(rewrite)[":path"] == "/v1/messages"
    answer = processor.handle(response_headers(200))
    assert answer.mode_override.response_body_mode == ProcessingMode.STREAMED
    mutation = answer.response_headers.response.header_mutation
    assert {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}["content-type"] == (
        "application/vnd.amazon.eventstream"
    )
    sse = encode_event(b'{"type":"message_stop"}', "message_stop")
    out = processor.handle(ProcessingRequest(response_body=HttpBody(body=sse, end_of_stream=True)))
    (frame,) = EventStreamDecoder().feed(out.response_body.response.body_mutation.body)
    assert frame.event_type == "chunk"
    assert base64.b64decode(orjson.loads(frame.payload)["bytes"]) == b'{"type":"message_stop"}'
