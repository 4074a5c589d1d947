"""The MCP endpoint through the decision (hop and ext_proc alike): authenticated like any request,
then forwarded untouched to the MCP service's cluster with the caller's tenant and key id
(extproc.request_steps.mcp_step / mcp_rewrite); refusals JSON-RPC-shaped, a 401 pointing at the
RFC 9728 metadata, which the decision answers itself, to anyone."""

from __future__ import annotations

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from hypothesis import given, settings
from hypothesis import strategies as st

from ccr.v1.contract import (
    ANONYMOUS_TENANT_VALUE,
    CLUSTER_HEADER,
    ENDPOINT_LABEL,
    KEY_HEADER,
    MCP_CLUSTER,
    MCP_DECISION_IGNORED_HEADERS,
    METADATA_NAMESPACE,
    TENANT_HEADER,
)
from control_plane.policy import load_policy
from extproc import hop
from extproc.auth.decision import Authenticator
from extproc.auth.local_limits import LocalLimiter
from extproc.mcp.protected_resource import HOP_AUTHORITY_HEADER
from extproc.processor import RequestProcessor
from extproc.request_steps import MCP_REFUSED_CODE, endpoint_step, mcp_rewrite
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from tests.unit.test_hop import parse
from tests.unit.test_plan import FAKE_KEYS, FAKE_REFUSED, POLICY, FakeKeys, presented
from tests.unit.test_processor import headers as processing_headers

VALID = presented("validkey")  # tenant "acme"
MCP = """
mcp:
  path: /tools/mcp
  authorization_servers: [https://auth.example.com]
  servers:
    - {name: files, command: [python3, -m, fake_provider.mcp_servers, stdio]}
  grants:
    - {tenant: "-", allow: [files]}
"""
HOST = {HOP_AUTHORITY_HEADER: "gw.example:8080", "x-forwarded-proto": "https"}


def state(required: bool = False, mcp: bool = True) -> GatewayState:
    proto = load_policy(POLICY + (MCP if mcp else "")).to_proto("1")
    proto.auth_required = required
    gateway = GatewayState(Authenticator(FakeKeys(FAKE_KEYS, FAKE_REFUSED), LocalLimiter(clock=lambda: 1000.0)))
    gateway.table = compile_policy(proto, environ={"ANT_KEY": "k"})
    return gateway


def decide(gateway: GatewayState, method: str, path: str, headers: dict[str, str], raw: bytes = b"") -> dict:
    action, ops, payload = parse(hop.decide(gateway, method, path, headers, raw))
    answer: dict = {"action": action, "payload": payload}
    answer["labels"] = {name: value for op, name, value in ops if op == "label"}
    if action == "reply":
        answer["status"] = next(int(name) for op, name, _ in ops if op == "status")
        answer["headers"] = {name: value for op, name, value in ops if op == "header"}
        answer["body"] = orjson.loads(payload)
    else:
        answer["set"] = {name: value for op, name, value in ops if op == "set"}
        answer["remove"] = {name for op, name, _ in ops if op == "remove"}
    return answer


STREAMABLE_HTTP = [
    ("POST", "/tools/mcp", {"content-type": "application/json", "accept": "application/json, text/event-stream"}),
    ("GET", "/tools/mcp", {"accept": "text/event-stream", "mcp-session-id": "s1"}),
    ("DELETE", "/tools/mcp", {"mcp-session-id": "s1"}),
    ("POST", "/tools/mcp?debug=1", {"content-type": "application/json"}),
]


