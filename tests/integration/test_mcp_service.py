"""The MCP gateway service (extproc/mcp_service.py) with the official SDK client, in front of two
upstream servers written with the SDK (tests/integration/mcp_upstreams.py): "weather" over
Streamable HTTP (its own process, so it can be killed mid-call) and "notes" over stdio (launched
and supervised by the service).

The service runs in this process, on a free port, with the policy's ``mcp:`` section compiled
from the proto the control plane would send (extproc.routing_table.mcp_settings): no control
plane, no Envoy. The identity headers the gateway's decision sets (x-ccr-tenant, x-ccr-key) are
set by the test's HTTP client. The last test needs the machine's Redis (127.0.0.1:6379).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ccr.v1 import policy_pb2
from extproc.mcp_observe import Recorder, ToolCall
from extproc.mcp_service import RATE_LIMITED, McpService, ServiceConfig, start
from extproc.mcp_store import RedisCallCounter, RedisSessionStore, open_redis
from extproc.routing_table import mcp_settings
from extproc.usage_sink import MemorySink

httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("mcp.server.mcpserver")
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import PaginatedRequestParams  # noqa: E402

UPSTREAMS = str(Path(__file__).with_name("mcp_upstreams.py"))
REDIS_URL = os.environ.get("CCR_TEST_REDIS", "redis://127.0.0.1:6379/0")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class HttpUpstream:
    """The weather server's process: started, SIGKILLed, started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, UPSTREAMS, "http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "WEATHER_TOKEN": "s3cr3t"},
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@pytest.fixture(scope="module")
def weather() -> Iterator[HttpUpstream]:
    upstream = HttpUpstream()
    upstream.start()
    yield upstream
    upstream.kill()


def policy(weather_url: str) -> policy_pb2.Mcp:
    return policy_pb2.Mcp(
        path="/mcp",
        servers=[
            policy_pb2.McpServer(
                name="weather",
                url=weather_url,
                headers={"authorization": "Bearer ${MCP_TEST_WEATHER_TOKEN}"},
                timeout_s=10,
            ),
            policy_pb2.McpServer(name="notes", command=[sys.executable, UPSTREAMS, "stdio"], timeout_s=20),
        ],
        grants=[
            policy_pb2.McpGrant(tenant="acme", allow=["weather", "notes"]),
            policy_pb2.McpGrant(key_id="nofcast1", deny=["weather/forecast"], inherit_allow=True),
            policy_pb2.McpGrant(key_id="limited1", inherit_allow=True, calls_per_minute=2),
            policy_pb2.McpGrant(tenant="-", allow=["notes/echo"]),
        ],
    )


class Audit:
    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    def tool_call(self, call: ToolCall) -> None:
        self.calls.append(call)

    async def close(self) -> None:
        pass


class Gateway:
    def __init__(self, service: McpService, sink: MemorySink, audit: Audit, address: str) -> None:
        self.service, self.sink, self.audit = service, sink, audit
        self.url = f"http://{address}/mcp"


@contextlib.asynccontextmanager
async def gateway(weather_url: str, egress: str | None = None, **stores: Any) -> AsyncIterator[Gateway]:
    os.environ["MCP_TEST_WEATHER_TOKEN"] = "upstream-credential"
    sink, audit = MemorySink(), Audit()
    service = McpService(ServiceConfig(egress=egress, page_size=2), recorder=Recorder(sink, audit), **stores)
    service.install(mcp_settings(policy(weather_url)))
    runner, address = await start(service.app(), "127.0.0.1:0")
    try:
        yield Gateway(service, sink, audit, address)
    finally:
        service.close_streams()
        await runner.cleanup()
        await service.close()


@pytest.fixture(scope="module")
async def gw(weather: HttpUpstream) -> AsyncIterator[Gateway]:
    async with gateway(weather.url) as running:
        yield running


@contextlib.asynccontextmanager
async def client(
    url: str, tenant: str = "acme", key: str = "-", http: Any = None, **headers: str
) -> AsyncIterator[ClientSession]:
    sent = {"x-ccr-tenant": tenant, "x-ccr-key": key, **headers}
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=sent, timeout=30))
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


async def all_tools(session: ClientSession) -> tuple[list[str], int]:
    names: list[str] = []
    cursor, pages = None, 0
    while True:
        result = await session.list_tools(params=page_params(cursor))
        pages += 1
        names += [t.name for t in result.tools]
        cursor = result.next_cursor
        if not cursor:
            return names, pages


