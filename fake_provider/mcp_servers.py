"""Two small MCP servers, for tests and for the example `ccr-gateway up` launches with nothing installed.

    python -m fake_provider.mcp_servers stdio [--name N] [--tools N]
    python -m fake_provider.mcp_servers http --port P [--host H] [--name N] [--tools N] [--json-response]

One server definition (the SDK's low-level ``Server``: MCPServer, the old FastMCP, does not
paginate), served over stdio or Streamable HTTP at ``/mcp``. It offers:

- tools: ``echo(text)``, ``add(a, b)``, ``slow(seconds)`` (sends ``notifications/progress`` while
  it waits, when the caller asked for progress), ``whoami()`` (what reached the server: header
  *names* only, and whether ``authorization`` matches ``$MCP_EXPECTED_TOKEN``, so a test can prove
  the gateway injected the upstream credential without any value being echoed); ``--tools N`` adds
  ``tool_000`` ... (each echoes its ``text``);
- ``tools/list`` in pages of ``--page-size`` (10): only a server given ``--tools`` has more than
  one page. The cursor is the offset, as text; any other cursor is -32602;
- one prompt (``greet(name)``), one resource (``fake://readme``) and one resource template
  (``fake://items/{id}``); an unknown URI is -32002, MCP's resource-not-found.

stdio exits when its stdin closes (the spec's shutdown); http prints one line,
``mcp server <name> listening on http://<host>:<port>/mcp`` (``--port 0``: a free port), and exits 0
on SIGTERM or SIGINT. DNS-rebinding protection is off: it is a test double, and the Host that
Envoy forwards is the client's. Only what the chosen transport needs is imported (uvicorn only for
http), but ``import mcp`` alone takes about 2 s: the SDK's package imports its client and types.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext

DEFAULT_NAME = "example"
PAGE_SIZE = 10
MAX_SLOW_S = 300.0
PROGRESS_STEP_S = 0.1
RESOURCE_NOT_FOUND = -32002  # MCP's code; mcp_types has no constant for it
EXPECTED_TOKEN_ENV = "MCP_EXPECTED_TOKEN"
README_URI = "fake://readme"
ITEM_TEMPLATE = "fake://items/{id}"
_ITEM_PREFIX = "fake://items/"

_OBJECT = "object"
_BASE_TOOLS = (
    types.Tool(
        name="echo",
        description="Returns its text.",
        input_schema={"type": _OBJECT, "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    types.Tool(
        name="add",
        description="Adds two numbers.",
        input_schema={
            "type": _OBJECT,
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    ),
    types.Tool(
        name="slow",
        description=f"Waits this many seconds (at most {MAX_SLOW_S:g}), reporting progress while it waits.",
        input_schema={"type": _OBJECT, "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]},
    ),
    types.Tool(
        name="whoami",
        description=f"The header names this request arrived with, and whether authorization matches ${EXPECTED_TOKEN_ENV}.",
        input_schema={"type": _OBJECT, "properties": {}},
    ),
)
_GREET = types.Prompt(
    name="greet",
    description="A greeting for someone.",
    arguments=[types.PromptArgument(name="name", description="who to greet", required=True)],
)


def tool_list(extra: int) -> list[types.Tool]:
    generated = [
        types.Tool(
            name=f"tool_{i:03d}",
            description=f"Generated tool {i}: returns its text.",
            input_schema={"type": _OBJECT, "properties": {"text": {"type": "string"}}},
        )
        for i in range(extra)
    ]
    return [*_BASE_TOOLS, *generated]


def _text(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=value)])


def _refused(message: str) -> types.CallToolResult:
    """A tool's own failure: a result with isError, which the model sees (not a protocol error)."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whoami(name: str, ctx: ServerRequestContext[Any, Any]) -> types.CallToolResult:
    request = ctx.request  # the Starlette request over HTTP, None over stdio
    headers = getattr(request, "headers", None)
    expected = os.environ.get(EXPECTED_TOKEN_ENV)
    matches: bool | None = None
    if headers is not None and expected:
        got = headers.get("authorization", "")
        # Constant time, and the value itself is never returned: only whether it matched.
        matches = hmac.compare_digest(got.encode(), expected.encode()) or hmac.compare_digest(
            got.encode(), f"Bearer {expected}".encode()
        )
    answer = {
        "server": name,
        "transport": "stdio" if headers is None else "http",
        "headers": sorted({key.lower() for key in headers}) if headers is not None else [],
        "authorization_matches": matches,
    }
    result = _text(json.dumps(answer, sort_keys=True))
    result.structured_content = answer
    return result


