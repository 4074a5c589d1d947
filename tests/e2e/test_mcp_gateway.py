"""The MCP gateway through the real Envoy listener (issue 23): `ccr-gateway up` with an `mcp:` section
fronts two MCP servers written with the official SDK (fake_provider.mcp_servers): one Streamable
HTTP server this test runs, reached through Envoy's egress listener with a credential the gateway
injects, and one stdio server the gateway launches itself. Virtual keys are required: the decision
hop authenticates every MCP request like model traffic and the MCP service applies the grants.

Clients: the official `mcp` SDK, and the real Claude Code CLI (`claude mcp add --transport http`
with the key header, then a `-p` run that calls one tool of each server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.claude_code.cli import ClaudeCode, installed_or_skip
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until

httpx2 = pytest.importorskip("httpx2")
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import PaginatedRequestParams  # noqa: E402

DOCS_TOKEN = "mcp-docs-upstream-token-e2e"  # the gateway's credential for the HTTP server: never the client's


async def _create_keys(path: Path) -> dict[str, tuple[str, str]]:
    """tenant label -> (presented key, key id)."""
    store = SqliteKeyStore(path)
    made: dict[str, tuple[str, str]] = {}
    try:
        for label, tenant in (("acme", "acme"), ("limited", "acme"), ("globex", "globex"), ("revoked", "acme")):
            presented, record = new_key(tenant, f"mcp-{label}", time.time())
            await store.create(record)
            made[label] = (presented, record.key_id)
    finally:
        await store.close()
    return made


class Setup:
    def __init__(self, gateway: Gateway, keys: dict[str, tuple[str, str]], directory: Path) -> None:
        self.gateway, self.keys, self.directory = gateway, keys, directory

    @property
    def mcp_url(self) -> str:
        return f"{self.gateway.url}/mcp"

    def key(self, label: str) -> str:
        return self.keys[label][0]


def _docs_server(directory: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MCP_EXPECTED_TOKEN": DOCS_TOKEN}
    command = [sys.executable, "-m", "fake_provider.mcp_servers", "http", "--port", str(port), "--name", "docs"]
    command += ["--tools", "25"]  # more than a page: the merged list paginates across servers
    log = open(directory / "docs-server.log", "wb")  # noqa: SIM115
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("mcp-gateway")
    docs_port = free_port()
    docs = _docs_server(directory, docs_port)
    os.environ["CCR_TEST_MCP_DOCS_TOKEN"] = DOCS_TOKEN  # `up` inherits it; the policy names it only
    gateway = None
    try:
        wait_until(lambda: _listening(docs_port), 30, "the docs MCP server")
        keys = asyncio.run(_create_keys(directory / "keys.db"))
        policy = base_policy(free_port(), fake)
        policy["router"] = {
            "default": "fake-anthropic,claude-sonnet-4-5",
            "background": "fake-anthropic,claude-haiku-4-5",
        }
        policy["auth"] = {"required": True, "keys": {"sqlite": str(directory / "keys.db")}}
        policy["mcp"] = {
            "api": f"127.0.0.1:{free_port()}",
            "egress": f"127.0.0.1:{free_port()}",
            "servers": [
                {
                    "name": "docs",
                    "url": f"http://127.0.0.1:{docs_port}/mcp",
                    "headers": {"authorization": "Bearer ${CCR_TEST_MCP_DOCS_TOKEN}"},
                },
                {
                    "name": "files",
                    "command": [sys.executable, "-m", "fake_provider.mcp_servers", "stdio", "--name", "files"],
                },
            ],
            "grants": [
                {"tenant": "acme", "allow": ["docs", "files"]},
                {"key": keys["limited"][1], "allow": ["docs", "files"], "deny": ["files/add"]},
                {"tenant": "globex", "allow": ["docs/echo"]},
            ],
        }
        gateway = Gateway.start(directory, policy, name="mcp-gateway", workers=1)
        yield Setup(gateway, keys, directory)
    finally:
        if gateway is not None:
            gateway.stop()
        docs.send_signal(signal.SIGTERM)
        docs.wait(timeout=15)
        os.environ.pop("CCR_TEST_MCP_DOCS_TOKEN", None)


def _listening(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/mcp", timeout=1)[0] > 0
    except OSError:
        return False


@contextlib.asynccontextmanager
async def client(url: str, key: str) -> AsyncIterator[ClientSession]:
    async with contextlib.AsyncExitStack() as stack:
        http_client = await stack.enter_async_context(httpx2.AsyncClient(headers={"x-api-key": key}, timeout=60))
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http_client))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


async def all_tools(session: ClientSession) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        names += [tool.name for tool in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return names


async def every_page(list_method: Any, field: str) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = await list_method(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        items += getattr(page, field)
        cursor = page.next_cursor
        if not cursor:
            return items


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def test_the_sdk_lists_and_calls_tools_of_both_servers_through_envoy(setup: Setup) -> None:
    async def scenario() -> None:
        async with client(setup.mcp_url, setup.key("acme")) as session:
            names = await all_tools(session)
            assert {"docs__echo", "docs__whoami", "files__echo", "files__add"} <= set(names)
            assert sum(name.startswith("docs__tool_") for name in names) == 25  # every page, once
            assert len(names) == len(set(names))

            echoed = await session.call_tool("docs__echo", {"text": "through envoy"})
            assert "through envoy" in text_of(echoed) and not echoed.is_error
            added = await session.call_tool("files__add", {"a": 2, "b": 3})
            assert "5" in text_of(added)

            # The gateway injected the docs server's credential; the client's key went no further.
            whoami = json.loads(text_of(await session.call_tool("docs__whoami", {})))
            assert whoami["authorization_matches"] is True, whoami
            assert "x-api-key" not in whoami["headers"], whoami

            prompts = await every_page(session.list_prompts, "prompts")
            assert {"docs__greet", "files__greet"} <= {p.name for p in prompts}
            uris = [str(r.uri) for r in await every_page(session.list_resources, "resources")]
            assert any(uri.startswith("ccr-mcp://files/") for uri in uris), uris
            read = await session.read_resource(next(u for u in uris if u.startswith("ccr-mcp://files/")))
            assert read.contents

    asyncio.run(scenario())


def test_a_key_without_the_grant_neither_sees_nor_calls_the_tool(setup: Setup) -> None:
    async def scenario() -> None:
        async with client(setup.mcp_url, setup.key("limited")) as session:
            names = await all_tools(session)
            assert "files__echo" in names and "files__add" not in names
            with pytest.raises(MCPError) as refused:
                await session.call_tool("files__add", {"a": 1, "b": 1})
            assert refused.value.error.code == -32602
            assert "5" not in str(refused.value)
            # The session is intact after the refusal.
            assert "ok" in text_of(await session.call_tool("files__echo", {"text": "ok"}))
        async with client(setup.mcp_url, setup.key("globex")) as other:
            assert await all_tools(other) == ["docs__echo"]

    asyncio.run(scenario())


def test_an_mcp_request_without_a_key_is_refused_by_the_hop(setup: Setup) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    status, answer_headers, _ = http("POST", setup.mcp_url, body, headers)
    assert status == 401
    assert "resource_metadata=" in answer_headers.get("www-authenticate", "")
    status, _, metadata = http("GET", f"{setup.gateway.url}/.well-known/oauth-protected-resource/mcp")
    assert status == 200 and json.loads(metadata)["resource"].endswith("/mcp")


def test_the_hop_decides_a_session_once_per_reuse_window_and_a_revoked_key_is_refused_after_it(
    setup: Setup,
) -> None:
    """The Lua filter reuses its decision on a caller for mcp.decision_reuse (default 2 s): a
    session's calls skip the decision service, and a key revoked meanwhile stops working on the
    endpoint within that window plus the key cache's poll."""
    calls = 20

    def hop_calls() -> int:
        return setup.gateway.envoy_stat("cluster.ccr_hop.upstream_rq_total")

    async def session_calls() -> None:
        async with client(setup.mcp_url, setup.key("revoked")) as session:
            for index in range(calls):
                assert text_of(await session.call_tool("docs__echo", {"text": f"{index}"})) == f"{index}"

    before = hop_calls()
    started = time.monotonic()
    asyncio.run(session_calls())
    decided = hop_calls() - before
    # initialize, initialized, the calls and the session's end: decided once per Envoy worker thread
    # and window (the session's connections may land on either thread, the run may span windows).
    # (Stated as a bound that holds on a slow machine too: 20 calls take well under a second here.)
    windows = int(time.monotonic() - started) // 2 + 2
    assert 0 < decided <= 2 * windows, (decided, windows)

    async def revoke() -> None:
        store = SqliteKeyStore(setup.directory / "keys.db")
        try:
            await store.revoke(setup.keys["revoked"][1])
        finally:
            await store.close()

    asyncio.run(revoke())
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    headers = {"content-type": "application/json", "accept": "application/json", "x-api-key": setup.key("revoked")}
    # The key cache's poll (0.5 s) and the decision's reuse (2 s), with room for a slow machine.
    wait_until(lambda: http("POST", setup.mcp_url, body, headers)[0] == 401, 10, "the revoked key's refusal")


