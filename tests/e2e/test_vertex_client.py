"""The Anthropic SDK's Vertex client (``AnthropicVertex``) through the real gateway, and Claude on
Vertex as a provider.

One gateway for the module: the shared e2e policy plus a ``vertex`` provider on the fake provider's
Vertex endpoints (fake_provider.vertex_api), whose OAuth token the control plane reads from the
environment (``credentials: env:...``) and Envoy injects. The SDK's Vertex client calls the
gateway's rawPredict paths (its base URL the gateway's ``/v1``, the gateway key as its access
token, sent as ``Authorization: Bearer``) and reaches both a Vertex-format and an Anthropic-format
provider, routed by the model in the path like any Anthropic request. The real Claude Code CLI in
Vertex mode does the same: a text turn and a Bash tool loop, to either provider.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.claude_code import scenarios
from tests.claude_code.cli import ClaudeCode, installed_or_skip
from tests.claude_code.scenarios import TOOL_MARKER
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port

VERTEX_TOKEN = "ya29.e2e-vertex-token"
TOKEN_VAR = "CCR_TEST_VERTEX_TOKEN"
CLIENT_KEY = "sk-vertex-sdk-client"
VERTEX_ID = "claude-sonnet-4-5@20250929"
VERTEX_MODELS = "/v1/projects/gw-project/locations/us-east5/publishers/anthropic/models"
USER = [{"role": "user", "content": "Hello through Vertex"}]


def vertex_policy(listener_port: int, fake: FakeProvider) -> dict:
    policy = base_policy(listener_port, fake)
    policy["providers"].append(
        {
            "name": "fake-vertex",
            "api": "vertex",
            "project": "gw-project",
            "region": "us-east5",
            "base_url": fake.url,
            "credentials": f"env:{TOKEN_VAR}",
            "forward_count_tokens": True,
            "models": [
                {
                    "name": "claude-vertex",
                    "id": VERTEX_ID,
                    "max_output_tokens": 64000,
                    "capabilities": ["tools", "vision", "thinking"],
                }
            ],
        }
    )
    return policy


@pytest.fixture(scope="module")
def gw(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    fake.configure(vertex_token=VERTEX_TOKEN)
    os.environ[TOKEN_VAR] = VERTEX_TOKEN  # read by the gateway's control plane, never by a client
    try:
        gateway = Gateway.start(workdir, vertex_policy(free_port(), fake), name="vertex-client", workers=1)
        yield gateway
        gateway.stop()
        assert gateway.process.returncode == 0, gateway.log()[-4000:]
    finally:
        os.environ.pop(TOKEN_VAR, None)
        fake.configure(vertex_token="")


@pytest.fixture
def vertex(gw: Gateway) -> Iterator[anthropic.AnthropicVertex]:
    client = anthropic.AnthropicVertex(
        access_token=CLIENT_KEY,
        region="europe-west4",
        project_id="client-project",
        base_url=f"{gw.url}/v1",
        max_retries=0,
    )
    yield client
    client.close()


def generations(fake: FakeProvider) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "POST" and "count" not in r["path"]]


def test_the_vertex_client_reaches_the_vertex_provider_with_the_gateways_token(
    vertex: anthropic.AnthropicVertex, fake: FakeProvider
) -> None:
    message = vertex.messages.create(model="claude-vertex", max_tokens=200, messages=USER)
    assert f"Hello from fake-vertex model {VERTEX_ID}" in message.content[0].text  # type: ignore[union-attr]
    (sent,) = generations(fake)
    assert sent["path"] == f"{VERTEX_MODELS}/{VERTEX_ID}:rawPredict"
    assert sent["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"  # Envoy's, not the client's key
    assert CLIENT_KEY not in str(sent["headers"])
    assert "model" not in sent["body"] and sent["body"]["anthropic_version"] == "vertex-2023-10-16"


def test_the_vertex_client_reaches_an_anthropic_format_provider(
    vertex: anthropic.AnthropicVertex, fake: FakeProvider
) -> None:
    message = vertex.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=USER)
    assert "Hello from fake-anthropic model fake-sonnet" in message.content[0].text  # type: ignore[union-attr]
    (sent,) = generations(fake)
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["model"] == "fake-sonnet" and "anthropic_version" not in sent["body"]
    assert sent["headers"]["x-api-key"] == "sk-ant-provider-key"


@pytest.mark.parametrize(("model", "says"), [("claude-vertex", "fake-vertex"), ("claude-sonnet-4-5", "fake-anthropic")])
def test_the_vertex_client_streams_from_either(
    vertex: anthropic.AnthropicVertex, fake: FakeProvider, model: str, says: str
) -> None:
    with vertex.messages.stream(model=model, max_tokens=200, messages=USER) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert f"Hello from {says}" in text and "Hello through Vertex" in text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    (sent,) = generations(fake)
    assert sent["path"].endswith(":streamRawPredict") if says == "fake-vertex" else sent["path"] == "/v1/messages"


def test_the_vertex_client_counts_tokens_at_either(vertex: anthropic.AnthropicVertex, fake: FakeProvider) -> None:
    for model, path in (
        ("claude-vertex", f"{VERTEX_MODELS}/count-tokens:rawPredict"),
        ("claude-sonnet-4-5", "/v1/messages/count_tokens"),
    ):
        fake.clear()
        assert vertex.messages.count_tokens(model=model, messages=USER).input_tokens > 0
        assert [r["path"] for r in fake.requests()] == [path]


def test_an_anthropic_client_reaches_the_vertex_provider(gw: Gateway, fake: FakeProvider) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    message = client.messages.create(model="claude-vertex", max_tokens=100, messages=USER)
    assert "fake-vertex" in message.content[0].text  # type: ignore[union-attr]
    assert generations(fake)[0]["path"] == f"{VERTEX_MODELS}/{VERTEX_ID}:rawPredict"


def test_a_google_error_reaches_the_vertex_client_in_anthropics_shape(vertex: anthropic.AnthropicVertex) -> None:
    failing = vertex.with_options(default_headers={"x-fake-status": "429"})
    with pytest.raises(anthropic.RateLimitError) as refused:
        failing.messages.create(model="claude-vertex", max_tokens=10, messages=USER)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"].startswith("RESOURCE_EXHAUSTED: ")


# --- Claude Code in Vertex mode ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> ClaudeCode:
    return installed_or_skip(tmp_path_factory.mktemp("claude-code-vertex"))


def vertex_mode(claude: ClaudeCode, gw: Gateway, model: str, scenario: scenarios.Scenario) -> dict:
    """``claude -p`` with CLAUDE_CODE_USE_VERTEX against the gateway: no Google token
    (SKIP_VERTEX_AUTH), the gateway key as a custom header (Claude Code sends it as it is)."""
    env = {
        "CLAUDE_CODE_USE_VERTEX": "1",
        "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1",
        "ANTHROPIC_VERTEX_BASE_URL": f"{gw.url}/v1",
        "ANTHROPIC_VERTEX_PROJECT_ID": "client-project",
        "CLOUD_ML_REGION": "us-east5",
        "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {CLIENT_KEY}",
        "ANTHROPIC_API_KEY": "",
    }
    done = claude.run(scenario.prompt, gw.url, args=("--model", model, "--output-format", "json"), env=env)
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.json()


CLAUDE_CODE_TARGETS = {
    "to-vertex": ("claude-vertex", f"Hello from fake-vertex model {VERTEX_ID}", f"{VERTEX_MODELS}/{VERTEX_ID}"),
    "to-anthropic": ("claude-sonnet-4-5", "Hello from fake-anthropic model fake-sonnet", "/v1/messages"),
}


@pytest.mark.parametrize("target", list(CLAUDE_CODE_TARGETS))
def test_claude_code_in_vertex_mode_answers(claude: ClaudeCode, gw: Gateway, fake: FakeProvider, target: str) -> None:
    model, greeting, path = CLAUDE_CODE_TARGETS[target]
    result = vertex_mode(claude, gw, model, scenarios.text())
    assert result["is_error"] is False
    assert result["result"] == f"{greeting}: Say hello to the gateway"
    sent = generations(fake)
    assert sent and all(r["path"].startswith(path) for r in sent)
    assert not any(CLIENT_KEY in str(r) for r in fake.requests())


@pytest.mark.parametrize("target", list(CLAUDE_CODE_TARGETS))
def test_claude_code_in_vertex_mode_runs_a_bash_tool_loop(
    claude: ClaudeCode, gw: Gateway, fake: FakeProvider, target: str
) -> None:
    model, _, path = CLAUDE_CODE_TARGETS[target]
    result = vertex_mode(claude, gw, model, scenarios.tool_loop())
    assert result["result"].startswith("Tool result: ") and TOOL_MARKER in result["result"]
    first, second = generations(fake)
    assert first["path"].startswith(path) and second["path"].startswith(path)
    assert second["body"]["messages"][-1]["content"][0]["type"] == "tool_result"
