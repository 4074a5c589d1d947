"""The MCP service's spans (extproc/mcp_service.py): a server span per client request, the child of
the traceparent Envoy sent, and a client span per upstream call, whose context is the traceparent
the upstream receives. Spans go to an in-memory exporter (``tracing.configure``), as the hop's do in
tests/unit/test_tracing.py; the upstream is a small JSON-only MCP server written here, which
records the traceparent of every request it gets. No Envoy, no control plane.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from ccr.v1 import policy_pb2, tracing
from extproc.mcp_service import McpService, start
from extproc.routing_table import mcp_settings

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
UNSAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
SECRET_ARGUMENT = "arguments-never-in-a-span"
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "x-ccr-tenant": "acme",
    "x-ccr-key": "key00001",
}


class Upstream:
    """Streamable HTTP, JSON answers only: initialize, tools/list, tools/call (``fail``: HTTP 500)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (method, traceparent) of every POST

    async def handle(self, request: web.Request) -> web.Response:
        message = await request.json()
        method = message.get("method", "response")
        self.seen.append((method, request.headers.get("traceparent")))
        if "id" not in message:
            return web.Response(status=202)
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "upstream", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in ("echo", "fail")]}
        elif method == "tools/call" and message["params"]["name"] == "fail":
            return web.Response(status=500)
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": message["params"]["arguments"]["text"]}]}
        else:
            result = {}
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return web.json_response(answer, headers={"mcp-session-id": "upstream-session"})

    def traceparents(self, method: str) -> list[str | None]:
        return [parent for seen, parent in self.seen if seen == method]