@pytest.mark.parametrize(("method", "path", "extra"), STREAMABLE_HTTP, ids=[f"{m} {p}" for m, p, _ in STREAMABLE_HTTP])
def test_an_mcp_request_with_a_valid_key_goes_to_the_mcp_service_with_its_tenant(method, path, extra):
    raw = b'{"jsonrpc":"2.0","id":1,"method":"ping"}' if method == "POST" else b""
    answer = decide(state(required=True), method, path, {"x-api-key": VALID, **extra}, raw)
    assert answer["action"] == "forward"
    assert answer["set"] == {CLUSTER_HEADER: MCP_CLUSTER, TENANT_HEADER: "acme", KEY_HEADER: "validkey"}
    assert answer["payload"] == b""  # the client's body goes on as it came
    assert answer["remove"] == {"x-api-key"}  # the gateway's key goes no further; MCP's headers do
    assert answer["labels"] == {
        "client_api": "mcp",
        ENDPOINT_LABEL: "/tools/mcp",
        "tenant": "acme",
        "key_id": "validkey",
    }


def test_an_anonymous_caller_is_the_anonymous_tenant_and_client_copies_are_overwritten():
    client = {TENANT_HEADER: "victim", KEY_HEADER: "someone", "authorization": "Bearer not-ours", "x-ccr-jwt-sub": "x"}
    answer = decide(state(), "POST", "/tools/mcp", client, b"{}")
    assert answer["set"][TENANT_HEADER] == ANONYMOUS_TENANT_VALUE
    assert answer["set"][KEY_HEADER] == ANONYMOUS_TENANT_VALUE
    assert answer["remove"] == {"authorization", "x-ccr-jwt-sub"}  # credentials and internal headers
    assert "tenant" not in answer["labels"] and "model" not in answer["labels"]


def test_mcp_rewrite_shares_the_batch_apis_service_rewrite():
    rewrite = mcp_rewrite(
        endpoint_step(state().table, "GET", "/tools/mcp", {}, False)[1],  # type: ignore[arg-type]
        {"x-goog-api-key": "k", "mcp-session-id": "s", "x-ccr-cluster": "elsewhere"},
        None,
    )
    assert rewrite.body is None
    assert dict(rewrite.set_headers)[CLUSTER_HEADER] == MCP_CLUSTER
    assert rewrite.remove_headers == ("x-goog-api-key",)  # the cluster header is set, not removed


def test_without_a_key_when_keys_are_required_the_401_is_json_rpc_and_points_at_the_metadata():
    answer = decide(state(required=True), "POST", "/tools/mcp", dict(HOST), b"{}")
    assert answer["status"] == 401
    assert answer["body"]["jsonrpc"] == "2.0" and answer["body"]["id"] is None
    assert answer["body"]["error"]["code"] == MCP_REFUSED_CODE
    assert "'Authorization: Bearer <key>' or 'x-api-key: <key>'" in answer["body"]["error"]["message"]
    assert answer["headers"]["www-authenticate"] == (
        'Bearer resource_metadata="https://gw.example:8080/.well-known/oauth-protected-resource/tools/mcp"'
    )
    assert answer["labels"]["client_api"] == "mcp" and answer["labels"][ENDPOINT_LABEL] == "/tools/mcp"
    assert answer["labels"]["details"] == "ccr_auth_missing_key"


def test_a_refused_key_gets_invalid_token_in_its_challenge():
    answer = decide(state(), "GET", "/tools/mcp", {**HOST, "x-api-key": presented("revokedx")})
    assert answer["status"] == 401
    assert answer["headers"]["www-authenticate"].endswith(', error="invalid_token"')
    assert "revoked" in answer["body"]["error"]["message"]


def test_another_method_is_a_405_naming_the_three():
    answer = decide(state(), "PUT", "/tools/mcp", {"x-api-key": VALID}, b"{}")
    assert answer["status"] == 405
    assert answer["headers"]["allow"] == "DELETE, GET, POST"
    assert answer["body"]["error"]["code"] == MCP_REFUSED_CODE


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/tools/mcp", "/.well-known/oauth-protected-resource"]
)
def test_the_protected_resource_metadata_is_answered_to_anyone(path):
    answer = decide(state(required=True), "GET", path, dict(HOST))  # no key, keys required
    assert answer["status"] == 200
    assert answer["body"] == {
        "resource": "https://gw.example:8080/tools/mcp",
        "authorization_servers": ["https://auth.example.com"],
        "bearer_methods_supported": ["header"],
        "resource_name": "ccr-gateway MCP endpoint",
    }


