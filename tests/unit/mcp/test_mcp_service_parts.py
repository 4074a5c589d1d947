"""The MCP gateway service's small parts, without sockets: who the caller is, what a tool call
records, the in-process session store and call counter, the upstream URL through Envoy's egress,
and the service's answers that need no upstream (tests/integration/test_mcp_service.py drives the
whole service with the SDK)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ccr.v1.usage_record import record_from_dict
from extproc.mcp.access import Grant
from extproc.mcp.session import new_session
from extproc.mcp.settings import McpSettings, UpstreamServer
from extproc.mcp_observe import OUTCOMES, Recorder, ToolCall
from extproc.mcp_service import Caller, McpService
from extproc.mcp_store import MemoryCallCounter, MemorySessionStore, window
from extproc.mcp_upstream import HttpUpstream, _decode
from extproc.usage_sink import MemorySink

SETTINGS = McpSettings(
    servers=(UpstreamServer("github", url="https://api.example.com/mcp/?team=${TEAM}"),),
    tenant_grants={"acme": Grant(allow=("github",)), "-": Grant(allow=("github/search_*",))},
    key_grants={"k1": Grant(allow=None, deny=("github/delete_*",))},
)


def test_the_gateway_headers_name_the_caller_and_a_dash_means_none() -> None:
    assert Caller.from_headers({"x-ccr-tenant": "acme", "x-ccr-key": "k1"}) == Caller("acme", "k1")
    assert Caller.from_headers({"x-ccr-tenant": "-", "x-ccr-key": "-"}) == Caller(None, None)
    assert Caller.from_headers({}) == Caller(None, None)  # no gateway in front: anonymous, never trusted more


def test_an_anonymous_caller_gets_the_grant_of_the_dash_tenant() -> None:
    anonymous = Caller(None, None).access(SETTINGS)
    assert anonymous.may_use_tool("github", "search_code")
    assert not anonymous.may_use_tool("github", "create_issue")
    keyed = Caller("acme", "k1").access(SETTINGS)
    assert keyed.may_use_tool("github", "create_issue") and not keyed.may_use_tool("github", "delete_repo")
    assert not Caller("other", None).access(SETTINGS).may_use_tool("github", "search_code")


def call(outcome: str = "ok", **kw: Any) -> ToolCall:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "started": 1_700_000_000.25,
        "duration_s": 0.0123,
        "endpoint": "/mcp",
        "server": "github",
        "tool": "search_code",
        "outcome": outcome,
        "tenant": "acme",
        "key_id": "k1",
        "session_id": "s1",
        "stream": False,
    }
    return ToolCall(**{**fields, **kw})


@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
def test_every_outcome_makes_a_valid_usage_record(outcome: str) -> None:
    record = call(outcome).usage_record()
    assert record_from_dict(record.as_dict()) == record  # the ledger's own validation accepts it
    assert (record.client_api, record.requested_model, record.provider, record.model) == (
        "mcp",
        "github__search_code",
        "github",
        "search_code",
    )
    assert (record.status, record.error_type) == OUTCOMES[outcome]
    assert record.input_tokens == record.output_tokens == 0 and record.cost_usd == 0
    assert record.duration_ms == 12.3


def test_the_audit_details_never_hold_arguments_or_results() -> None:
    details = call().audit_details()
    assert set(details) == {"tenant", "key_id", "server", "tool", "duration_ms", "outcome", "session_id", "request_id"}


class _Audit:
    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    def tool_call(self, c: ToolCall) -> None:
        self.calls.append(c)

    async def close(self) -> None:
        pass


def test_the_recorder_feeds_the_ledger_and_the_audit_log() -> None:
    sink, audit = MemorySink(), _Audit()
    Recorder(sink, audit).tool_call(call("upstream_timeout"))
    assert [r.status for r in sink.records] == [504]
    assert [c.outcome for c in audit.calls] == ["upstream_timeout"]


async def test_the_memory_store_forgets_expired_and_deleted_sessions() -> None:
    store = MemorySessionStore(limit=2)
    live = new_session("a", "2025-11-25", now=1e12)
    old = new_session("b", "2025-11-25", now=0.0, idle_ttl_s=1.0)
    await store.put(live)
    await store.put(old)
    assert await store.get("a") is live
    assert await store.get("b") is None  # expired long ago
    await store.delete("a")
    assert await store.get("a") is None
    for name in "xyz":
        await store.put(new_session(name, "2025-11-25", now=1e12))
    assert await store.get("x") is None and await store.get("z") is not None  # bounded: oldest dropped


async def test_the_memory_counter_counts_per_key_and_minute() -> None:
    counter = MemoryCallCounter()
    start = 60.0 * 1000
    assert [await counter.hit("acme", "k1", start + i) for i in range(3)] == [1, 2, 3]
    assert await counter.hit("acme", "k2", start) == 1
    assert await counter.hit("acme", "k1", start + 60) == 1  # the next window
    assert window(start + 59.9) == window(start) != window(start + 60)


def test_through_the_egress_the_url_keeps_only_path_and_query_and_names_the_server() -> None:
    server = UpstreamServer("github", url="https://api.example.com/mcp/?team=x", headers=(("authorization", "t"),))
    upstream = HttpUpstream(server, http=None, egress="127.0.0.1:9193")  # type: ignore[arg-type]
    assert upstream._url == "http://127.0.0.1:9193/mcp/?team=x"
    assert upstream._route == {"x-ccr-mcp-server": "github"}
    direct = HttpUpstream(server, http=None)  # type: ignore[arg-type]
    assert direct._url == server.url and direct._route == {}


def test_only_json_objects_count_as_upstream_messages() -> None:
    assert _decode(b'{"jsonrpc":"2.0","id":1,"result":{}}') == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert _decode(b"[1]") is None and _decode(b"not json") is None


class _Request:
    """Just what McpService.handle reads of an aiohttp request that needs no upstream."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.headers = method, path, headers


