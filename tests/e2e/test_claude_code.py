"""The real Claude Code CLI through the real gateway, to a provider of each format.

One gateway (Envoy + control plane + ext_proc) serves three tenants, told apart by the key Claude
Code sends: each tenant's router sends everything to one provider format (OpenAI, Gemini, Anthropic
passthrough) of the fake provider. Each test runs ``claude -p`` (tests.claude_code), then checks both
what Claude Code printed and what the provider received: the model, the roles, the tools, and that
the client's key never left the gateway.

The CLI is installed by ``.ci/run`` (``npm install --prefix tests/claude_code``); without it these
tests skip locally and fail in CI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.claude_code import scenarios
from tests.claude_code.cli import PINNED_VERSION, ClaudeCode, Run, installed_or_skip
from tests.claude_code.scenarios import QUICK_PROMPT, SUBAGENT_PROMPT, TOOL_MARKER, Scenario
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http

CORPUS = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "claude_code").glob("*/*.json"))


@dataclass(frozen=True)
class Format:
    """One provider format and the tenant whose router sends Claude Code there."""

    api: str  # the fake provider's API name, as in its replies ("Hello from fake-<api> ...")
    key: str  # the client key Claude Code sends for this tenant
    default: str  # "provider,model" of the tenant's default route
    model_id: str  # the provider's id of that model: what the provider must be asked for
    background_id: str  # the provider's id of the tenant's background model
    subagent_target: str  # where the reviewer agent's CCR tag sends its requests
    subagent_api: str
    subagent_id: str


FORMATS = {
    "openai": Format(
        "openai",
        "sk-tenant-openai",
        "fake-openai,gpt-4o",
        "fake-gpt-4o",
        "fake-gpt-4o-mini",
        "fake-gemini,gemini-2.5-pro",
        "gemini",
        "fake-gemini-pro",
    ),
    "gemini": Format(
        "gemini",
        "sk-tenant-gemini",
        "fake-gemini,gemini-2.5-pro",
        "fake-gemini-pro",
        "fake-gemini-flash",
        "fake-openai,gpt-4o",
        "openai",
        "fake-gpt-4o",
    ),
    "anthropic": Format(
        "anthropic",
        "sk-tenant-anthropic",
        "fake-anthropic,claude-sonnet-4-5",
        "fake-sonnet",
        "claude-haiku-4-5",
        "fake-openai,gpt-4o",
        "openai",
        "fake-gpt-4o",
    ),
}
BACKGROUND = {
    "openai": "fake-openai,gpt-4o-mini",
    "gemini": "fake-gemini,gemini-2.5-flash",
    "anthropic": "fake-anthropic,claude-haiku-4-5",
}
FALLBACK_KEY = "sk-tenant-fallback"  # its default is an Anthropic model with a Gemini fallback
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def claude_code_policy(listener_port: int, fake: FakeProvider) -> dict:
    """The shared e2e policy, plus a background model per format and a tenant per format."""
    policy = base_policy(listener_port, fake, max_request_bytes=4 << 20)
    providers = {p["name"]: p for p in policy["providers"] if p["name"] != "unreachable"}
    providers["fake-openai"]["models"][0]["capabilities"].append("thinking")
    providers["fake-openai"]["models"].append({"name": "gpt-4o-mini", "id": "fake-gpt-4o-mini"})
    providers["fake-gemini"]["models"].append({"name": "gemini-2.5-flash", "id": "fake-gemini-flash"})
    providers["fake-gemini"]["forward_count_tokens"] = True  # fake-anthropic forwards them already
    providers["fake-anthropic"]["models"].append({"name": "claude-opus-4-1", "id": "fake-opus"})
    policy["providers"] = list(providers.values())
    policy["fallback"] = {"fake-anthropic,claude-opus-4-1": ["fake-gemini,gemini-2.5-pro"]}
    policy["router"] = {"default": "fake-anthropic,claude-sonnet-4-5", "background": BACKGROUND["anthropic"]}
    policy["tenants"] = [
        {
            "name": name,
            "api_key_sha256": [hashlib.sha256(f.key.encode()).hexdigest()],
            "router": {"default": f.default, "background": BACKGROUND[name]},
        }
        for name, f in FORMATS.items()
    ]
    policy["tenants"].append(
        {
            "name": "fallback",
            "api_key_sha256": [hashlib.sha256(FALLBACK_KEY.encode()).hexdigest()],
            "router": {"default": "fake-anthropic,claude-opus-4-1"},
        }
    )
    return policy


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> ClaudeCode:
    cli = installed_or_skip(tmp_path_factory.mktemp("claude-code"))
    assert cli.version() == PINNED_VERSION
    return cli


@pytest.fixture(scope="module")
def cc_gateway(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    gateway = Gateway.start(workdir, claude_code_policy(free_port(), fake), name="claude-code", workers=1)
    yield gateway
    gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


def run(claude: ClaudeCode, gateway: Gateway, f: Format, scenario: Scenario, *args: str) -> Run:
    done = claude.run(
        scenario.prompt,
        gateway.url,
        args=(*scenario.args, *(args or ("--output-format", "json"))),
        agents=scenario.agents,
        settings=scenario.settings,
        env={"ANTHROPIC_API_KEY": f.key},
    )
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def generations(fake: FakeProvider) -> list[dict]:
    """What the provider was asked to generate, in order (count_tokens and model lists left out)."""
    return [r for r in fake.requests() if "count" not in r["path"].lower() and r["method"] == "POST"]


def model_of(request: dict) -> str:
    if "/models/" in request["path"]:  # Gemini: .../models/<id>:streamGenerateContent
        return request["path"].rsplit("/models/", 1)[1].split(":", 1)[0]
    return request["body"]["model"]


def api_of(request: dict) -> str:
    path = request["path"]
    return "gemini" if "/models/" in path else "openai" if path.endswith("/chat/completions") else "anthropic"


def assert_no_client_key(requests: list[dict]) -> None:
    keys = [f.key for f in FORMATS.values()] + [FALLBACK_KEY]
    for request in requests:
        seen = json.dumps(request)
        assert not any(key in seen for key in keys), f"a client key reached the provider: {request['path']}"


def roles(request: dict) -> list[str]:
    body = request["body"]
    if api_of(request) == "gemini":
        return [c["role"] for c in body["contents"]]
    return [m["role"] for m in body["messages"]]


def tool_names(request: dict) -> set[str]:
    body = request["body"]
    if api_of(request) == "gemini":
        return {d["name"] for t in body.get("tools", []) for d in t.get("functionDeclarations", [])}
    if api_of(request) == "openai":
        return {t["function"]["name"] for t in body.get("tools", [])}
    return {t["name"] for t in body.get("tools", [])}


@pytest.fixture(params=list(FORMATS), ids=lambda name: f"to-{name}")
def fmt(request: pytest.FixtureRequest) -> Format:
    return FORMATS[request.param]


# --- the tests ----------------------------------------------------------------------------------


def test_claude_code_answers_through_the_gateway(claude, cc_gateway, fake, fmt: Format) -> None:
    result = run(claude, cc_gateway, fmt, scenarios.text()).json()
    assert result["is_error"] is False
    assert result["result"] == f"Hello from fake-{fmt.api} model {fmt.model_id}: Say hello to the gateway"

    [request] = generations(fake)
    assert (api_of(request), model_of(request)) == (fmt.api, fmt.model_id)
    assert_no_client_key([request])
    if fmt.api == "openai":
        # The top-level system prompt, the user turn, then Claude Code's environment block in place.
        assert roles(request) == ["system", "user", "system"]
        assert request["body"]["messages"][2]["content"].startswith("# Environment")
        assert "x-anthropic-billing-header" not in json.dumps(request["body"])
    elif fmt.api == "gemini":
        assert roles(request) == ["user"]  # the environment block joined the user turn, in order
        parts = [p["text"] for p in request["body"]["contents"][0]["parts"]]
        assert parts[-2:] == ["Say hello to the gateway", parts[-1]] and parts[-1].startswith("# Environment")
        assert "x-anthropic-billing-header" not in json.dumps(request["body"])
    else:
        assert roles(request) == ["user", "system"]  # passthrough: as Claude Code sent it
    assert {"Bash", "Read", "Agent"} <= tool_names(request)
    assert "DeferredToolPlaceholder" not in tool_names(request) or fmt.api == "anthropic"
    # Claude Code's context meter reads the usage of the final stream event: the provider's own count.
    provider_input_tokens = (request["size"] + 3) // 4
    usage = result["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == provider_input_tokens


def test_claude_code_runs_a_bash_tool_loop(claude, cc_gateway, fake, fmt: Format) -> None:
    result = run(claude, cc_gateway, fmt, scenarios.tool_loop()).json()
    # The fake model quotes the tool result (Gemini's functionResponse as the JSON it received).
    assert result["result"].startswith("Tool result: ") and TOOL_MARKER in result["result"]

    first, second = generations(fake)
    assert "Bash" in tool_names(first)
    assert_no_client_key([first, second])
    body = json.dumps(second["body"])
    assert TOOL_MARKER in body  # what the shell printed went back to the model
    if fmt.api == "openai":
        assert roles(second)[-2:] == ["assistant", "tool"]
        assert second["body"]["messages"][-2]["tool_calls"][0]["function"]["name"] == "Bash"
    elif fmt.api == "gemini":
        assert roles(second)[-2:] == ["model", "user"]
        call, answer = second["body"]["contents"][-2]["parts"][-1], second["body"]["contents"][-1]["parts"][0]
        assert call["functionCall"]["name"] == answer["functionResponse"]["name"] == "Bash"
    else:
        assert second["body"]["messages"][-1]["content"][0]["type"] == "tool_result"


def test_claude_code_streams_an_answer_with_thinking(claude, cc_gateway, fake, fmt: Format) -> None:
    # In stream-json mode Claude Code shows thinking ("display": "updates"), so the provider's
    # reasoning must reach it as a thinking block, streamed before the answer.
    done = run(claude, cc_gateway, fmt, scenarios.text(), "--output-format", "stream-json", "--verbose")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    blocks = [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]]
    kinds = [b["type"] for b in blocks]
    assert kinds.index("thinking") < kinds.index("text"), kinds
    assert any(b["type"] == "thinking" and b["thinking"] == "Thinking about: Say hello to the gateway" for b in blocks)
    assert any(b["type"] == "text" and b["text"].startswith(f"Hello from fake-{fmt.api}") for b in blocks)
    assert events[-1]["type"] == "result" and events[-1]["is_error"] is False

    [request] = generations(fake)
    body = request["body"]
    # Adaptive thinking at Claude Code's medium effort, in each provider's terms.
    if fmt.api == "openai":
        assert (body["reasoning_effort"], body["stream"]) == ("medium", True)
        assert body["stream_options"] == {"include_usage": True}
    elif fmt.api == "gemini":
        assert request["path"].endswith(":streamGenerateContent")
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 8192, "includeThoughts": True}
    else:
        assert body["thinking"]["type"] == "adaptive" and body["output_config"]["effort"] == "medium"


def test_claude_code_print_mode_gets_no_thinking_text(claude, cc_gateway, fake, fmt: Format) -> None:
    # Plain print mode asks for thinking with "display": "omitted": Gemini is not asked for thought
    # summaries, and reasoning an OpenAI-format model returns is not sent on (unit-tested in
    # tests/unit/test_claude_code_corpus.py: print mode's output shows no thinking either way).
    run(claude, cc_gateway, fmt, scenarios.text())
    [request] = generations(fake)
    body = request["body"]
    if fmt.api == "gemini":
        assert body["generationConfig"]["thinkingConfig"]["includeThoughts"] is False
    elif fmt.api == "openai":
        assert body["reasoning_effort"] == "medium"
    else:
        assert body["thinking"] == {"type": "adaptive", "display": "omitted"}


def test_claude_code_model_override_picks_the_provider(claude, cc_gateway, fake, fmt: Format) -> None:
    result = run(claude, cc_gateway, fmt, scenarios.model_override(fmt.subagent_target)).json()
    assert result["result"].startswith(f"Hello from fake-{fmt.subagent_api} model {fmt.subagent_id}:")
    [request] = generations(fake)
    assert (api_of(request), model_of(request)) == (fmt.subagent_api, fmt.subagent_id)
    assert_no_client_key([request])


def test_claude_code_subagent_goes_where_its_ccr_tag_says(claude, cc_gateway, fake, fmt: Format) -> None:
    result = run(claude, cc_gateway, fmt, scenarios.subagent(fmt.subagent_target)).json()
    assert result["is_error"] is False

    requests = generations(fake)
    assert_no_client_key(requests)
    assert "<CCR-SUBAGENT-MODEL>" not in json.dumps(requests)  # a routing instruction, never the model's
    subagent = [r for r in requests if SUBAGENT_PROMPT in json.dumps(r["body"]) and "Delegate" not in json.dumps(r)]
    assert [(api_of(r), model_of(r)) for r in subagent] == [(fmt.subagent_api, fmt.subagent_id)]
    main = [r for r in requests if r not in subagent]
    assert {(api_of(r), model_of(r)) for r in main} == {(fmt.api, fmt.model_id)}
    assert f"Hello from fake-{fmt.subagent_api} model {fmt.subagent_id}: {SUBAGENT_PROMPT}" in json.dumps(main[-1])


def test_claude_code_haiku_requests_go_to_background(claude, cc_gateway, fake, fmt: Format) -> None:
    run(claude, cc_gateway, fmt, scenarios.background())
    requests = generations(fake)
    haiku = [r for r in requests if QUICK_PROMPT in json.dumps(r["body"]) and "Ask quickly" not in json.dumps(r)]
    assert [model_of(r) for r in haiku] == [fmt.background_id]
    assert {model_of(r) for r in requests if r not in haiku} == {fmt.model_id}


@pytest.mark.parametrize("fixture", CORPUS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_captured_claude_code_body_is_served_by_every_format(cc_gateway, fake, fixture: Path) -> None:
    captured = json.loads(fixture.read_text())
    for f in FORMATS.values():
        headers = {**captured["headers"], "content-type": "application/json", "x-api-key": f.key}
        status, _, body = http(
            "POST", cc_gateway.url + captured["path"], json.dumps(captured["body"]).encode(), headers
        )
        assert status == 200, f"{fixture.name} to {f.api}: {status} {body[:400]!r}"
        assert body.startswith(b"event: message_start"), body[:200]


@pytest.mark.parametrize("fixture", CORPUS[:3], ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_count_tokens_of_a_claude_code_body_is_the_providers_own_or_counted(cc_gateway, fake, fixture: Path) -> None:
    captured = json.loads(fixture.read_text())
    request = {k: v for k, v in captured["body"].items() if k in ("model", "messages", "system", "tools")}
    for f in FORMATS.values():
        fake.clear()
        headers = {**captured["headers"], "content-type": "application/json", "x-api-key": f.key}
        url = cc_gateway.url + "/v1/messages/count_tokens"
        status, _, body = http("POST", url, json.dumps(request).encode(), headers)
        assert status == 200, body
        counted = json.loads(body)["input_tokens"]
        asked = fake.requests()
        if f.api == "openai":  # no OpenAI endpoint counts: the gateway counts (within 10%, unit-tested)
            assert asked == [] and counted > 1000
            continue
        [provider] = asked  # Anthropic and Gemini count for themselves
        assert provider["path"].endswith("/count_tokens" if f.api == "anthropic" else ":countTokens")
        assert counted == (provider["size"] + 3) // 4  # what the fake provider counts
        assert_no_client_key(asked)


def test_claude_code_falls_back_across_formats_inside_envoy(claude, cc_gateway, fake) -> None:
    # The Anthropic-format primary is overloaded once: Envoy retries on the chain's Gemini provider,
    # whose attempt the upstream ext_proc translates, and Claude Code never sees the failure.
    fake.configure(status=529, fail_count=1)
    tenant = Format("fallback", FALLBACK_KEY, "", "", "", "", "", "")
    result = run(claude, cc_gateway, tenant, scenarios.tool_loop()).json()
    assert result["result"].startswith("Tool result: ") and TOOL_MARKER in result["result"]
    first, second, third = generations(fake)
    assert [(api_of(r), model_of(r)) for r in (first, second, third)] == [
        ("anthropic", "fake-opus"),  # answered 529
        ("gemini", "fake-gemini-pro"),
        ("anthropic", "fake-opus"),  # the next turn starts at the primary again, which is back
    ]
    assert_no_client_key([first, second, third])
