"""The README's quick start, as a user runs it: `ccr-gateway up -c examples/gateway.yaml
--with-fake-provider`, then the Anthropic SDK. Only the ports differ, so CI can run it anywhere."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anthropic

from tests.e2e.gateway import free_port, http, wait_until

ROOT = Path(__file__).resolve().parents[2]


async def _list_and_call(url: str) -> str:
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = [tool.name for tool in (await session.list_tools()).tools]
        assert "example__echo" in names, names
        result = await session.call_tool("example__echo", {"text": "hello mcp"})
        return "".join(getattr(block, "text", "") for block in result.content)


def test_quickstart_with_the_example_policy(tmp_path: Path):
    listener, fake_port, admin = free_port(), free_port(), free_port()
    text = (ROOT / "examples/gateway.yaml").read_text()
    text = text.replace("port: 8080", f"port: {listener}").replace("127.0.0.1:9100", f"127.0.0.1:{fake_port}")
    for default in ("127.0.0.1:9192", "127.0.0.1:9193"):  # the MCP service and its egress listener
        assert default in text
        text = text.replace(default, f"127.0.0.1:{free_port()}")
    policy = tmp_path / "gateway.yaml"
    policy.write_text(text)
    log = tmp_path / "up.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccr_gateway.cli",
            "up",
            "-c",
            str(policy),
            "--with-fake-provider",
            "--fake-provider-port",
            str(fake_port),
            "--admin-port",
            str(admin),
        ],
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        wait_until(lambda: "is ready on" in log.read_text() or process.poll() is not None, 60, "ccr-gateway up")
        assert process.poll() is None, log.read_text()
        out = log.read_text()
        assert f"ANTHROPIC_BASE_URL=http://127.0.0.1:{listener}" in out
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{listener}", api_key="any", max_retries=0)
        message = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].text == "Hello from fake-anthropic model fake-claude-sonnet: hi"
        haiku = client.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=100, messages=[{"role": "user", "content": "bg"}]
        )
        assert haiku.content[0].text == "Hello from fake-openai model gpt-4o: bg"  # background -> OpenAI format
        dump = http("GET", f"http://127.0.0.1:{admin}/config_dump?resource=dynamic_active_clusters")[2].decode()
        assert "provider_fake-anthropic" in dump and "provider_fake-openai" in dump

        # The MCP endpoint `up` prints, in front of the bundled example server, for callers without a key.
        mcp_url = f"http://127.0.0.1:{listener}/mcp"
        assert re.search(rf"MCP endpoint: +{re.escape(mcp_url)}", out), out
        assert asyncio.run(_list_and_call(mcp_url)) == "hello mcp"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