def page_params(cursor: str | None) -> PaginatedRequestParams | None:
    return PaginatedRequestParams(cursor=cursor) if cursor else None


def text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_tools_of_both_servers_are_listed_under_their_prefixes_and_called(gw: Gateway) -> None:
    async with client(gw.url) as session:
        names, pages = await all_tools(session)
        assert set(names) == {
            "weather__forecast",
            "weather__humidity",
            "weather__slow",
            "weather__progress",
            "weather__secret_header",
            "notes__add_note",
            "notes__echo",
            "notes__count",
        }
        assert pages >= 4  # page size 2: the merged list is walked with cursors
        assert text(await session.call_tool("weather__forecast", {"city": "Oslo"})) == "sunny in Oslo"
        assert text(await session.call_tool("notes__add_note", {"text": "buy milk"})) == "noted: buy milk"
    records = [r for r in gw.sink.records if r.requested_model in ("weather__forecast", "notes__add_note")]
    assert {(r.provider, r.model, r.status, r.error_type) for r in records} >= {
        ("weather", "forecast", 200, None),
        ("notes", "add_note", 200, None),
    }
    record = records[-1]
    assert (record.client_api, record.endpoint, record.tenant, record.key_id) == ("mcp", "/mcp", "acme", None)
    assert record.input_tokens == 0 and record.cost_usd == 0 and record.session_id
    assert {(c.server, c.tool, c.outcome) for c in gw.audit.calls} >= {("weather", "forecast", "ok")}


async def test_upstream_credentials_come_from_the_policy_never_from_the_client(gw: Gateway) -> None:
    async with client(gw.url, authorization="Bearer client-key", **{"x-api-key": "client-key"}) as session:
        answer = text(await session.call_tool("weather__secret_header", {}))
    assert answer == "auth=Bearer upstream-credential leaked=none"


async def test_prompts_and_resources_of_both_servers(gw: Gateway) -> None:
    async with client(gw.url) as session:
        prompts = [p.name for p in (await session.list_prompts()).prompts]
        cursor = None
        while (page := await session.list_prompts(params=page_params(cursor))).next_cursor:
            cursor = page.next_cursor
        assert {"weather__outlook", "notes__summarize"} <= set(prompts) | {p.name for p in page.prompts}
        got = await session.get_prompt("notes__summarize", {"topic": "milk"})
        assert "Summarize the notes about milk" in got.messages[0].content.text
        resources: list[str] = []
        cursor = None
        while True:
            page = await session.list_resources(params=page_params(cursor))
            resources += [str(r.uri) for r in page.resources]
            if not (cursor := page.next_cursor):
                break
        assert set(resources) == {"ccr-mcp://weather/weather://stations/main", "ccr-mcp://notes/notes://all"}
        read = await session.read_resource("ccr-mcp://weather/weather://stations/main")
        assert read.contents[0].text == "main station: 12 C"
        assert str(read.contents[0].uri) == "ccr-mcp://weather/weather://stations/main"


async def test_progress_notifications_reach_the_client(gw: Gateway) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with client(gw.url) as session:
        result = await session.call_tool("weather__progress", {"steps": 3}, progress_callback=on_progress)
        assert text(result) == "done"
        assert [s[0] for s in seen] == [1, 2, 3]
        seen.clear()
        result = await session.call_tool("notes__count", {"to": 2}, progress_callback=on_progress)  # over stdio
        assert text(result) == "counted to 2"
        assert seen == [(1, 2, "counted 1"), (2, 2, "counted 2")]


async def test_a_key_without_the_grant_neither_sees_nor_calls_the_tool(gw: Gateway) -> None:
    async with client(gw.url, key="nofcast1") as session:
        names, _ = await all_tools(session)
        assert "weather__forecast" not in names and "weather__humidity" in names
        result = await _call_error(session, "weather__forecast", {"city": "Oslo"})
        assert result == (-32602, "Unknown tool: weather__forecast")
    refused = [c for c in gw.audit.calls if c.key_id == "nofcast1"]
    assert [(c.server, c.tool, c.outcome) for c in refused] == [("weather", "forecast", "refused")]
    assert [r.status for r in gw.sink.records if r.key_id == "nofcast1"] == [403]
    async with client(gw.url, tenant="-") as anonymous:
        names, _ = await all_tools(anonymous)
        assert names == ["notes__echo"]
        assert text(await anonymous.call_tool("notes__echo", {"text": "hi"})) == "hi"