def test_without_mcp_in_the_policy_its_paths_are_unknown_endpoints():
    for method, path in (("POST", "/tools/mcp"), ("GET", "/.well-known/oauth-protected-resource")):
        assert decide(state(mcp=False), method, path, {"x-api-key": VALID}, b"{}")["status"] == 404


def test_paths_that_only_look_like_the_mcp_path_are_not_mcp_calls():
    for path in ("/tools/mcp/", "/tools/mcpx", "/tools", "/mcp"):
        assert decide(state(), "POST", path, {"x-api-key": VALID}, b"{}")["status"] == 404


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize(("method", "path", "extra"), STREAMABLE_HTTP, ids=[f"{m} {p}" for m, p, _ in STREAMABLE_HTTP])
def test_the_ext_proc_path_forwards_mcp_calls_as_the_hop_does(method, path, extra, required):
    client = {"x-api-key": VALID, TENANT_HEADER: "victim", **extra}
    via_hop = decide(state(required), method, path, client)
    response = RequestProcessor(state(required)).handle(processing_headers(method, path, **client))
    # Nothing more of the request or its answer reaches ext_proc: the body passes by unbuffered,
    # and an SSE answer streams through untouched.
    assert response.mode_override.request_body_mode == ProcessingMode.NONE
    assert response.mode_override.response_header_mode == ProcessingMode.SKIP
    assert response.mode_override.response_body_mode == ProcessingMode.NONE
    common = response.request_headers.response
    assert common.clear_route_cache
    assert {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers} == via_hop["set"]
    assert set(common.header_mutation.remove_headers) == via_hop["remove"]
    labels = response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    assert {key: value.string_value for key, value in labels.items()} == via_hop["labels"]


def test_the_ext_proc_path_refuses_and_answers_the_metadata_as_the_hop_does():
    refused = RequestProcessor(state(required=True)).handle(
        processing_headers("GET", "/tools/mcp", **{":authority": "gw.example", ":scheme": "https"})
    )
    immediate = refused.immediate_response
    assert int(immediate.status.code) == 401
    challenge = {h.header.key: h.header.raw_value.decode() for h in immediate.headers.set_headers}["www-authenticate"]
    assert challenge == 'Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/tools/mcp"'
    assert orjson.loads(immediate.body)["error"]["code"] == MCP_REFUSED_CODE
    metadata = RequestProcessor(state(required=True)).handle(
        processing_headers(
            "GET", "/.well-known/oauth-protected-resource/tools/mcp", end_of_stream=True, **{":authority": "gw.example"}
        )
    )
    assert int(metadata.immediate_response.status.code) == 200
    assert orjson.loads(metadata.immediate_response.body)["resource"] == "http://gw.example/tools/mcp"


# --- what the Lua filter may reuse (policy mcp.decision_reuse) ------------------------------------

_HEADER_VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    request=st.sampled_from(STREAMABLE_HTTP),
    caller=st.sampled_from([{"x-api-key": VALID}, {"authorization": f"Bearer {VALID}"}, {}]),
    varied=st.dictionaries(st.sampled_from(MCP_DECISION_IGNORED_HEADERS), _HEADER_VALUE),
)
def test_the_headers_the_lua_filter_ignores_never_change_the_mcp_decision(request, caller, varied):
    """decision_hop.lua reuses a decision to forward for requests that differ only in
    MCP_DECISION_IGNORED_HEADERS: the decision must be the same whatever they say, or are absent."""
    method, path, extra = request
    gateway = state(required=bool(caller))
    plain = {name: value for name, value in extra.items() if name not in MCP_DECISION_IGNORED_HEADERS}
    raw = b'{"jsonrpc":"2.0","id":1,"method":"ping"}' if method == "POST" else b""
    first = hop.decide(gateway, method, path, {**caller, **plain}, raw)
    again = hop.decide(gateway, method, path, {**caller, **plain, **varied}, raw)
    assert first == again
    assert parse(first)[0] == "forward"
