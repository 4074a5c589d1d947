"""The batch API through the decision hop: authenticated like any request, then forwarded untouched
to the batch API's cluster with the caller's tenant (extproc.request_steps.batch_rewrite)."""

from __future__ import annotations

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

from ccr.v1.contract import (
    ANONYMOUS_TENANT_VALUE,
    BATCH_API_CLUSTER,
    CLUSTER_HEADER,
    ENDPOINT_LABEL,
    KEY_HEADER,
    METADATA_NAMESPACE,
    TENANT_HEADER,
)
from control_plane.policy import load_policy
from extproc import hop
from extproc.auth.decision import Authenticator
from extproc.auth.local_limits import LocalLimiter
from extproc.processor import RequestProcessor
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from tests.unit.test_hop import parse
from tests.unit.test_plan import FAKE_KEYS, FAKE_REFUSED, POLICY, FakeKeys, presented
from tests.unit.test_processor import headers as processing_headers

VALID = presented("validkey")  # tenant "acme"


def state(required: bool = False, batches: bool = True) -> GatewayState:
    proto = load_policy(POLICY + ("\nbatches: {api: 127.0.0.1:9180}\n" if batches else "")).to_proto("1")
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
        answer["body"] = orjson.loads(payload)
    else:
        answer["set"] = {name: value for op, name, value in ops if op == "set"}
        answer["remove"] = {name for op, name, _ in ops if op == "remove"}
    return answer


BATCH_CALLS = [
    ("POST", "/v1/messages/batches", {"anthropic-version": "2023-06-01"}),
    ("GET", "/v1/messages/batches?limit=5", {}),
    ("GET", "/v1/messages/batches/msgbatch_1/results", {}),
    ("POST", "/v1/messages/batches/msgbatch_1/cancel", {}),
    ("DELETE", "/v1/messages/batches/msgbatch_1", {}),
    ("POST", "/v1/files", {"content-type": "multipart/form-data; boundary=x"}),
    ("GET", "/v1/files/file-1/content", {}),
    ("DELETE", "/v1/files/file-1", {}),
    ("POST", "/v1/batches", {}),
    ("GET", "/v1/batches?after=batch_1", {}),
    ("POST", "/v1/batches/batch_1/cancel", {}),
]


@pytest.mark.parametrize(("method", "path", "extra"), BATCH_CALLS, ids=[f"{m} {p}" for m, p, _ in BATCH_CALLS])
def test_a_batch_call_with_a_valid_key_goes_to_the_batch_api_with_its_tenant(method, path, extra):
    raw = b"--x\r\nnot json at all\r\n--x--" if method == "POST" else b""
    answer = decide(state(required=True), method, path, {"x-api-key": VALID, **extra}, raw)
    assert answer["action"] == "forward"
    assert answer["set"] == {CLUSTER_HEADER: BATCH_API_CLUSTER, TENANT_HEADER: "acme", KEY_HEADER: "validkey"}
    assert answer["payload"] == b""  # the client's body goes on as it came
    assert "x-api-key" in answer["remove"]  # the gateway's key goes no further
    assert answer["labels"]["tenant"] == "acme"
    assert answer["labels"][ENDPOINT_LABEL] in ("/v1/messages/batches", "/v1/files", "/v1/batches")
    assert "model" not in answer["labels"]


def test_a_client_sent_tenant_header_is_overwritten_for_an_anonymous_caller():
    answer = decide(state(), "GET", "/v1/batches", {TENANT_HEADER: "victim", "authorization": "Bearer sk-x"})
    assert answer["set"][TENANT_HEADER] == ANONYMOUS_TENANT_VALUE
    assert answer["set"][KEY_HEADER] == ANONYMOUS_TENANT_VALUE
    assert TENANT_HEADER not in answer["remove"]  # set, so Envoy replaces the client's copy


def test_a_client_sent_tenant_header_is_overwritten_by_the_keys_tenant():
    answer = decide(state(), "GET", "/v1/messages/batches", {TENANT_HEADER: "victim", "x-api-key": VALID})
    assert answer["set"][TENANT_HEADER] == "acme"


def test_without_a_key_when_keys_are_required_a_batch_call_is_a_401_in_the_clients_format():
    anthropic = decide(state(required=True), "GET", "/v1/messages/batches", {})
    assert anthropic["status"] == 401
    assert anthropic["body"]["type"] == "error"
    assert anthropic["body"]["error"]["type"] == "authentication_error"
    openai = decide(state(required=True), "POST", "/v1/files", {}, b"x")
    assert openai["status"] == 401
    assert set(openai["body"]["error"]) >= {"message", "type", "code"}


def test_a_revoked_key_is_refused_on_the_batch_paths_too():
    answer = decide(state(), "GET", "/v1/batches", {"authorization": "Bearer " + presented("revokedx")})
    assert answer["status"] == 401


def test_without_batches_in_the_policy_the_batch_paths_are_unknown_endpoints():
    anthropic = decide(state(batches=False), "POST", "/v1/messages/batches", {"x-api-key": VALID}, b"{}")
    assert anthropic["status"] == 404
    assert anthropic["body"]["type"] == "error"
    openai = decide(state(batches=False), "GET", "/v1/batches", {"authorization": "Bearer " + VALID})
    assert openai["status"] == 404
    assert "error" in openai["body"] and "type" not in openai["body"]


def test_paths_that_only_look_like_batch_paths_are_not_batch_calls():
    for path in ("/v1/filesystem", "/v1/batchesx", "/v1/messages/batchesx"):
        assert decide(state(), "GET", path, {"x-api-key": VALID})["status"] == 404


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize(("method", "path", "extra"), BATCH_CALLS[:6], ids=[f"{m} {p}" for m, p, _ in BATCH_CALLS[:6]])
def test_the_ext_proc_path_forwards_batch_calls_as_the_hop_does(method, path, extra, required):
    client = {"x-api-key": VALID, TENANT_HEADER: "victim", **extra}
    via_hop = decide(state(required), method, path, client)
    response = RequestProcessor(state(required)).handle(processing_headers(method, path, **client))
    assert response.mode_override.request_body_mode == ProcessingMode.NONE  # the body passes by, unbuffered
    assert response.mode_override.response_header_mode == ProcessingMode.SKIP
    common = response.request_headers.response
    assert common.clear_route_cache
    assert {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers} == via_hop["set"]
    assert set(common.header_mutation.remove_headers) == via_hop["remove"]
    labels = response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    assert {key: value.string_value for key, value in labels.items()} == via_hop["labels"]


def test_the_ext_proc_path_refuses_a_batch_call_without_a_key_when_keys_are_required():
    response = RequestProcessor(state(required=True)).handle(processing_headers("GET", "/v1/batches"))
    assert int(response.immediate_response.status.code) == 401