async def _call_error(session: ClientSession, name: str, args: dict[str, Any]) -> tuple[int, str]:
    try:
        result = await session.call_tool(name, args)
    except MCPError as exc:
        return exc.error.code, exc.error.message
    raise AssertionError(f"{name} answered {result}")


async def test_the_call_limit_refuses_calls_over_it_and_sends_nothing_upstream(gw: Gateway) -> None:
    async with client(gw.url, key="limited1") as session:
        for _ in range(2):
            assert text(await session.call_tool("notes__echo", {"text": "x"})) == "x"
        code, message = await _call_error(session, "notes__echo", {"text": "x"})
    assert code == RATE_LIMITED and "2 tool calls per minute" in message
    limited = [r for r in gw.sink.records if r.key_id == "limited1"]
    assert [r.status for r in limited][-3:] == [200, 200, 429]
    assert limited[-1].error_type == "rate_limited" and limited[-1].attempts == 0


async def test_an_upstream_killed_mid_call_is_a_clear_error_and_the_next_call_works_once_it_is_back(
    gw: Gateway, weather: HttpUpstream
) -> None:
    async with client(gw.url) as session:
        assert text(await session.call_tool("weather__forecast", {"city": "Rome"})) == "sunny in Rome"
        call = asyncio.ensure_future(_call_error(session, "weather__slow", {"seconds": 30}))
        await asyncio.sleep(1.0)
        weather.kill()
        code, message = await asyncio.wait_for(call, 15)
        assert code == -32603 and "weather" in message
        code, _ = await _call_error(session, "weather__forecast", {"city": "Rome"})
        assert code == -32603  # still down
        await asyncio.to_thread(weather.start)
        # The restarted server knows no session: the gateway re-initializes it transparently.
        assert text(await session.call_tool("weather__forecast", {"city": "Rome"})) == "sunny in Rome"
        assert text(await session.call_tool("notes__echo", {"text": "still here"})) == "still here"
    outcomes = [c.outcome for c in gw.audit.calls if c.tool in ("slow", "forecast")][-4:]
    assert outcomes == ["ok", "upstream_error", "upstream_error", "ok"]


async def test_a_session_moves_to_a_second_instance_sharing_redis(weather: HttpUpstream) -> None:
    redis = open_redis(REDIS_URL)
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    prefix = f"ccr:test:mcp:{uuid.uuid4().hex}:"
    try:
        async with (
            gateway(
                weather.url, store=RedisSessionStore(redis, prefix), counter=RedisCallCounter(redis, prefix)
            ) as first,
            gateway(
                weather.url, store=RedisSessionStore(redis, prefix), counter=RedisCallCounter(redis, prefix)
            ) as second,
        ):
            target = {"url": first.url}

            async def route(request: Any) -> None:  # the load balancer: every request to the current replica
                request.url = httpx2.URL(target["url"])

            headers = {"x-ccr-tenant": "acme", "x-ccr-key": "-"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"request": [route]}) as http,
                client(first.url, http=http) as session,
            ):
                assert text(await session.call_tool("weather__forecast", {"city": "Paris"})) == "sunny in Paris"
                target["url"] = second.url
                names, _ = await all_tools(session)
                assert "notes__add_note" in names
                assert text(await session.call_tool("weather__forecast", {"city": "Lyon"})) == "sunny in Lyon"
                assert text(await session.call_tool("notes__add_note", {"text": "moved"})) == "noted: moved"
            assert [r.requested_model for r in second.sink.records] == ["weather__forecast", "notes__add_note"]
            keys = await redis.keys(prefix + "session:*")
            assert len(keys) <= 1  # the client's DELETE at exit removed it (or it is about to)
    finally:
        async for key in redis.scan_iter(match=prefix + "*"):
            await redis.delete(key)
        await redis.aclose()


async def test_bad_input_gets_json_rpc_errors_never_a_500(gw: Gateway) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        accept = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        garbage = await http.post(gw.url, content=b"{not json", headers=accept)
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
        no_session = await http.post(gw.url, content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', headers=accept)
        assert no_session.status_code == 400
        unknown = await http.post(
            gw.url,
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            headers={**accept, "mcp-session-id": "nope"},
        )
        assert unknown.status_code == 404
        elsewhere = await http.post(gw.url.replace("/mcp", "/other"), content=b"{}", headers=accept)
        assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == -32600
        put = await http.put(gw.url, content=b"{}")
        assert put.status_code == 405


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[Any, str]]:
    redis = open_redis(REDIS_URL)
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    prefix = f"ccr:test:mcp:{uuid.uuid4().hex}:"
    yield redis, prefix
    async for key in redis.scan_iter(match=prefix + "*"):
        await redis.delete(key)
    await redis.aclose()