async def test_without_an_mcp_section_every_path_is_a_json_rpc_404() -> None:
    service = McpService()
    service.install(None)
    response = await service.handle(_Request("POST", "/mcp", {}))  # type: ignore[arg-type]
    assert response.status == 404 and b'"code":-32600' in response.body  # type: ignore[attr-defined]
    ready = await service.handle(_Request("GET", "/ready", {}))  # type: ignore[arg-type]
    assert ready.status == 200
    await service.close()


async def test_other_methods_are_405_with_allow() -> None:
    service = McpService()
    service.install(McpSettings())
    response = await service.handle(_Request("PUT", "/mcp", {}))  # type: ignore[arg-type]
    assert response.status == 405 and response.headers["allow"] == "GET, POST, DELETE"
    await service.close()


async def test_the_service_listens_on_a_unix_socket(tmp_path: Any) -> None:
    import aiohttp

    from extproc.mcp_service import start

    service = McpService()
    service.install(McpSettings())
    path = str(tmp_path / "mcp.sock")
    runner, address = await start(service.app(), f"unix:{path}")
    try:
        assert address == f"unix:{path}"
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as http,
            http.get("http://mcp/ready") as ready,
        ):
            assert ready.status == 200
    finally:
        await runner.cleanup()
        await service.close()


class _SilentUpstream:
    """An upstream that never answers initialize (blackholed: the connection hangs)."""

    name = "silent"

    async def open(self, initialize: Any, passed: Any) -> Any:
        await asyncio.sleep(3600)

    async def close(self) -> None:
        pass


async def test_a_silent_server_does_not_hold_client_requests_for_its_timeout() -> None:
    from extproc.mcp_catalog import CatalogKeeper

    keeper = CatalogKeeper({"name": "t"}, "i", probe_wait_s=0.05)
    keeper.install(McpSettings(servers=(UpstreamServer("silent", url="http://10.255.255.1/mcp"),)))
    keeper.upstreams["silent"] = _SilentUpstream()  # type: ignore[assignment]
    catalog = await asyncio.wait_for(keeper.ensure(), 1.0)
    assert catalog.servers == ()  # left out while its probe goes on in the background
    await keeper.close()
