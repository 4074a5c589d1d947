"""Two small MCP servers written with the official SDK, for tests/integration/test_mcp_service.py.

``python mcp_upstreams.py http PORT``: "weather", over Streamable HTTP on 127.0.0.1:PORT/mcp, with
tools (``forecast``, ``slow``, ``progress``, ``secret_header`` which tells whether the gateway sent
the credential header the policy names), a prompt and resources.
``python mcp_upstreams.py stdio``: "notes", over stdio, with tools (``add_note``, ``echo``), a
prompt and a resource; ``count`` reports progress.

Run as processes, so a test can kill one mid-call (SIGKILL) and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import sys
import warnings

from mcp.server.mcpserver import Context, MCPServer

warnings.simplefilter("ignore")


def weather() -> MCPServer:
    server = MCPServer("weather", instructions="Forecasts for any city.")

    @server.tool()
    def forecast(city: str) -> str:
        return f"sunny in {city}"

    @server.tool()
    def humidity(city: str) -> str:
        return f"40% in {city}"

    @server.tool()
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    async def progress(steps: int, ctx: Context) -> str:
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
        return "done"

    @server.tool()
    def secret_header(ctx: Context) -> str:
        request = ctx.request_context.request
        headers = getattr(request, "headers", {}) or {}
        auth = headers.get("authorization", "")
        leaked = headers.get("x-api-key", "") or headers.get("x-client-secret", "")
        return f"auth={auth} leaked={leaked or 'none'}"

    @server.prompt()
    def outlook(city: str) -> str:
        return f"Write the week's outlook for {city}."

    @server.resource("weather://stations/main", name="main station", mime_type="text/plain")
    def station() -> str:
        return "main station: 12 C"

    return server


def notes() -> MCPServer:
    server = MCPServer("notes")

    @server.tool()
    def add_note(text: str) -> str:
        return f"noted: {text}"

    @server.tool()
    def echo(text: str) -> str:
        return text

    @server.tool()
    async def count(to: int, ctx: Context) -> str:
        for step in range(1, to + 1):
            await ctx.report_progress(step, to, f"counted {step}")
        return f"counted to {to}"

    @server.prompt()
    def summarize(topic: str) -> str:
        return f"Summarize the notes about {topic}."

    @server.resource("notes://all", name="all notes", mime_type="text/plain")
    def all_notes() -> str:
        return "note 1\nnote 2"

    return server


def main() -> None:
    kind = sys.argv[1]
    if kind == "stdio":
        notes().run("stdio")
        return
    import uvicorn

    port = int(sys.argv[2])
    app = weather().streamable_http_app(streamable_http_path="/mcp")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