async def test_the_redis_store_shares_sessions_between_replicas_and_expires_them(redis_prefix: Any) -> None:
    from extproc.mcp.session import new_session

    redis, prefix = redis_prefix
    here, there = RedisSessionStore(redis, prefix), RedisSessionStore(redis, prefix)
    session = new_session("sess-1", "2025-11-25", time.time(), client_info={"name": "t"}, idle_ttl_s=120.0)
    session.upstream_opened("weather", "up-1", "2025-11-25")
    await here.put(session)
    assert await here.get("sess-1") is session  # this replica's live object, in-flight maps included
    moved = await there.get("sess-1")
    assert moved is not None and moved is not session
    assert moved.to_bytes() == session.to_bytes()
    assert 120 < await redis.ttl(prefix + "session:sess-1") <= 180  # idle TTL plus the margin
    moved.upstream_opened("notes", None, "2025-06-18")
    await there.put(moved)
    back = await here.get("sess-1")
    assert back is not None and back is not session and "notes" in back.upstreams  # changed elsewhere: re-read
    await redis.set(prefix + "session:bad", b"garbage")
    assert await here.get("bad") is None
    await there.delete("sess-1")
    assert await here.get("sess-1") is None


async def test_the_redis_counter_counts_calls_of_all_replicas_together(redis_prefix: Any) -> None:
    redis, prefix = redis_prefix
    first, second = RedisCallCounter(redis, prefix), RedisCallCounter(redis, prefix)
    now = 60.0 * (time.time() // 60)
    assert await first.hit("acme", "k1", now) == 1
    assert await second.hit("acme", "k1", now + 1) == 2
    assert await second.hit("acme", "k2", now + 1) == 1
    assert await first.hit("acme", "k1", now + 60) == 1


async def test_through_the_egress_every_upstream_request_names_its_server(weather: HttpUpstream) -> None:
    """A stand-in for Envoy's MCP egress listener: it routes on x-ccr-mcp-server (here: to the one
    server there is) and records what it was sent."""
    import aiohttp
    from aiohttp import web

    seen: list[tuple[str, str | None, str | None]] = []
    traces: set[str | None] = set()

    async def route(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("x-ccr-mcp-server"), request.headers.get("authorization")))
        traces.add(request.headers.get("traceparent"))
        kept = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                f"http://127.0.0.1:{weather.port}{request.path_qs}",
                data=await request.read(),
                headers=kept,
            ) as up,
        ):
            headers = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", "mcp-session-id")}
            response = web.StreamResponse(status=up.status, headers=headers)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner, egress = await start(app, "127.0.0.1:0")
    try:
        async with (
            gateway("https://weather.example.com/mcp", egress=egress) as running,
            client(running.url, traceparent=TRACEPARENT) as session,
        ):
            assert text(await session.call_tool("weather__forecast", {"city": "Bern"})) == "sunny in Bern"
    finally:
        await runner.cleanup()
    assert seen and {(path, server) for path, server, _ in seen} == {("/mcp", "weather")}
    assert {auth for _, _, auth in seen} == {"Bearer upstream-credential"}
    assert TRACEPARENT in traces  # the client's trace continues upstream


async def test_a_policy_reload_drops_a_server_and_stops_its_process(weather: HttpUpstream) -> None:
    async with gateway(weather.url) as running:
        async with client(running.url) as session:
            assert "notes__echo" in (await all_tools(session))[0]
        notes = running.service.keeper.upstreams["notes"]
        reloaded = policy(weather.url)
        del reloaded.servers[1]
        running.service.install(mcp_settings(reloaded))
        async with client(running.url) as session:
            names, _ = await all_tools(session)
            assert names and all(name.startswith("weather__") for name in names)
            code, _ = await _call_error(session, "notes__echo", {"text": "x"})
            assert code == -32602
        assert "notes" not in running.service.keeper.upstreams
        for _ in range(100):  # closed in the background: stdin, then SIGTERM
            if not notes._process.running:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert not notes._process.running  # type: ignore[attr-defined]
