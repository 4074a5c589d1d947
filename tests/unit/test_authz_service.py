"""The ext_authz servicer (extproc.authz) fed hand-built CheckRequests: who is let through, with what
identity and without which headers, and every refusal in the client's own format."""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from google.protobuf.json_format import MessageToDict
from google.rpc import code_pb2

from extproc.auth.decision import Authenticator
from extproc.auth.keys import VirtualKey
from extproc.authz import AuthorizationService, check, client_api
from extproc.state import GatewayState
from extproc.translate.base import Api
from tests.unit.test_plan import FAKE_KEYS, FAKE_REFUSED, FakeKeys, auth_state, presented

MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
LIMITED = VirtualKey(
    "limitedx",
    "globex",
    "ci runner",
    models=("claude-sonnet-4-5", "gpt-4o"),
    rpm=60,
    tpm=100_000,
    max_parallel=4,
    budget_usd=25.5,
    budget_period="month",
)


def check_request(path: str, method: str = "POST", raw: bool = False, **headers: str) -> CheckRequest:
    """What Envoy's ext_authz filter sends: the headers as a map, or (``raw``) as encode_raw_headers
    sends them."""
    sent = {":method": method, ":path": path, ":authority": "gateway", **headers}
    http = AttributeContext.HttpRequest(method=method, path=path, host="gateway")
    if raw:
        http.header_map.CopyFrom(HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in sent.items()]))
    else:
        http.headers.update(sent)
    return CheckRequest(attributes=AttributeContext(request=AttributeContext.Request(http=http)))


def state_with(required: bool, *keys: VirtualKey) -> GatewayState:
    state = auth_state(required)
    extra = {presented(key.key_id): key for key in keys}
    state.auth = Authenticator(FakeKeys({**FAKE_KEYS, **extra}, FAKE_REFUSED))
    return state


def metadata(response: CheckResponse) -> dict:
    return MessageToDict(response.dynamic_metadata)


def refusal(response: CheckResponse) -> tuple[int, dict, dict[str, str]]:
    """(HTTP status, JSON body, headers) of a denied check."""
    assert response.status.code != code_pb2.OK and response.HasField("denied_response"), response
    denied = response.denied_response
    headers = {option.header.key: option.header.value for option in denied.headers}
    return denied.status.code, orjson.loads(denied.body), headers


def test_a_valid_key_is_let_through_without_its_credentials_and_with_its_identity() -> None:
    sent = {"x-api-key": presented("validkey"), "authorization": "Bearer " + presented("validkey")}
    response = check(state_with(True), check_request(MESSAGES, **sent))
    assert response.status.code == code_pb2.OK
    assert sorted(response.ok_response.headers_to_remove) == ["authorization", "x-api-key"]
    assert metadata(response) == {
        "client_api": "anthropic",
        "tenant": "acme",
        "key_id": "validkey",
        "key_name": "laptop",
    }


def test_the_metadata_carries_the_keys_models_and_limits() -> None:
    sent = {"authorization": "Bearer " + presented("limitedx")}
    response = check(state_with(True, LIMITED), check_request(CHAT, **sent))
    assert list(response.ok_response.headers_to_remove) == ["authorization"]
    assert metadata(response) == {
        "client_api": "openai",
        "tenant": "globex",
        "key_id": "limitedx",
        "key_name": "ci runner",
        "models": ["claude-sonnet-4-5", "gpt-4o"],
        "rpm": 60.0,
        "tpm": 100000.0,
        "max_parallel": 4.0,
        "budget_usd": 25.5,
        "budget_period": "month",
    }


@pytest.mark.parametrize(
    ("key_id", "message"),
    [
        ("wrongsec", "invalid API key"),
        ("unknownx", "invalid API key"),
        ("expiredx", "invalid API key: this key has expired"),
        ("revokedx", "invalid API key: this key has been revoked"),
    ],
)
def test_a_bad_key_is_an_anthropic_401_authentication_error(key_id: str, message: str) -> None:
    response = check(state_with(False), check_request(MESSAGES, **{"x-api-key": presented(key_id)}))
    assert response.status.code == code_pb2.UNAUTHENTICATED
    status, body, headers = refusal(response)
    assert status == 401
    assert body == {"type": "error", "error": {"type": "authentication_error", "message": message}}
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("key_id", "message"),
    [
        ("wrongsec", "invalid API key"),
        ("expiredx", "invalid API key: this key has expired"),
        ("revokedx", "invalid API key: this key has been revoked"),
    ],
)
def test_a_bad_key_is_a_401_as_openai_answers_it(key_id: str, message: str) -> None:
    response = check(state_with(False), check_request(CHAT, authorization="Bearer " + presented(key_id)))
    status, body, _ = refusal(response)
    assert status == 401
    assert body == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    }


@pytest.mark.parametrize(
    ("path", "start"),
    [
        (MESSAGES, "x-api-key header is required"),
        (CHAT, "You didn't provide an API key"),
    ],
)
def test_no_key_while_keys_are_required_is_a_401(path: str, start: str) -> None:
    status, body, _ = refusal(check(state_with(True), check_request(path)))
    assert status == 401 and body["error"]["message"].startswith(start)


def test_no_key_while_keys_are_not_required_is_anonymous() -> None:
    response = check(state_with(False), check_request(MESSAGES))
    assert response.status.code == code_pb2.OK
    assert not response.ok_response.headers_to_remove and not metadata(response)


