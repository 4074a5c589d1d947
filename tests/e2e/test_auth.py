"""Virtual keys through the real gateway: a dedicated gateway (one worker, so the local per-worker
rate limit is the whole limit) whose policy requires keys, kept in a SQLite store of its own
created here with the store's API. Both SDKs, each refusal in each SDK's error type, a 10 rpm key,
the usage ledger's tenant and key id, and the real Claude Code CLI with a virtual key."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.claude_code import scenarios
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, wait_until
from tests.e2e.test_claude_code import claude  # noqa: F401  (the CLI fixture)

HELLO = [{"role": "user", "content": "hi"}]


async def _create_keys(path: Path) -> dict[str, str]:
    store = SqliteKeyStore(path)
    now = time.time()
    made: dict[str, str] = {}
    try:
        for name, limits in (
            ("valid", {}),
            ("ten-rpm", {"rpm": 10}),
            ("expired", {"expires_at": now - 60}),
            ("revoked", {}),
            ("claude-code", {}),
        ):
            presented, record = new_key("acme", name, now, **limits)
            await store.create(record)
            made[name] = presented
            if name == "revoked":
                await store.revoke(record.key_id)
    finally:
        await store.close()
    return made


@pytest.fixture(scope="module")
def keys(workdir: Path) -> dict[str, str]:
    return asyncio.run(_create_keys(workdir / "auth-keys.db"))


@pytest.fixture(scope="module")
def auth_gateway(workdir: Path, fake: FakeProvider, keys: dict[str, str]) -> Iterator[Gateway]:
    policy = base_policy(free_port(), fake)
    policy["router"] = {"default": "fake-anthropic,claude-sonnet-4-5"}  # Claude Code asks for its own models
    policy["auth"] = {"required": True, "keys": {"sqlite": str(workdir / "auth-keys.db")}}
    gateway = Gateway.start(workdir, policy, name="auth", workers=1)
    yield gateway
    gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


def key_id(presented: str) -> str:
    return presented[len("sk-ccr-") :].split("_", 1)[0]


def test_both_sdks_with_a_valid_key_get_answers(auth_gateway, keys) -> None:
    claude_client = anthropic.Anthropic(base_url=auth_gateway.url, api_key=keys["valid"], max_retries=0)
    message = claude_client.messages.create(model="claude-sonnet-4-5", max_tokens=32, messages=HELLO)
    assert message.content[0].text
    gpt = openai.OpenAI(base_url=f"{auth_gateway.url}/v1", api_key=keys["valid"], max_retries=0)
    assert gpt.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content


@pytest.mark.parametrize("which", ["wrong", "expired", "revoked", "none"])
def test_a_bad_key_is_an_authentication_error_in_each_sdk(auth_gateway, keys, which) -> None:
    wrong = keys["valid"][:-1] + ("A" if keys["valid"][-1] != "A" else "B")
    api_key = {"wrong": wrong, "expired": keys["expired"], "revoked": keys["revoked"], "none": "sk-ant-not-ours"}[which]
    claude_client = anthropic.Anthropic(base_url=auth_gateway.url, api_key=api_key, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        claude_client.messages.create(model="claude-sonnet-4-5", max_tokens=32, messages=HELLO)
    assert refused.value.status_code == 401
    gpt = openai.OpenAI(base_url=f"{auth_gateway.url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused_openai:
        gpt.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused_openai.value.status_code == 401


def test_a_ten_rpm_key_gets_ten_answers_then_429_with_retry_after(auth_gateway, keys) -> None:
    client = anthropic.Anthropic(base_url=auth_gateway.url, api_key=keys["ten-rpm"], max_retries=0)
    for _ in range(10):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO)
    headers = refused.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["anthropic-ratelimit-requests-limit"] == "10"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    gpt = openai.OpenAI(base_url=f"{auth_gateway.url}/v1", api_key=keys["ten-rpm"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused_openai:
        gpt.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused_openai.value.response.headers["x-ratelimit-limit-requests"] == "10"


def _exported() -> list[dict]:
    command = [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "1h"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_usage_records_carry_the_keys_tenant_and_id(auth_gateway, keys) -> None:
    client = anthropic.Anthropic(base_url=auth_gateway.url, api_key=keys["valid"], max_retries=0)
    answer = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO)
    request_id = answer.headers["request-id"]

    def record() -> dict | None:
        return next((r for r in _exported() if r["request_id"] == request_id), None)

    wait_until(lambda: record() is not None, 15, "the keyed request's usage record")
    assert (record()["tenant"], record()["key_id"]) == ("acme", key_id(keys["valid"]))


def test_claude_code_works_with_a_virtual_key(claude, auth_gateway, fake, keys) -> None:  # noqa: F811
    scenario = scenarios.text()
    done = claude.run(
        scenario.prompt,
        auth_gateway.url,
        args=(*scenario.args, "--output-format", "json"),
        agents=scenario.agents,
        settings=scenario.settings,
        env={"ANTHROPIC_API_KEY": keys["claude-code"]},
    )
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert json.loads(done.stdout)["is_error"] is False
    assert all(keys["claude-code"] not in json.dumps(request) for request in fake.requests())
