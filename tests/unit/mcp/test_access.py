"""Grants (extproc.mcp.access): deny wins, a key only narrows its tenant, prompts and resources are
granted per server, and - through the router - a tool is listed exactly when it is callable."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.mcp.access import ALLOW_ALL, DENY_ALL, Access, Grant
from extproc.mcp.catalog import Catalog, Kind, UpstreamInfo, join_name
from extproc.mcp.router import Action
from tests.unit.mcp.helpers import body_of, post, request_body, start

SERVERS = ["github", "git-lab", "files"]
TOOLS = ["read", "read_file", "write", "delete_repo", "get__me"]

segments = st.sampled_from(["github", "git*", "*", "files", "f?les", "nope", "*lab"])
tool_globs = st.sampled_from(["read*", "*", "write", "delete_*", "get__*", "*_file", "x"])
patterns = segments | st.builds(lambda s, t: f"{s}/{t}", segments, tool_globs)
grants = st.builds(
    Grant,
    allow=st.none() | st.lists(patterns, max_size=4).map(tuple),
    deny=st.lists(patterns, max_size=3).map(tuple),
)
accesses = st.builds(Access, tenant=grants, key=grants)


def test_a_server_pattern_grants_all_its_tools_and_a_tool_pattern_only_those() -> None:
    access = Access(Grant(allow=("files", "github/search_*")))
    assert access.may_use_tool("files", "anything")
    assert access.may_use_tool("github", "search_issues")
    assert not access.may_use_tool("github", "create_issue")
    assert not access.may_use_tool("gitlab", "search_issues")


def test_deny_wins_over_allow_at_every_level() -> None:
    access = Access(Grant(allow=("*",), deny=("github/delete_*",)))
    assert access.may_use_tool("github", "create_issue")
    assert not access.may_use_tool("github", "delete_repo")
    assert not Access(Grant(allow=("github/delete_repo",), deny=("github",))).may_use_tool("github", "delete_repo")
    assert not Access(Grant(allow=("*",)), key=Grant(allow=("*",), deny=("files",))).may_use_tool("files", "read")


def test_a_key_narrows_its_tenant_and_never_widens_it() -> None:
    tenant = Grant(allow=("github",))
    assert Access(tenant, key=Grant(allow=("github/search_*",))).may_use_tool("github", "search_issues")
    assert not Access(tenant, key=Grant(allow=("github/search_*",))).may_use_tool("github", "create_issue")
    assert not Access(tenant, key=Grant(allow=("*",))).may_use_tool("files", "read")  # tenant lacks files
    assert Access(tenant).may_use_tool("github", "x")  # a key without a grant inherits


def test_a_tenant_without_a_grant_gets_nothing() -> None:
    assert not Access(Grant()).may_use_tool("github", "x")
    assert not Access(Grant()).may_use_server_wide("github")
    assert not DENY_ALL.may_reach("github")
    assert ALLOW_ALL.may_use_tool("github", "x") and ALLOW_ALL.may_use_server_wide("github")


def test_prompts_and_resources_need_a_server_wide_grant() -> None:
    assert not Access(Grant(allow=("github/search_*",))).may_use_server_wide("github")
    assert Access(Grant(allow=("git*",))).may_use_server_wide("github")
    assert Access(Grant(allow=("*",), deny=("github/delete_*",))).may_use_server_wide("github")
    assert not Access(Grant(allow=("*",), deny=("github",))).may_use_server_wide("github")


@given(accesses, st.sampled_from(SERVERS), st.sampled_from(TOOLS))
def test_visible_and_callable_are_one_predicate(access: Access, server: str, tool: str) -> None:
    assert access.visible(server, tool) == access.callable(server, tool) == access.may_use_tool(server, tool)


@given(accesses, st.sampled_from(SERVERS), st.sampled_from(TOOLS))
def test_whatever_is_permitted_is_within_reach_and_within_each_level(access: Access, server: str, tool: str) -> None:
    if access.may_use_tool(server, tool) or access.may_use_server_wide(server):
        assert access.may_reach(server)
    if access.may_use_tool(server, tool):
        assert access.tenant.permits_tool(server, tool) and access.key.permits_tool(server, tool)


def catalog_of_all() -> Catalog:
    catalog = Catalog(tuple(UpstreamInfo(s, "2025-11-25", {"tools": {}}) for s in SERVERS))
    for server in SERVERS:
        result = {"tools": [{"name": t, "inputSchema": {"type": "object"}} for t in TOOLS]}
        updated = catalog.with_page(server, Kind.TOOLS, None, result)
        assert isinstance(updated, Catalog)
        catalog = updated
    return catalog


@settings(max_examples=60, deadline=None)
@given(accesses)
def test_through_the_router_a_tool_is_listed_exactly_when_it_is_callable(access: Access) -> None:
    catalog = catalog_of_all()
    session = start(catalog, access)
    listed: set[str] = set()
    cursor = None
    while True:
        decision = post(
            session, request_body("tools/list", {"cursor": cursor} if cursor else {}), catalog=catalog, access=access
        )
        result = body_of(decision)["result"]
        listed |= {t["name"] for t in result["tools"]}
        cursor = result.get("nextCursor")
        if cursor is None:
            break
    callable_ = set()
    for server in SERVERS:
        for tool in TOOLS:
            name = join_name(server, tool)
            decision = post(
                session, request_body("tools/call", {"name": name, "arguments": {}}), catalog=catalog, access=access
            )
            if decision.action is Action.FORWARD:
                callable_.add(name)
            else:
                error = orjson.loads(decision.body or b"{}")["error"]
                assert (decision.status, error["code"], error["message"]) == (200, -32602, f"Unknown tool: {name}")
    assert listed == callable_