def test_a_providers_key_with_keys_not_required_goes_on_anonymous_and_untouched() -> None:
    response = check(state_with(False), check_request(MESSAGES, **{"x-api-key": "sk-ant-provider-key"}))
    assert response.status.code == code_pb2.OK
    assert not response.ok_response.headers_to_remove and not metadata(response)


def test_a_providers_key_with_keys_required_is_refused() -> None:
    status, body, _ = refusal(check(state_with(True), check_request(MESSAGES, **{"x-api-key": "sk-ant-x"})))
    assert status == 401 and "sk-ccr-" in body["error"]["message"]


@pytest.mark.parametrize(("path", "error_type"), [(MESSAGES, "api_error"), (CHAT, "server_error")])
def test_no_policy_yet_fails_closed_with_a_503_in_the_clients_format(path: str, error_type: str) -> None:
    state = GatewayState(Authenticator(FakeKeys(FAKE_KEYS, FAKE_REFUSED)))
    response = check(state, check_request(path, **{"x-api-key": presented("validkey")}))
    assert response.status.code == code_pb2.UNAVAILABLE
    status, body, _ = refusal(response)
    assert status == 503 and body["error"]["type"] == error_type
    assert metadata(response)["details"] == "ccr_no_policy"


def test_a_refusal_says_why_in_the_metadata_and_carries_the_request_id_under_both_names() -> None:
    sent = {"x-api-key": presented("revokedx"), "x-request-id": "req-123"}
    response = check(state_with(False), check_request(MESSAGES, **sent))
    _, _, headers = refusal(response)
    assert headers["request-id"] == headers["x-request-id"] == "req-123"
    assert metadata(response)["details"] == "ccr_auth_key_revoked"
    assert metadata(response)["error_type"] == "authentication_error"


def test_raw_headers_are_read_as_well_as_the_header_map() -> None:
    request = check_request(MESSAGES, raw=True, **{"x-api-key": presented("validkey")})
    assert not request.attributes.request.http.headers
    response = check(state_with(True), request)
    assert response.status.code == code_pb2.OK and metadata(response)["key_id"] == "validkey"


@pytest.mark.parametrize("required", [True, False])
def test_a_client_cannot_claim_a_verified_token_with_internal_headers(required: bool) -> None:
    # The gateway's Envoy sets x-ccr-jwt-* after verifying a token; an Envoy running only ext_authz
    # passes on whatever the client sent.
    claimed = {"x-ccr-jwt-from": "authorization", "x-ccr-jwt-issuer": "evil", "x-ccr-jwt-tenant": "acme"}
    response = check(state_with(required), check_request(MESSAGES, **claimed))
    if required:
        assert refusal(response)[0] == 401
    else:
        assert response.status.code == code_pb2.OK and not metadata(response)


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/v1/messages?beta=true", {}, (Api.ANTHROPIC, MESSAGES)),
        ("/chat/completions", {}, (Api.OPENAI, "/chat/completions")),
        ("/v1/models", {"authorization": "Bearer x"}, (Api.OPENAI, "/v1/models")),
        ("/v1/models", {"x-api-key": "x", "anthropic-version": "2023-06-01"}, (Api.ANTHROPIC, "/v1/models")),
        ("/models/gpt-4o", {}, (Api.OPENAI, "/models/{id}")),
        ("/v1/responses", {}, (Api.RESPONSES, "/v1/responses")),  # OpenAI-shaped refusals (errors.OPENAI_SHAPED)
        ("/v1/embeddings", {"authorization": "Bearer x"}, (Api.OPENAI, "")),  # a route the gateway does not serve
        ("/internal/tool", {"x-api-key": "x"}, (Api.ANTHROPIC, "")),
    ],
)
def test_the_client_api_is_chosen_from_the_path_then_the_headers(path, headers, expected) -> None:
    assert client_api(path, headers) == expected


def test_an_openai_style_route_the_gateway_does_not_serve_gets_openai_refusals() -> None:
    request = check_request("/v1/embeddings", authorization="Bearer " + presented("wrongsec"))
    _, body, _ = refusal(check(state_with(False), request))
    assert body["error"]["code"] == "invalid_api_key"


async def test_the_servicer_answers_check_with_the_same_answer() -> None:
    state = state_with(True)
    request = check_request(MESSAGES, **{"x-api-key": presented("validkey")})
    context = type("Context", (), {"invocation_metadata": lambda self: ()})()
    assert await AuthorizationService(state).Check(request, context) == check(state, request)  # type: ignore[arg-type]


def test_every_answer_is_counted_by_outcome_and_reason() -> None:
    from prometheus_client import REGISTRY

    def counted(outcome: str, reason: str) -> float:
        return REGISTRY.get_sample_value("ccr_authz_decisions_total", {"outcome": outcome, "reason": reason}) or 0.0

    before = {(o, r): counted(o, r) for o, r in (("key", ""), ("anonymous", ""))}
    state = state_with(False)
    check(state, check_request(MESSAGES, **{"x-api-key": presented("validkey")}))
    check(state, check_request(MESSAGES))
    refused = check(state_with(True), check_request(MESSAGES))
    reason = refused.status.message
    assert reason.startswith("ccr_")
    assert counted("key", "") == before[("key", "")] + 1
    assert counted("anonymous", "") == before[("anonymous", "")] + 1
    assert counted("denied", reason) >= 1
