"""The real OpenAI Codex CLI through the real gateway, to an Anthropic-format and a Chat-format provider.

Codex speaks only the Responses API to a custom provider (tests.codex.cli: ``wire_api =
"responses"``, the gateway key in ``Authorization: Bearer``). One gateway serves two tenants, told
apart by that key; each tenant's router sends everything to one provider format of the fake
provider. Each test runs ``codex exec --json`` with a model name no provider serves (the tenant's
default route decides), once with a name Codex has no metadata for and once with one from its own
catalog (they send different tools and fields: tests.codex.scenarios), then checks what Codex
printed and what the provider received: the model, the roles, the tools, the tool result, and
that the client's key never left the gateway.

While the gateway does not serve ``/v1/responses`` (it answers 404) these tests skip. The CLI is
installed by ``.ci/run`` (``npm install --prefix tests/codex``); without it they skip locally and
fail in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.codex import scenarios
from tests.codex.cli import PINNED_VERSION, Codex, Run, find_binary
from tests.codex.scenarios import SHELL_TOOL, TEXT_PROMPT, TOOL_MARKER, Scenario
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http


@dataclass(frozen=True)
class Format:
    """One provider format and the tenant whose router sends Codex there."""

    api: str  # the fake provider's API name, as in its replies ("Hello from fake-<api> ...")
    key: str  # the gateway key Codex sends for this tenant
    default: str  # "provider,model" of the tenant's default route
    model_id: str  # the provider's id of that model: what the provider must be asked for
    path: str  # where the provider is asked


FORMATS = {
    "anthropic": Format(
        "anthropic", "sk-codex-tenant-anthropic", "fake-anthropic,claude-sonnet-4-5", "fake-sonnet", "/v1/messages"
    ),
    "openai": Format("openai", "sk-codex-tenant-openai", "fake-openai,gpt-4o", "fake-gpt-4o", "/v1/chat/completions"),
}
CAPTURED = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "codex").glob("*/*.json"))
MODELS = {"gateway-model": scenarios.GATEWAY_MODEL, "known-model": scenarios.KNOWN_MODEL}


def codex_policy(listener_port: int, fake: FakeProvider) -> dict:
    """The shared e2e policy, plus a tenant per provider format (Codex's context is ~45 KB)."""
    policy = base_policy(listener_port, fake, max_request_bytes=4 << 20)
    policy["router"] = {"default": FORMATS["anthropic"].default}
    policy["tenants"] = [
        {
            "name": f"codex-{name}",
            "api_key_sha256": [hashlib.sha256(f.key.encode()).hexdigest()],
            "router": {"default": f.default},
        }
        for name, f in FORMATS.items()
    ]
    return policy


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory) -> Codex:
    binary = find_binary()
    if binary is None:
        message = "Codex CLI not installed: npm install --prefix tests/codex"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cli = Codex(binary, tmp_path_factory.mktemp("codex"))
    assert cli.version() == PINNED_VERSION
    return cli


