"""The API surface the official SDKs use, through real Envoy: the model endpoints, count_tokens
refusing what /v1/messages refuses, and x-ccr-route on routed answers, errors included."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.e2e.gateway import http

USER = [{"role": "user", "content": "x"}]


@pytest.fixture
def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)


@pytest.fixture
def gpt(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0)


def test_the_anthropic_sdk_lists_and_retrieves_models_with_the_policys_limits(claude):
    listed = [model.id for model in claude.models.list(limit=2)]  # the SDK follows has_more/last_id
    assert listed == sorted(listed) and {"claude-sonnet-4-5", "gpt-4o", "gemini-2.5-pro"} <= set(listed)
    page = claude.models.list(limit=2)
    assert len(page.data) == 2 and page.has_more and page.last_id == page.data[-1].id
    model = claude.models.retrieve("claude-sonnet-4-5")
    assert (model.id, model.max_tokens, model.lifecycle) == ("claude-sonnet-4-5", 64000, "active")
    assert model.created_at.year >= 2025 and model.capabilities is not None
    assert claude.models.retrieve("claude-sonnet-4-5").created_at == model.created_at
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.models.retrieve("no-such-model")
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_the_openai_sdk_lists_and_retrieves_models(gpt):
    assert "gpt-4o" in [model.id for model in gpt.models.list()]
    model = gpt.models.retrieve("gpt-4o")
    assert (model.id, model.owned_by, model.object) == ("gpt-4o", "fake-openai", "model") and model.created > 0
    with pytest.raises(openai.NotFoundError) as caught:
        gpt.models.retrieve("no-such-model")
    assert "no-such-model" in caught.value.body["message"]


def test_count_tokens_refuses_what_messages_refuses(claude):
    for bad in ({"model": "nope,x", "messages": USER}, {"model": "claude-sonnet-4-5", "messages": []}):
        with pytest.raises(anthropic.APIStatusError) as counted:
            claude.messages.count_tokens(**bad)
        with pytest.raises(anthropic.APIStatusError) as generated:
            claude.messages.create(max_tokens=5, **bad)
        assert counted.value.status_code == generated.value.status_code in (400, 404)
        assert counted.value.body["error"]["message"] == generated.value.body["error"]["message"]
    assert claude.messages.count_tokens(model="claude-sonnet-4-5", messages=USER).input_tokens > 0


def _route_of(gateway, body: dict, **headers: str) -> tuple[int, str | None]:
    sent = {"content-type": "application/json", **headers}
    status, got, _ = http("POST", gateway.url + "/v1/messages", json.dumps(body).encode(), sent)
    return status, {k.lower(): v for k, v in got.items()}.get("x-ccr-route")


def test_routed_answers_carry_x_ccr_route_whatever_their_status(gateway):
    ok = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER}
    status, route = _route_of(gateway, ok)
    assert status == 200 and route.endswith("model=claude-sonnet-4-5; attempts=1")
    status, route = _route_of(gateway, ok, **{"x-fake-status": "429"})  # the provider's error
    assert status == 429 and "provider=fake-anthropic" in route
    refused = {**ok, "model": "gemini-2.5-pro", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}  # fmt: skip
    status, route = _route_of(gateway, refused)  # the translator's refusal: no provider asked
    assert status == 400 and route == "scenario=model; provider=fake-gemini; model=gemini-2.5-pro; attempts=0"
    status, route = _route_of(gateway, {**ok, "model": "claude-unreachable"})  # Envoy's own error
    assert status == 503 and "provider=unreachable" in route
    status, route = _route_of(gateway, {**ok, "model": "nope,x"})  # before any route: none
    assert status == 404 and route is None
