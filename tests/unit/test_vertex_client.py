"""Clients of Vertex AI's rawPredict paths (the Anthropic SDKs' Vertex clients, Claude Code with
CLAUDE_CODE_USE_VERTEX): an Anthropic request whose model is in the path and whose body carries
``anthropic_version`` instead, read as the Anthropic request it is and routed like any other, on
both decision paths (the hop and ext_proc), to any provider format."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from control_plane.policy import load_policy
from extproc import hop
from extproc.plan import COUNT_TOKENS, GENERATE, Answer, Chain, Forward, plan
from extproc.processor import RequestProcessor
from extproc.request_steps import Endpoint, Reply, endpoint_step, vertex_endpoint
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api
from extproc.translate.client_request import from_vertex
from tests.unit.test_hop import parse
from tests.unit.test_plan import auth_state, presented
from tests.unit.test_processor import body, headers, set_headers_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vertex_client"
MODELS = "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models"
POLICY = """
providers:
  - {name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", api_key_env: ANT_KEY,
     models: [claude-sonnet-4-5, claude-opus-5-5]}
  - {name: vx, api: vertex, project: gw-project, region: europe-west1, base_url: "http://10.0.0.3:8000",
     forward_count_tokens: true,
     models: [{name: claude-haiku-4-5, id: "claude-haiku-4-5@20251001"}, {name: solo, id: "claude-solo@1"}]}
  - {name: oai, api: openai, base_url: "https://api.example.com/v1", models: [gpt-4o]}
router:
  default: "ant,claude-sonnet-4-5"
fallback:
  "vx,claude-haiku-4-5": ["ant,claude-sonnet-4-5"]