@pytest.fixture(scope="module")
def codex_gateway(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    gateway = Gateway.start(workdir, codex_policy(free_port(), fake), name="codex", workers=1)
    try:
        # Checked once the gateway is up, so the skip is only ever about the endpoint.
        body = json.dumps({"model": scenarios.GATEWAY_MODEL, "input": "ping"}).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {FORMATS['anthropic'].key}"}
        status, _, answer = http("POST", gateway.url + "/v1/responses", body, headers)
        if status == 404:
            pytest.skip(f"the gateway does not serve /v1/responses yet (404: {answer[:200]!r})")
        yield gateway
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


@pytest.fixture(params=list(FORMATS), ids=lambda name: f"to-{name}")
def fmt(request: pytest.FixtureRequest) -> Format:
    return FORMATS[request.param]


@pytest.fixture(params=list(MODELS))
def model(request: pytest.FixtureRequest) -> str:
    return MODELS[request.param]


def run(codex: Codex, gateway: Gateway, f: Format, scenario: Scenario) -> Run:
    done = codex.run(scenario.prompt, gateway.url, model=scenario.model, key=f.key)
    assert done.returncode == 0, done.failure()
    assert not [e for e in done.events() if e.get("type") in ("turn.failed", "error")], done.failure()
    return done


def generations(fake: FakeProvider) -> list[dict]:
    """What the provider was asked to generate, in order (count_tokens and model lists left out)."""
    return [r for r in fake.requests() if "count" not in r["path"].lower() and r["method"] == "POST"]


def assert_no_client_key(requests: list[dict]) -> None:
    for request in requests:
        seen = json.dumps(request)
        assert not any(f.key in seen for f in FORMATS.values()), f"a client key reached the provider: {request['path']}"


def roles(request: dict) -> list[str]:
    return [m["role"] for m in request["body"]["messages"]]


def tool_names(request: dict, f: Format) -> set[str]:
    tools = request["body"].get("tools", [])
    if f.api == "openai":
        return {t["function"]["name"] for t in tools if t.get("type") == "function"}
    return {t["name"] for t in tools if "name" in t}


# --- the tests ----------------------------------------------------------------------------------


def test_codex_answers_through_the_gateway(codex, codex_gateway, fake, fmt: Format, model: str) -> None:
    done = run(codex, codex_gateway, fmt, scenarios.text(model))
    assert done.final_text() == f"Hello from fake-{fmt.api} model {fmt.model_id}: {TEXT_PROMPT}"
    assert done.commands() == []

    [request] = generations(fake)
    assert (request["path"], request["body"]["model"]) == (fmt.path, fmt.model_id)
    assert request["body"]["stream"] is True  # Codex streams: so must the provider
    assert_no_client_key([request])
    body = json.dumps(request["body"])
    # Codex's base instructions (its first developer message) and its environment block reached the model.
    assert "Codex" in body and "<environment_context>" in body
    if fmt.api == "openai":
        assert roles(request)[0] in ("system", "developer") and roles(request)[-1] == "user"
    else:
        assert request["body"]["system"] and roles(request)[-1] == "user"
    assert SHELL_TOOL in tool_names(request, fmt)
    # Codex shows the provider's own token count (the fake counts ~4 bytes per token).
    usage = done.usage()
    assert usage is not None and usage["input_tokens"] == (request["size"] + 3) // 4


def test_codex_runs_a_shell_tool_loop(codex, codex_gateway, fake, fmt: Format, model: str) -> None:
    done = run(codex, codex_gateway, fmt, scenarios.shell_loop(model))
    # The command really ran, and its output went back to the model, which quoted it.
    [command] = done.commands()
    assert command["exit_code"] == 0 and command["aggregated_output"].strip() == TOOL_MARKER
    assert done.final_text().startswith("Tool result: ") and TOOL_MARKER in done.final_text()

    first, second = generations(fake)
    assert {first["body"]["model"], second["body"]["model"]} == {fmt.model_id}
    assert SHELL_TOOL in tool_names(first, fmt)
    assert_no_client_key([first, second])
    assert TOOL_MARKER in json.dumps(second["body"])  # what the shell printed went back to the model
    if fmt.api == "openai":
        assert roles(second)[-2:] == ["assistant", "tool"]
        [call] = second["body"]["messages"][-2]["tool_calls"]
        assert call["function"]["name"] == SHELL_TOOL
        assert json.loads(call["function"]["arguments"]) == {"cmd": "echo ccr-tool-ok-$((6*7))"}
        assert second["body"]["messages"][-1]["tool_call_id"] == call["id"]
    else:
        assistant, result = second["body"]["messages"][-2:]
        [call] = [block for block in assistant["content"] if block["type"] == "tool_use"]
        assert (call["name"], call["input"]) == (SHELL_TOOL, {"cmd": "echo ccr-tool-ok-$((6*7))"})
        [answer] = [block for block in result["content"] if block["type"] == "tool_result"]
        assert answer["tool_use_id"] == call["id"]


@pytest.mark.parametrize("fixture", CAPTURED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_captured_codex_body_is_served_by_every_format(codex_gateway, fake, fixture: Path) -> None:
    # The captured requests, replayed without the CLI: each must stream an answer from each format.
    captured = json.loads(fixture.read_text())
    for f in FORMATS.values():
        fake.clear()
        # urllib does not decode compressed answers: ask for none (Codex takes zstd and gzip).
        headers = {k: v for k, v in captured["headers"].items() if k != "accept-encoding"}
        headers |= {"content-type": "application/json", "authorization": f"Bearer {f.key}"}
        body = json.dumps(captured["body"]).encode()
        status, _, answer = http("POST", codex_gateway.url + captured["path"], body, headers, timeout=30)
        assert status == 200, f"{fixture.parent.name}/{fixture.name} to {f.api}: {status} {answer[:400]!r}"
        assert answer.startswith(b"event: response.created"), answer[:200]
        assert b"event: response.completed" in answer, answer[-400:]
        [request] = generations(fake)
        assert (request["path"], request["body"]["model"]) == (f.path, f.model_id)
        assert_no_client_key([request])