class Client:
    """Raw JSON-RPC POSTs to the service, as Envoy forwards them (the caller's headers set)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.session_id: str | None = None
        self._ids = itertools.count(1)

    async def post(self, method: str, params: dict[str, Any] | None = None, traceparent: str | None = None) -> Any:
        headers = dict(HEADERS)
        if traceparent is not None:
            headers["traceparent"] = traceparent
        if self.session_id is not None:
            headers |= {"mcp-session-id": self.session_id, "mcp-protocol-version": "2025-06-18"}
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or {}}
        async with self.http.post(self.url, data=orjson.dumps(message), headers=headers) as response:
            self.session_id = response.headers.get("mcp-session-id", self.session_id)
            return orjson.loads(await response.read())

    async def initialize(self) -> None:
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        await self.post("initialize", params)
        headers = HEADERS | {"mcp-session-id": self.session_id or "", "mcp-protocol-version": "2025-06-18"}
        body = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        async with self.http.post(self.url, data=body, headers=headers) as response:
            assert response.status == 202


@pytest.fixture
def exported() -> Iterator[list[list[tracing.Span]]]:
    batches: list[list[tracing.Span]] = []
    tracing.configure(batches.append, "test-mcp", sample=0.0)
    yield batches
    tracing.configure(None)


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[tuple[Client, Upstream]]:
    upstream = Upstream()
    app = web.Application()
    app.router.add_post("/mcp", upstream.handle)
    upstream_runner, upstream_address = await start(app, "127.0.0.1:0")
    service = McpService()
    policy = policy_pb2.Mcp(
        path="/mcp",
        servers=[policy_pb2.McpServer(name="tools", url=f"http://{upstream_address}/mcp", timeout_s=10)],
        grants=[policy_pb2.McpGrant(tenant="acme", allow=["tools/echo", "tools/fail"])],
    )
    service.install(mcp_settings(policy))
    runner, address = await start(service.app(), "127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            yield Client(http, f"http://{address}/mcp"), upstream
    finally:
        await runner.cleanup()
        await service.close()
        await upstream_runner.cleanup()


def spans_named(batches: list[list[tracing.Span]], name: str) -> list[tracing.Span]:
    return [span for batch in batches for span in batch if span.name == name]


async def test_a_tool_call_is_a_server_span_under_the_client_and_a_client_span_per_upstream_call(exported) -> None:
    async with running() as (client, upstream):
        await client.initialize()
        answer = await client.post(
            "tools/call", {"name": "tools__echo", "arguments": {"text": SECRET_ARGUMENT}}, SAMPLED
        )
        assert answer["result"]["content"][0]["text"] == SECRET_ARGUMENT

    (call,) = spans_named(exported, "mcp.tools/call")
    assert call.kind == tracing.SERVER and call.error is None
    assert call.trace_id.hex() == CLIENT_TRACE and call.parent_id.hex() == CLIENT_SPAN
    assert call.attributes["mcp.server"] == "tools" and call.attributes["mcp.tool"] == "echo"
    assert call.attributes["ccr.tenant"] == "acme" and call.attributes["ccr.key_id"] == "key00001"
    assert call.attributes["ccr.mcp.outcome"] == "ok" and call.attributes["http.response.status_code"] == 200
    # The upstream session was opened ahead, when the client's notifications/initialized came
    # (extproc.mcp_preopen; that request was not traced): the call makes one client span.
    assert not spans_named(exported, "mcp.upstream.initialize")
    (relayed,) = spans_named(exported, "mcp.upstream.tools/call")
    assert relayed.kind == tracing.CLIENT and relayed.parent_id == call.span_id and relayed.trace_id == call.trace_id
    assert relayed.attributes["mcp.server"] == "tools" and relayed.error is None
    assert relayed.attributes["mcp.tool"] == "echo"
    # The upstream request carries its client span as the parent the server continues.
    assert upstream.traceparents("tools/call") == [relayed.traceparent()]
    every_value = [str(v) for batch in exported for span in batch for v in span.attributes.values()]
    assert not any(SECRET_ARGUMENT in value for value in every_value)


async def test_what_the_gateway_answers_itself_is_one_span_without_an_upstream_call(exported) -> None:
    async with running() as (client, _):
        await client.initialize()
        await client.post("tools/list", traceparent=SAMPLED)
        refused = await client.post("tools/call", {"name": "tools__delete", "arguments": {}}, SAMPLED)
        assert refused["error"]["code"] == -32602

    (listed,) = spans_named(exported, "mcp.tools/list")
    assert listed.attributes["ccr.mcp.outcome"] == "ok" and listed.parent_id.hex() == CLIENT_SPAN
    (call,) = spans_named(exported, "mcp.tools/call")
    assert call.attributes["ccr.mcp.outcome"] == "refused" and call.error is None  # the caller's mistake
    assert call.attributes["mcp.server"] == "tools" and call.attributes["mcp.tool"] == "delete"
    # tools/list's page came from the upstream (a fetch): a client span; the refusal made none.
    fetches = spans_named(exported, "mcp.upstream.tools/list")
    assert all(span.parent_id == listed.span_id for span in fetches)
    assert not spans_named(exported, "mcp.upstream.tools/call")


async def test_a_failed_upstream_call_is_exported_even_when_envoy_did_not_sample_it(exported) -> None:
    async with running() as (client, _):
        await client.initialize()
        await client.post("tools/call", {"name": "tools__echo", "arguments": {"text": "x"}}, UNSAMPLED)
        assert not spans_named(exported, "mcp.tools/call")  # not sampled, and it went well: not kept
        answer = await client.post("tools/call", {"name": "tools__fail", "arguments": {}}, UNSAMPLED)
        assert answer["error"]["code"] == -32603

    (call,) = spans_named(exported, "mcp.tools/call")
    assert call.attributes["ccr.mcp.outcome"] == "upstream_error" and call.error is not None
    (relayed,) = spans_named(exported, "mcp.upstream.tools/call")
    assert relayed.error is not None and "HTTP 500" in relayed.error


async def test_with_tracing_off_the_clients_traceparent_goes_upstream_unchanged() -> None:
    tracing.configure(None)
    async with running() as (client, upstream):
        await client.initialize()
        await client.post("tools/call", {"name": "tools__echo", "arguments": {"text": "x"}}, SAMPLED)
    assert upstream.traceparents("tools/call") == [SAMPLED]
    assert tracing.current() is None
