"""CCR scenarios and cross-format fallback, observed from real SDK requests through Envoy."""

from __future__ import annotations

import base64
import copy
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.e2e.gateway import PROVIDER_KEYS, FakeProvider, Gateway, free_port, http, wait_until

PIXEL = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452")).decode()


@pytest.fixture(scope="module")
def backup(workdir: Path) -> Iterator[FakeProvider]:
    """A second fake provider: the fallback target, in another API format."""
    provider = FakeProvider.start(workdir)
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def primary(workdir: Path) -> Iterator[FakeProvider]:
    """The primary of the fallback chain; a test kills it."""
    provider = FakeProvider.start(workdir)
    yield provider
    if provider.process.poll() is None:
        provider.stop()


def routing_policy(port: int, fake: FakeProvider, primary: FakeProvider, backup: FakeProvider) -> dict:
    return {
        "listener": {"address": "127.0.0.1", "port": port},
        "limits": {"attempt_timeout_seconds": 1},
        "providers": [
            {
                "name": "ant",
                "api": "anthropic",
                "base_url": fake.url,
                "models": ["claude-sonnet-4-5", "claude-opus-4-1", {"name": "subagent-model", "id": "sub-1"}],
            },
            {
                "name": "oai",
                "api": "openai",
                "base_url": f"{fake.url}/v1",
                "models": ["gpt-4o", "gpt-4o-mini", "gpt-4o-search", "gpt-4o-vision"],
            },
            {"name": "gem", "api": "gemini", "base_url": f"{fake.url}/v1beta", "models": ["gemini-2.5-pro"]},
            {"name": "primary", "api": "anthropic", "base_url": primary.url, "models": ["claude-primary"]},
            {"name": "backup", "api": "openai", "base_url": f"{backup.url}/v1", "models": ["gpt-backup"]},
            {
                "name": "dead",
                "api": "anthropic",
                "base_url": f"http://127.0.0.1:{free_port()}",
                "models": ["claude-dead"],
            },
        ],
        "aliases": {
            "stable": [{"target": "ant,claude-sonnet-4-5", "weight": 1}, {"target": "oai,gpt-4o", "weight": 1}]
        },
        "router": {
            "default": "ant,claude-sonnet-4-5",
            "background": "oai,gpt-4o-mini",
            "think": "ant,claude-opus-4-1",
            "longContext": "gem,gemini-2.5-pro",
            "longContextThreshold": 3000,
            "webSearch": "oai,gpt-4o-search",
            "image": "oai,gpt-4o-vision",
        },
        "fallback": {"primary,claude-primary": ["backup,gpt-backup"], "dead,claude-dead": ["backup,gpt-backup"]},
    }


@pytest.fixture(scope="module")
def routed(workdir: Path, fake: FakeProvider, primary: FakeProvider, backup: FakeProvider) -> Iterator[Gateway]:
    gw = Gateway.start(workdir, routing_policy(free_port(), fake, primary, backup), name="routed")
    yield gw
    gw.stop()


def ask(gateway: Gateway, **request: object) -> tuple[anthropic.types.Message, dict[str, str]]:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    params = {"max_tokens": 256, "messages": [{"role": "user", "content": "hello"}], **request}
    raw = client.messages.with_raw_response.create(**params)
    return raw.parse(), dict(raw.headers)


def route_of(headers: dict[str, str]) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in headers["x-ccr-route"].split(";"))


def last_model(provider: FakeProvider) -> str:
    received = provider.requests()[-1]
    if "/models/" in received["path"]:  # Gemini names the model in the path
        return received["path"].split("/models/", 1)[1].split(":", 1)[0]
    return received["body"]["model"]


SCENARIOS = [
    ("default", {"model": "claude-sonnet-4-5-20250929"}, "ant", "claude-sonnet-4-5"),
    ("background", {"model": "claude-3-5-haiku-20241022"}, "oai", "gpt-4o-mini"),
    (
        "think",
        {"model": "claude-sonnet-4-5", "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "ant",
        "claude-opus-4-1",
    ),
    (
        "longContext",
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "lorem ipsum " * 2000}]},
        "gem",
        "gemini-2.5-pro",
    ),
    (
        "webSearch",
        {"model": "claude-sonnet-4-5", "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "oai",
        "gpt-4o-search",
    ),
    (
        "image",
        {
            "model": "claude-sonnet-4-5",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                        {"type": "text", "text": "what is it"},
                    ],
                }
            ],
        },
        "oai",
        "gpt-4o-vision",
    ),
    ("explicit", {"model": "gem,gemini-2.5-pro"}, "gem", "gemini-2.5-pro"),
    (
        "subagent",
        {
            "model": "claude-sonnet-4-5",
            "system": [
                {"type": "text", "text": "You are Claude Code."},
                {
                    "type": "text",
                    "text": "<CCR-SUBAGENT-MODEL>ant,subagent-model</CCR-SUBAGENT-MODEL>You are a subagent.",
                },
            ],
        },
        "ant",
        "subagent-model",
    ),
]