"""
VX_MODELS = "/v1/projects/gw-project/locations/europe-west1/publishers/anthropic/models"
USER = [{"role": "user", "content": "hi"}]


def vertex_body(**fields: object) -> dict:
    return {"anthropic_version": "vertex-2023-10-16", "max_tokens": 50, "messages": USER, **fields}


@pytest.fixture(scope="module")
def state() -> GatewayState:
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})
    return gateway


# --- the paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "model"),
    [
        (f"{MODELS}/claude-sonnet-4-5:rawPredict", "generate", "claude-sonnet-4-5"),
        (f"{MODELS}/claude-sonnet-4-5@20250929:streamRawPredict", "generate", "claude-sonnet-4-5@20250929"),
        (f"{MODELS}/claude%3Bodd:rawPredict", "generate", "claude;odd"),
        (f"{MODELS}/count-tokens:rawPredict", "count_tokens", ""),
        # A base URL without /v1 (ANTHROPIC_VERTEX_BASE_URL=<gateway>) is served too.
        ("/projects/p/locations/global/publishers/anthropic/models/m:rawPredict", "generate", "m"),
    ],
)
def test_vertex_paths_are_anthropic_endpoints_naming_their_model(path: str, kind: str, model: str) -> None:
    assert vertex_endpoint(path) == Endpoint(Api.ANTHROPIC, kind, path, vertex_model=model)


@pytest.mark.parametrize(
    "path",
    [
        f"{MODELS}/claude:predict",
        f"{MODELS}/count-tokens:streamRawPredict",
        f"{MODELS}/claude:rawPredict/extra",
        "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:generateContent",
        "/v2/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
    ],
)
def test_other_paths_under_a_project_are_no_vertex_endpoint(state: GatewayState, path: str) -> None:
    assert vertex_endpoint(path) is None
    _, step = endpoint_step(state.table, "POST", path, {}, has_body=True)
    assert isinstance(step, Reply) and step.status == 404


def test_endpoint_step_names_the_vertex_endpoint_with_its_query_left_off(state: GatewayState) -> None:
    path = f"{MODELS}/claude-sonnet-4-5:streamRawPredict"
    api, step = endpoint_step(state.table, "POST", path + "?alt=sse", {}, has_body=True)
    assert api is Api.ANTHROPIC
    assert step == Endpoint(Api.ANTHROPIC, "generate", path, vertex_model="claude-sonnet-4-5")


def test_a_vertex_body_becomes_an_anthropic_body() -> None:
    sent = vertex_body(anthropic_beta=["context-1m-2025-08-07"], stream=True)
    assert from_vertex(sent, "claude-x") == {"max_tokens": 50, "messages": USER, "stream": True, "model": "claude-x"}
    assert from_vertex({**sent, "model": "in-body"}, "")["model"] == "in-body"  # count-tokens
    assert "model" not in sent  # the client's body is left as it was


# --- planned like any Anthropic request ----------------------------------------------------------------


def test_to_an_anthropic_provider_the_body_names_the_model_and_drops_vertexs_fields(state: GatewayState) -> None:
    outcome = plan(
        state.table, Api.ANTHROPIC, GENERATE, {}, orjson.dumps(vertex_body()), vertex_model="claude-opus-5-5"
    )
    assert isinstance(outcome, Forward)
    assert outcome.route.provider.name == "ant"
    assert outcome.upstream.path == "/v1/messages"
    assert not outcome.upstream.unchanged  # the client's Vertex bytes must not go on
    assert orjson.loads(outcome.upstream.body) == {"max_tokens": 50, "messages": USER, "model": "claude-opus-5-5"}


def test_to_a_vertex_provider_the_path_is_the_providers_own(state: GatewayState) -> None:
    raw = orjson.dumps(vertex_body(stream=True))
    outcome = plan(state.table, Api.ANTHROPIC, GENERATE, {}, raw, vertex_model="claude-haiku-4-5")
    assert isinstance(outcome, Chain)  # vx's model has a fallback: the new body goes on for each attempt
    assert outcome.body is not None
    assert orjson.loads(outcome.body)["model"] == "claude-haiku-4-5"
    assert "anthropic_version" not in orjson.loads(outcome.body)


def test_to_a_vertex_provider_without_a_chain(state: GatewayState) -> None:
    raw = orjson.dumps(vertex_body(stream=True))
    outcome = plan(state.table, Api.ANTHROPIC, GENERATE, {}, raw, vertex_model="vx,solo")
    assert isinstance(outcome, Forward)
    assert outcome.upstream.path == f"{VX_MODELS}/claude-solo@1:streamRawPredict"
    sent = orjson.loads(outcome.upstream.body)
    assert sent["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent


def test_count_tokens_on_the_vertex_path_is_counted_like_count_tokens(state: GatewayState) -> None:
    raw = orjson.dumps({"anthropic_version": "vertex-2023-10-16", "model": "claude-sonnet-4-5", "messages": USER})
    local = plan(state.table, Api.ANTHROPIC, COUNT_TOKENS, {}, raw, vertex_model="")
    assert isinstance(local, Answer) and local.status == 200
    assert orjson.loads(local.body)["input_tokens"] > 0
    raw = orjson.dumps({"anthropic_version": "vertex-2023-10-16", "model": "vx,solo", "messages": USER})
    forwarded = plan(state.table, Api.ANTHROPIC, COUNT_TOKENS, {}, raw, vertex_model="")
    assert isinstance(forwarded, Forward)
    assert forwarded.upstream.path == f"{VX_MODELS}/count-tokens:rawPredict"


def test_a_vertex_request_without_messages_is_refused_in_anthropics_format(state: GatewayState) -> None:
    raw = orjson.dumps({"anthropic_version": "vertex-2023-10-16", "max_tokens": 5})
    outcome = plan(state.table, Api.ANTHROPIC, GENERATE, {}, raw, vertex_model="claude-sonnet-4-5")
    assert isinstance(outcome, Answer) and outcome.status == 400


# --- both decision paths, with what Claude Code sends ---------------------------------------------------


def claude_code_request() -> dict:
    """One request Claude Code 2.x sent in Vertex mode (CLAUDE_CODE_USE_VERTEX=1,
    CLAUDE_CODE_SKIP_VERTEX_AUTH=1, the gateway key in ANTHROPIC_CUSTOM_HEADERS as x-api-key)."""
    return json.loads((FIXTURES / "claude_code_stream.json").read_text())


def test_claude_code_sends_what_the_gateway_serves() -> None:
    captured = claude_code_request()
    assert captured["path"].endswith(":streamRawPredict")
    assert "authorization" not in captured["headers"]  # SKIP_VERTEX_AUTH: no Google token
    assert captured["headers"]["x-api-key"]  # the gateway key, from ANTHROPIC_CUSTOM_HEADERS
    assert captured["body"]["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in captured["body"]


def test_claude_code_in_vertex_mode_through_the_hop(state: GatewayState) -> None:
    captured = claude_code_request()
    sent_headers = {name: value for name, value in captured["headers"].items() if name != "x-api-key"}
    answer = hop.decide(state, "POST", captured["path"], sent_headers, orjson.dumps(captured["body"]))
    action, ops, payload = parse(answer)  # type: ignore[arg-type]
    assert action == "forward", payload
    sets = {name: value for op, name, value in ops if op == "set"}
    labels = {name: value for op, name, value in ops if op == "label"}
    assert sets["x-ccr-cluster"] == "provider_ant"
    assert sets[":path"] == "/v1/messages"
    forwarded = orjson.loads(payload)
    assert forwarded["model"] == "claude-opus-5-5" and "anthropic_version" not in forwarded
    assert labels["requested_model"] == "claude-opus-5-5"
    assert labels["endpoint"] == captured["path"]


def test_claude_code_in_vertex_mode_through_ext_proc(state: GatewayState) -> None:
    captured = claude_code_request()
    processor = RequestProcessor(state)
    first = processor.handle(headers("POST", captured["path"], **{"anthropic-beta": "claude-code-20250219"}))
    assert not first.HasField("immediate_response")
    response = processor.handle(body(orjson.dumps(captured["body"])))
    assert not response.HasField("immediate_response"), response
    sets = set_headers_of(response)
    assert sets["x-ccr-cluster"] == "provider_ant" and sets[":path"] == "/v1/messages"
    forwarded = orjson.loads(response.request_body.response.body_mutation.body)
    assert forwarded["model"] == "claude-opus-5-5" and "anthropic_version" not in forwarded


def test_an_unknown_vertex_path_is_a_404_in_anthropics_format(state: GatewayState) -> None:
    _, step = endpoint_step(state.table, "POST", f"{MODELS}/m:explain", {}, has_body=True)
    assert isinstance(step, Reply) and step.status == 404
    assert orjson.loads(step.body)["type"] == "error"


# --- the gateway key, as Vertex clients send it ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        ({}, 401),  # CLAUDE_CODE_SKIP_VERTEX_AUTH without ANTHROPIC_CUSTOM_HEADERS: nothing to know the caller by
        ({"x-api-key": presented("validkey")}, None),  # Claude Code: ANTHROPIC_CUSTOM_HEADERS="x-api-key: <key>"
        ({"authorization": f"Bearer {presented('validkey')}"}, None),  # the SDK's AnthropicVertex(access_token=<key>)
    ],
)
def test_a_vertex_client_presents_the_gateway_key_as_any_anthropic_client(sent: dict, status: int | None) -> None:
    state = auth_state(True)
    path = f"{MODELS}/claude-sonnet-4-5:rawPredict"
    action, ops, payload = parse(hop.decide(state, "POST", path, sent, orjson.dumps(vertex_body())))  # type: ignore[arg-type]
    if status is None:
        assert action == "forward", payload
        removed = {name for op, name, _ in ops if op == "remove"}
        replaced = {name: value for op, name, value in ops if op == "set"}
        for name, value in sent.items():  # never on to a provider: dropped, or the provider's own key instead
            assert name in removed or replaced.get(name, value) != value
    else:
        assert action == "reply"
        assert int(next(name for op, name, _ in ops if op == "status")) == status
        assert orjson.loads(payload)["error"]["type"] == "authentication_error"