def _exported() -> list[dict]:
    command = [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "1h"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines()]


def _audited() -> str:
    command = [sys.executable, "-m", "ccr_gateway.cli", "audit", "list", "--since", "1h", "--limit", "1000"]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def test_each_tool_call_is_in_the_ledger_and_the_audit_log(setup: Setup) -> None:
    async def scenario() -> None:
        async with client(setup.mcp_url, setup.key("acme")) as session:
            await session.call_tool("docs__echo", {"text": "ledgered"})

    asyncio.run(scenario())
    acme_key = setup.keys["acme"][1]

    def recorded() -> list[dict]:
        return [r for r in _exported() if r["client_api"] == "mcp" and r.get("key_id") == acme_key]

    wait_until(lambda: any(r["requested_model"] == "docs__echo" for r in recorded()), 20, "the tool call's record")
    record = next(r for r in recorded() if r["requested_model"] == "docs__echo")
    assert (record["tenant"], record["provider"], record["model"], record["status"]) == ("acme", "docs", "echo", 200)
    assert "ledgered" not in json.dumps(record)  # arguments are not stored
    time.sleep(1.0)  # past the usage log's flush: Envoy's own record of the request would be in by now
    assert [r["request_id"] for r in _exported()].count(record["request_id"]) == 1  # one row per call

    wait_until(lambda: f"key:{acme_key}" in _audited(), 20, "the tool call's audit entry")
    entries = [line for line in _audited().splitlines() if f"key:{acme_key}" in line and "mcp.tool_call" in line]
    assert any("docs/echo" in line for line in entries), entries
    assert "ledgered" not in _audited()


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> ClaudeCode:
    return installed_or_skip(tmp_path_factory.mktemp("claude-code-mcp"))


