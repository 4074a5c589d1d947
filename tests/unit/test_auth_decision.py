"""The auth step (extproc.auth.decision): every refusal, in both client formats, with its headers;
and what an admitted request carries (its tenant and key id in the labels)."""

from __future__ import annotations

import orjson
import pytest

from ccr.v1.contract import KEY_ID_LABEL, TENANT_LABEL
from extproc.auth.decision import Authenticator, rate_limit_headers
from extproc.auth.keys import VirtualKey
from extproc.auth.limits import Admission
from extproc.request_steps import Reply
from extproc.translate.base import Api
from tests.unit.test_hop import auth_via_hop
from tests.unit.test_plan import AUTH_CASES, FAKE_KEYS, FAKE_REFUSED, FakeKeys, auth_state, presented, raw_of

CASES = {case[0]: case for case in AUTH_CASES}


def answer(name: str) -> dict:
    _, required, api, kind, extra, payload, times = CASES[name]
    state = auth_state(required)
    for _ in range(times):
        result = auth_via_hop(state, api, kind, extra, raw_of(payload))
    return result


@pytest.mark.parametrize(
    "name", ["anonymous", "foreign-key", "valid", "valid-chain", "model-allowed", "valid-bearer-responses"]
)
def test_admitted_requests_go_on(name: str) -> None:
    assert "forward" in answer(name)


def test_an_admitted_key_labels_the_request_with_its_tenant_and_id() -> None:
    labels = answer("valid")["labels"]
    assert (labels[TENANT_LABEL], labels[KEY_ID_LABEL]) == ("acme", "validkey")
    assert TENANT_LABEL not in answer("anonymous")["labels"]


def test_an_answer_the_gateway_gives_a_keyed_request_carries_its_identity() -> None:
    status, _, _ = answer("valid-bad-body")["reply"]
    assert status == 400 and answer("valid-bad-body")["labels"][KEY_ID_LABEL] == "validkey"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("anonymous-required", "x-api-key header is required: send a virtual key (sk-ccr-...)"),
        ("foreign-key-required", "invalid API key: this gateway takes its own virtual keys (sk-ccr-...)"),
        ("unknown", "invalid API key"),
        ("revoked", "invalid API key: this key has been revoked"),
    ],
)
def test_anthropic_clients_get_a_401_authentication_error(name: str, message: str) -> None:
    status, body, _ = answer(name)["reply"]
    assert status == 401
    assert body == {"type": "error", "error": {"type": "authentication_error", "message": message}}


@pytest.mark.parametrize(
    ("name", "message", "code"),
    [
        ("anonymous-required-openai", "You didn't provide an API key", None),
        ("wrong-secret-openai", "invalid API key", "invalid_api_key"),
        ("expired-openai", "invalid API key: this key has expired", "invalid_api_key"),
        ("anonymous-required-responses", "You didn't provide an API key", None),
        ("wrong-secret-responses", "invalid API key", "invalid_api_key"),
    ],
)
def test_openai_clients_get_a_401_as_openai_answers_it(name: str, message: str, code: str | None) -> None:
    status, body, _ = answer(name)["reply"]
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == code
    assert body["error"]["message"].startswith(message)


def test_a_responses_client_is_told_to_send_a_bearer_token_as_an_openai_client_is() -> None:
    """The Codex CLI sends its key as ``Authorization: Bearer``: the message says so, in the
    OpenAI shape (no request field at fault: param null)."""
    status, body, _ = answer("anonymous-required-responses")["reply"]
    assert status == 401 and "'Authorization: Bearer <key>'" in body["error"]["message"]
    assert body == answer("anonymous-required-openai")["reply"][1]
    assert answer("wrong-secret-responses")["reply"][1] == answer("wrong-secret-openai")["reply"][1]


def test_a_model_a_responses_key_may_not_use_is_an_openai_403() -> None:
    status, body, _ = answer("model-refused-responses")["reply"]
    assert status == 403 and body["error"]["type"] == "permission_error" and body["error"]["param"] is None
    assert "claude-sonnet-4-5" in body["error"]["message"]


def test_over_its_rpm_a_responses_client_gets_the_openai_429_and_headers() -> None:
    status, body, headers = answer("rate-limited-responses")["reply"]
    assert status == 429 and (body["error"]["type"], body["error"]["code"]) == ("requests", "rate_limit_exceeded")
    assert headers["retry-after"] == "60"
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert not any(name.startswith("anthropic-ratelimit") for name in headers)