def build_server(name: str = DEFAULT_NAME, extra_tools: int = 0, page_size: int = PAGE_SIZE) -> Server[Any]:
    tools = tool_list(extra_tools)
    by_name = {tool.name: tool for tool in tools}

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        cursor = params.cursor if params is not None else None
        start = 0
        if cursor is not None:
            if not cursor.isdigit() or int(cursor) >= len(tools):
                raise MCPError(types.INVALID_PARAMS, f"Invalid cursor: {cursor}")
            start = int(cursor)
        end = start + page_size
        return types.ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name not in by_name:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        if params.name == "add":
            a, b = args.get("a"), args.get("b")
            if not (_number(a) and _number(b)):
                return _refused("add needs two numbers, a and b")
            total = a + b
            return _text(str(int(total) if float(total).is_integer() else total))
        if params.name == "slow":
            seconds = args.get("seconds")
            if not _number(seconds) or not 0 <= seconds <= MAX_SLOW_S:
                return _refused(f"slow needs seconds between 0 and {MAX_SLOW_S:g}")
            steps = max(1, math.ceil(seconds / PROGRESS_STEP_S))
            for step in range(1, steps + 1):
                await anyio.sleep(seconds / steps)
                # A no-op unless the call carried a progress token.
                await ctx.session.report_progress(step, steps, f"waited {seconds * step / steps:.1f}s")
            return _text(f"waited {seconds:g}s")
        if params.name == "whoami":
            return _whoami(name, ctx)
        text = args.get("text")  # echo and the generated tools
        if not isinstance(text, str):
            return _refused(f"{params.name} needs a text")
        return _text(text)

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[_GREET])

    async def get_prompt(
        ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        if params.name != _GREET.name:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        who = (params.arguments or {}).get("name")
        if not who:
            raise MCPError(types.INVALID_PARAMS, "Missing required argument: name")
        message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=f"Say hello to {who}."))
        return types.GetPromptResult(description=_GREET.description, messages=[message])

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        readme = types.Resource(name="readme", uri=README_URI, mime_type="text/plain")
        return types.ListResourcesResult(resources=[readme])

    async def list_templates(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourceTemplatesResult:
        item = types.ResourceTemplate(name="item", uri_template=ITEM_TEMPLATE, mime_type="text/plain")
        return types.ListResourceTemplatesResult(resource_templates=[item])

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == README_URI:
            text = f"The {name} MCP server of ccr-gateway's fake provider."
        elif uri.startswith(_ITEM_PREFIX) and uri[len(_ITEM_PREFIX) :]:
            text = f"item {uri[len(_ITEM_PREFIX) :]}"
        else:
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)]
        )

    return Server(
        name,
        version="1.0.0",
        instructions=f"A test server ({name}): echo, add, slow, whoami.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


async def serve_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        # Returns when stdin closes: the client's shutdown.
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(server: Server[Any], host: str, port: int, json_response: bool) -> None:
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    app = server.streamable_http_app(
        json_response=json_response,
        host=host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    config.timeout_graceful_shutdown = 2  # open SSE streams would otherwise hold the exit
    http = uvicorn.Server(config)

    # While it serves, uvicorn handles SIGTERM/SIGINT itself (a graceful shutdown); then it restores
    # these handlers and re-raises the signal it caught, which with the default handlers would end
    # the process by that signal. These only ask for the exit, before serving (startup) or after.
    def stop(*_: object) -> None:
        http.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)

    async def announce() -> None:
        while not http.started:
            if http.should_exit:
                return
            await anyio.sleep(0.01)
        bound = http.servers[0].sockets[0].getsockname()
        print(f"mcp server {server.name} listening on http://{bound[0]}:{bound[1]}/mcp", flush=True)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(announce)
        await http.serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fake_provider.mcp_servers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="transport", required=True)
    for transport in ("stdio", "http"):
        command = sub.add_parser(transport)
        command.add_argument("--name", default=DEFAULT_NAME, help=f"the server's name (default {DEFAULT_NAME})")
        command.add_argument("--tools", type=int, default=0, metavar="N", help="add N generated tools, tool_000 ...")
        command.add_argument("--page-size", type=int, default=PAGE_SIZE, help=f"tools/list page (default {PAGE_SIZE})")
    http = sub.choices["http"]
    http.add_argument("--port", type=int, required=True, help="0: a free port (printed)")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--json-response", action="store_true", help="answer POSTs with JSON, not SSE")
    args = parser.parse_args(argv)
    if args.tools < 0 or args.page_size < 1:
        parser.error("--tools must be 0 or more and --page-size 1 or more")
    server = build_server(args.name, args.tools, args.page_size)
    if args.transport == "stdio":
        anyio.run(serve_stdio, server)
    else:
        anyio.run(serve_http, server, args.host, args.port, args.json_response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
