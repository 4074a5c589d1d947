"""fake_provider/mcp_servers.py: each transport started as a process and driven with the official SDK's
client, as the gateway and `ccr-gateway route --mcp` drive it. About 2 s per process: `import mcp`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

SERVERS = [sys.executable, "-m", "fake_provider.mcp_servers"]
BASE_TOOLS = ["echo", "add", "slow", "whoami"]
TOKEN = "t0ken-for-the-test"


async def all_tool_pages(client: Client) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor)
        pages.append([tool.name for tool in page.tools])
        cursor = page.next_cursor
        if cursor is None:
            return pages


@asynccontextmanager
async def stdio_client(*extra: str):
    params = StdioServerParameters(command=SERVERS[0], args=[*SERVERS[1:], "stdio", *extra])
    async with Client(params, mode="legacy", cache=None) as client:
        yield client


@pytest.fixture
def http_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [*SERVERS, "http", "--port", "0", "--name", "web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MCP_EXPECTED_TOKEN": TOKEN},
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert "listening on" in line, process.stderr.read()  # type: ignore[union-attr]
        yield process, line.split()[-1]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def test_the_stdio_server_pages_its_tools_and_serves_prompts_and_resources() -> None:
    async with stdio_client("--tools", "15", "--name", "files") as client:
        assert client.server_info is not None and client.server_info.name == "files"
        pages = await all_tool_pages(client)
        assert [len(page) for page in pages] == [10, 9]
        assert [name for page in pages for name in page] == BASE_TOOLS + [f"tool_{i:03d}" for i in range(15)]

        echoed = await client.call_tool("echo", {"text": "hi there"})
        assert echoed.content[0].text == "hi there" and not echoed.is_error
        assert (await client.call_tool("add", {"a": 2, "b": 3.5})).content[0].text == "5.5"
        assert (await client.call_tool("add", {"a": "2"})).is_error
        assert (await client.call_tool("tool_014", {"text": "x"})).content[0].text == "x"
        with pytest.raises(MCPError, match="Unknown tool"):
            await client.call_tool("nope", {})

        progress: list[tuple[float, float | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total))

        slow = await client.call_tool("slow", {"seconds": 0.3}, progress_callback=on_progress)
        assert slow.content[0].text == "waited 0.3s"
        assert progress == [(1, 3), (2, 3), (3, 3)]

        whoami = await client.call_tool("whoami", {})
        assert whoami.structured_content == {
            "server": "files",
            "transport": "stdio",
            "headers": [],
            "authorization_matches": None,
        }

        prompts = await client.list_prompts()
        assert [p.name for p in prompts.prompts] == ["greet"]
        greeting = await client.get_prompt("greet", {"name": "Ada"})
        assert greeting.messages[0].content.text == "Say hello to Ada."

        resources = await client.list_resources()
        assert [str(r.uri) for r in resources.resources] == ["fake://readme"]
        readme = await client.read_resource("fake://readme")
        assert "files" in readme.contents[0].text
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == ["fake://items/{id}"]
        item = await client.read_resource("fake://items/42")
        assert item.contents[0].text == "item 42"
        with pytest.raises(MCPError) as missing:
            await client.read_resource("fake://other")
        assert missing.value.code == -32002

        with pytest.raises(MCPError, match="Invalid cursor"):
            await client.list_tools(cursor="not-a-cursor")


def test_the_stdio_server_exits_cleanly_when_its_stdin_closes() -> None:
    process = subprocess.Popen([*SERVERS, "stdio"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.close()  # type: ignore[union-attr]
    assert process.wait(timeout=30) == 0
    assert b"Traceback" not in process.stderr.read()  # type: ignore[union-attr]


async def test_the_http_server_answers_in_one_page_shows_header_names_and_stops_on_sigterm(http_server) -> None:
    process, url = http_server
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Injected": "yes"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client,
    ):
        page = await client.list_tools()
        assert [tool.name for tool in page.tools] == BASE_TOOLS and page.next_cursor is None

        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        await client.call_tool("slow", {"seconds": 0.2}, progress_callback=on_progress)
        assert progress == [1, 2]

        whoami = await client.call_tool("whoami", {})
        seen = whoami.structured_content
        assert seen["transport"] == "http" and seen["authorization_matches"] is True
        assert {"authorization", "x-injected", "mcp-session-id"} <= set(seen["headers"])
        assert TOKEN not in json.dumps(seen) and TOKEN not in whoami.content[0].text

    async with (
        create_mcp_http_client(headers={"Authorization": "Bearer wrong"}) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client,
    ):
        whoami = await client.call_tool("whoami", {})
        assert whoami.structured_content["authorization_matches"] is False

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