def test_an_unknown_key_and_a_wrong_secret_read_alike() -> None:
    assert answer("unknown")["reply"][1]["error"]["message"] == "invalid API key"
    assert answer("wrong-secret-openai")["reply"][1]["error"]["message"] == "invalid API key"


def test_a_model_the_key_may_not_use_is_a_403_permission_error() -> None:
    status, body, _ = answer("model-refused")["reply"]
    assert status == 403 and body["error"]["type"] == "permission_error"
    assert "gpt-4o" in body["error"]["message"]


def test_over_its_rpm_an_anthropic_client_gets_429_with_retry_after_and_anthropic_headers() -> None:
    status, body, headers = answer("rate-limited")["reply"]
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert headers["retry-after"] == "60"
    assert headers["anthropic-ratelimit-requests-limit"] == "1"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"] == "1970-01-01T00:17:40Z"  # clock 1000 s + 60 s


def test_over_its_rpm_an_openai_client_gets_429_with_openai_headers() -> None:
    status, body, headers = answer("rate-limited-openai")["reply"]
    assert status == 429 and (body["error"]["type"], body["error"]["code"]) == ("requests", "rate_limit_exceeded")
    assert headers["retry-after"] == "60"
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"


def test_count_tokens_is_not_rate_limited() -> None:
    assert "forward" in answer("count-tokens-not-limited") or answer("count-tokens-not-limited")["reply"][0] == 200


def test_a_keys_limits_are_split_between_workers_and_rebuilt_when_the_key_changes() -> None:
    key = VirtualKey("abcdefgh", "acme", "k", rpm=12, tpm=6000)
    auth = Authenticator(FakeKeys({}, {}), workers=3)
    (rpm, tpm), budget = auth.limits_of(key)
    assert (rpm.name, rpm.limit, tpm.name, tpm.limit, budget) == ("rpm", 4, "tpm", 2000, None)
    assert auth.limits_of(key)[0] is auth.limits_of(key)[0]  # made once per key version
    assert auth.limits_of(VirtualKey("abcdefgh", "acme", "k", rpm=6))[0][0].limit == 2


def test_tokens_are_admitted_against_the_estimate() -> None:
    key = VirtualKey("abcdefgh", "acme", "k", tpm=10)
    auth = Authenticator(FakeKeys({}, {}))
    (limit,), _ = auth.limits_of(key)
    assert auth.limiter.admit((limit,), "r1", token_estimate=10, now=0).allowed
    refused = auth.limiter.admit((limit,), "r2", token_estimate=5, now=0)
    headers = dict(rate_limit_headers(Api.OPENAI, key, refused, 0))
    assert dict(rate_limit_headers(Api.RESPONSES, key, refused, 0)) == headers
    assert headers["x-ratelimit-limit-tokens"] == "10" and headers["x-ratelimit-remaining-tokens"] == "0"


def test_keys_not_loaded_yet_refuse_gateway_keys_with_a_503() -> None:
    class Unloaded(FakeKeys):
        def why_rejected(self, text: str) -> str | None:
            return "keys not loaded yet (key store unreachable)"

    auth = Authenticator(Unloaded({}, {}))
    reply = auth.authenticate(Api.ANTHROPIC, "/v1/messages", {"x-api-key": presented("validkey")}, False)
    assert isinstance(reply, Reply) and reply.status == 503


def test_both_credentials_sent_the_gateway_key_is_the_one_read() -> None:
    auth = Authenticator(FakeKeys(FAKE_KEYS, FAKE_REFUSED))
    sent = {"x-api-key": "sk-ant-provider", "authorization": "Bearer " + presented("validkey")}
    key = auth.authenticate(Api.ANTHROPIC, "/v1/messages", sent, True)
    assert isinstance(key, VirtualKey) and key.key_id == "validkey"


def test_rate_limit_headers_leave_out_limits_the_key_does_not_have() -> None:
    key = VirtualKey("abcdefgh", "acme", "k", rpm=5)
    admission = Admission(False, None, 3.0, {"rpm": 0.0}, {"rpm": 12.0})
    headers = dict(rate_limit_headers(Api.ANTHROPIC, key, admission, 0))
    assert set(headers) == {f"anthropic-ratelimit-requests-{p}" for p in ("limit", "remaining", "reset")}
    assert orjson.dumps(headers)  # plain strings