def test_claude_code_calls_a_tool_of_each_server_through_the_gateway(setup: Setup, claude: ClaudeCode, fake) -> None:
    key = setup.key("acme")
    prompt = '[fake-tool mcp__gw__docs__echo {"text": "from-docs"}] [fake-tool mcp__gw__files__add {"a": 20, "b": 22}]'
    done = claude.run(
        prompt,
        setup.gateway.url,
        args=("--output-format", "json", "--allowedTools", "mcp__gw"),
        # With a custom base URL Claude Code defers MCP tools behind its ToolSearch tool, which the fake
        # model does not drive: the tools are offered up front instead, as users of gateways set it.
        env={"ANTHROPIC_API_KEY": key, "ENABLE_TOOL_SEARCH": "false"},
        mcp_servers=(("gw", setup.mcp_url, (f"x-api-key: {key}",)),),
    )
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    generations = [r for r in fake.requests() if r["method"] == "POST" and "count" not in r["path"].lower()]
    offered = {t["name"] for t in generations[0]["body"].get("tools", [])}
    assert {"mcp__gw__docs__echo", "mcp__gw__files__add"} <= offered, sorted(offered)
    result = done.json()
    assert result["is_error"] is False, result
    assert "42" in result["result"], result  # the last tool's answer, quoted by the fake model
    bodies = json.dumps([r["body"] for r in generations])
    assert "from-docs" in bodies  # the first tool's result went back to the model
