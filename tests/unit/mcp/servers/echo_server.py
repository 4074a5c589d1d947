"""A tiny stdio MCP server written with the official SDK, for tests/unit/mcp/test_stdio_adapter.py.

Run as ``python echo_server.py``. Tools: ``echo`` (returns its text), ``sleep`` (waits, then
answers), ``progress`` (reports progress, then answers), ``roots`` (asks the client for its roots:
a server-initiated request), ``spawn_grandchild`` (starts a ``sleep`` in the same process group and
returns its pid). Startup prints one line to stderr. A server that breaks the transport is
raw_server.py: the SDK guards its stdout.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings

from mcp.server.mcpserver import Context, MCPServer

warnings.simplefilter("ignore")  # list_roots is deprecated in the SDK; the wire message is not

server = MCPServer("echo")


@server.tool()
def echo(text: str) -> str:
    return text


@server.tool()
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
async def progress(steps: int, ctx: Context) -> str:
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    return "done"


@server.tool()
async def roots(ctx: Context) -> str:
    result = await ctx.request_context.session.list_roots()
    return ",".join(str(root.uri) for root in result.roots)


@server.tool()
def spawn_grandchild() -> str:
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return str(child.pid)


if __name__ == "__main__":
    print("echo server starting", file=sys.stderr, flush=True)
    server.run("stdio")
