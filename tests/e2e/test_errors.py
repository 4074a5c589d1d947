"""Every failure reaches the client as a clear error in its own API's format."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until


def _post(gateway: Gateway, path: str, body: bytes) -> tuple[int, dict]:
    status, _, raw = http("POST", gateway.url + path, body, {"content-type": "application/json"})
    return status, json.loads(raw)


def _anthropic_error(body: dict, error_type: str) -> str:
    assert body["type"] == "error", body
    assert body["error"]["type"] == error_type, body
    return body["error"]["message"]


def _openai_error(body: dict) -> str:
    assert set(body) == {"error"}, body
    return body["error"]["message"]


def test_unknown_model_is_a_404_in_anthropic_format(gateway):
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in caught.value.body["error"]["message"]


def test_unknown_model_is_a_404_in_openai_format(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "no-such-model" in caught.value.body["message"]


def test_malformed_json_is_a_400_in_each_format(gateway):
    status, body = _post(gateway, "/v1/messages", b'{"model": "claude-sonnet-4-5", ')
    assert status == 400
    assert "not valid JSON" in _anthropic_error(body, "invalid_request_error")
    status, body = _post(gateway, "/v1/chat/completions", b"[1, 2")
    assert status == 400
    assert "not valid JSON" in _openai_error(body)


def test_missing_model_and_non_object_bodies_are_400(gateway):
    status, body = _post(gateway, "/v1/messages", b'{"messages": []}')
    assert status == 400 and "model" in _anthropic_error(body, "invalid_request_error")
    status, body = _post(gateway, "/v1/chat/completions", b'"just a string"')
    assert status == 400 and "JSON object" in _openai_error(body)


def test_unknown_endpoint_is_a_404(gateway):
    status, body = _post(gateway, "/v1/complete", b"{}")
    assert status == 404
    assert "no such endpoint" in _anthropic_error(body, "not_found_error")


def test_body_over_the_limit_is_a_413_in_the_client_format(gateway, fake):
    big = json.dumps(
        {"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    ).encode()
    status, body = _post(gateway, "/v1/messages", big)
    assert status == 413
    _anthropic_error(body, "request_too_large")
    status, body = _post(gateway, "/v1/chat/completions", big.replace(b"claude-sonnet-4-5", b"gpt-4o"))
    assert status == 413
    _openai_error(body)
    assert fake.requests() == []


def test_unreachable_provider_is_a_503_in_the_client_format(gateway):
    status, body = _post(
        gateway,
        "/v1/messages",
        json.dumps(
            {"model": "claude-unreachable", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        ).encode(),
    )
    assert status == 503
    message = _anthropic_error(body, "api_error")
    assert message == "provider 'unreachable' could not be reached: the connection failed"


def test_provider_errors_pass_through_in_the_provider_format(gateway, fake):
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-status": "429"},
        )


@pytest.fixture(scope="module")
def lonely_gateway(workdir, fake: FakeProvider):
    """A gateway of its own, whose ext_proc this module kills."""
    gw = Gateway.start(workdir, base_policy(free_port(), fake), name="lonely")
    yield gw
    gw.stop()


def test_extproc_down_fails_closed_with_a_503(lonely_gateway: Gateway):
    import psutil

    up = psutil.Process(lonely_gateway.process.pid)
    extproc = [p for p in up.children() if "extproc" in " ".join(p.cmdline())]
    assert extproc, "no ext_proc child found"
    for worker in extproc:  # every worker: with one left, Envoy would balance to it
        worker.kill()
    request = json.dumps(
        {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    ).encode()

    def failed_closed() -> tuple[int, dict] | None:
        status, body = _post(lonely_gateway, "/v1/messages", request)
        return (status, body) if status != 200 else None

    status, body = wait_until(failed_closed, 10, "ext_proc to be gone")
    assert status == 503
    _anthropic_error(body, "api_error")
    status, body = _post(lonely_gateway, "/v1/chat/completions", request)
    assert status == 503
    message = _openai_error(body)
    assert message.endswith("unavailable") or "unavailable;" in message, message  # a sentence, no dangling colon