@pytest.mark.parametrize(("scenario", "request_", "provider", "model"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_each_scenario_is_visible_in_x_ccr_route_and_at_the_provider(routed, fake, scenario, request_, provider, model):
    message, headers = ask(routed, **request_)
    route = route_of(headers)
    assert (route["scenario"], route["provider"], route["model"]) == (scenario, provider, model)
    assert route["attempts"] == "1"
    upstream_id = {"subagent-model": "sub-1"}.get(model, model)
    assert last_model(fake) == upstream_id
    assert message.content
    if scenario == "subagent":
        system = fake.requests()[-1]["body"]["system"]
        assert "CCR-SUBAGENT-MODEL" not in str(system) and system[-1]["text"] == "You are a subagent."


def test_weighted_alias_is_stable_per_session(routed):
    session = '{"device_id":"d","account_uuid":"a","session_id":"5b7e1d9c-3f7a-4c1e-9f0a-1c2d3e4f5a6b"}'
    providers = {route_of(ask(routed, model="stable", metadata={"user_id": session})[1])["provider"] for _ in range(8)}
    assert len(providers) == 1


def test_a_429_from_the_primary_falls_back_to_another_format(routed, primary, backup):
    before = routed.extproc_metric("ccr_tokens_total", provider="backup", model="gpt-backup", kind="output")
    primary.configure(status=429, fail_count=1)
    message, headers = ask(routed, model="claude-primary")
    route = route_of(headers)
    assert (route["provider"], route["attempts"]) == ("backup", "2")
    assert message.content[0].text.startswith("Hello from fake-openai model gpt-backup")
    assert backup.requests()[-1]["path"] == "/v1/chat/completions"
    # The usage log credits the attempt that answered (the chain endpoint's metadata), not the primary.
    wait_until(
        lambda: (
            routed.extproc_metric("ccr_tokens_total", provider="backup", model="gpt-backup", kind="output")
            == before + message.usage.output_tokens
        ),
        5,
        "the fallback's tokens",
    )


@pytest.mark.parametrize(
    "bad", [{"n": 2}, {"messages": []}, {"max_tokens": -5}], ids=["n", "no-messages", "max-tokens"]
)
def test_a_bad_openai_request_to_a_chain_model_gets_the_400_a_single_provider_gives(routed, primary, bad):
    primary.clear()
    body = {"model": "claude-primary", "messages": [{"role": "user", "content": "hi"}], **bad}
    headers = {"content-type": "application/json", "authorization": "Bearer client"}
    status, _, answer = http("POST", f"{routed.url}/v1/chat/completions", json.dumps(body).encode(), headers)
    assert status == 400, answer
    assert json.loads(answer)["error"]["type"] == "invalid_request_error"
    assert primary.requests() == []  # refused before any provider was asked


def test_a_500_from_the_primary_falls_back(routed, primary, backup):
    primary.configure(status=500, fail_count=1)
    _, headers = ask(routed, model="claude-primary")
    assert route_of(headers)["provider"] == "backup"


def test_connection_refused_falls_back(routed, backup):
    message, headers = ask(routed, model="claude-dead")
    assert route_of(headers)["provider"] == "backup"
    assert message.content[0].type == "text"


def test_a_primary_that_sends_nothing_in_time_falls_back(routed, primary):
    primary.configure(latency_ms=3000)
    try:
        message, headers = ask(routed, model="claude-primary")
    finally:
        primary.configure(reset=True)
    assert route_of(headers)["provider"] == "backup"
    assert message.content[0].text.startswith("Hello from fake-openai model gpt-backup")


def test_streams_fall_back_too(routed, primary):
    primary.configure(status=503, fail_count=1)
    client = anthropic.Anthropic(base_url=routed.url, api_key="k", max_retries=0)
    with client.messages.stream(
        model="claude-primary", max_tokens=64, messages=[{"role": "user", "content": "stream"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from fake-openai model gpt-backup: stream"


def test_killing_the_primary_mid_load_fails_no_request(routed, primary, backup):
    statuses: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        client = anthropic.Anthropic(base_url=routed.url, api_key="k", max_retries=0)
        while not stop.is_set():
            try:
                raw = client.messages.with_raw_response.create(
                    model="claude-primary", max_tokens=32, messages=[{"role": "user", "content": "x"}]
                )
                statuses[route_of(dict(raw.headers))["provider"]] += 1
            except anthropic.APIError as exc:
                statuses[f"error {exc}"] += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        import time

        time.sleep(1.0)
        primary.process.kill()
        primary.process.wait()
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    errors = {k: v for k, v in statuses.items() if k.startswith("error")}
    assert not errors, errors
    assert statuses["primary"] > 0 and statuses["backup"] > 0
    assert backup.requests()[-1]["path"] == "/v1/chat/completions"


def test_route_explain_prints_the_decision_without_sending(tmp_path, routed, fake):
    import json
    import subprocess
    import sys

    import yaml

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(copy.deepcopy(routed.policy), sort_keys=False))
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"model": "claude-3-5-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    )
    fake.clear()
    result = subprocess.run(
        [sys.executable, "-m", "ccr_gateway.cli", "route", "--explain", str(request), "-c", str(policy)],
        capture_output=True,
        text=True,
        env={**os.environ, **PROVIDER_KEYS},  # explain reads provider keys from its environment, as ext_proc does
    )
    assert result.returncode == 0, result.stderr
    assert "background" in result.stdout and "oai" in result.stdout and "gpt-4o-mini" in result.stdout
    assert fake.requests() == []
