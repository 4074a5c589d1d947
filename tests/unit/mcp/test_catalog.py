"""The merged catalog (extproc.mcp.catalog): names and URIs round-trip and never collide, the
merged lists page exactly (every item once, in order, pages of at most N), cursors are opaque and
checked, and initialize merges capabilities honestly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.mcp.catalog import (
    SERVER_NAME_RE,
    Catalog,
    Kind,
    Lookup,
    MergedPage,
    NeedPage,
    UpstreamInfo,
    decode_cursor,
    encode_cursor,
    join_name,
    join_uri,
    prefix_content_uris,
    split_name,
    split_uri,
)
from extproc.mcp.jsonrpc import ProtocolError
from tests.unit.mcp.helpers import GITHUB_TOOLS, tool, two_servers, types, upstream

# Runs of letters/digits joined by single "-" or "_" (what SERVER_NAME_RE admits), built directly:
# from_regex is slow and rarely produces the separators.
_run = st.text("abcXYZ019", min_size=1, max_size=4)
server_names = st.builds(
    lambda first, rest: first + "".join(sep + run for sep, run in rest),
    _run,
    st.lists(st.tuples(st.sampled_from("-_"), _run), max_size=3),
)
names = st.text(max_size=30)


# --- names and URIs -------------------------------------------------------------------------------


@given(server_names, names)
def test_a_prefixed_name_splits_back_to_its_server_and_name(server: str, name: str) -> None:
    assert SERVER_NAME_RE.fullmatch(server)
    assert split_name(join_name(server, name)) == (server, name)


@given(server_names, names, server_names, names)
def test_two_different_server_tool_pairs_never_join_to_the_same_name(s1: str, n1: str, s2: str, n2: str) -> None:
    if (s1, n1) != (s2, n2):
        assert join_name(s1, n1) != join_name(s2, n2)


def test_a_tool_name_holding_the_separator_itself_still_splits_at_the_server() -> None:
    assert split_name(join_name("git-hub_x", "get__me__now")) == ("git-hub_x", "get__me__now")
    assert split_name("no_separator_here") is None
    assert split_name("bad server__x") is None
    assert split_name("__x") is None


@pytest.mark.parametrize("bad", ["", "a__b", "a_", "-a", "a b", "a/b", "é", "a--b"])
def test_server_names_that_would_make_splitting_ambiguous_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        join_name(bad, "x")
    with pytest.raises(ValueError):
        join_uri(bad, "file:///x")


@given(server_names, st.text(max_size=40))
def test_a_prefixed_uri_splits_back_to_the_original_byte_for_byte(server: str, uri: str) -> None:
    assert split_uri(join_uri(server, uri)) == (server, uri)


@given(server_names, st.text(max_size=40), server_names, st.text(max_size=40))
def test_uris_of_different_servers_never_collide(s1: str, u1: str, s2: str, u2: str) -> None:
    if (s1, u1) != (s2, u2):
        assert join_uri(s1, u1) != join_uri(s2, u2)


@given(st.text(max_size=40))
def test_splitting_never_raises_on_anything_a_client_sends(text: str) -> None:
    split_name(text)
    split_uri(text)


def test_a_uri_template_stays_a_template_whose_expansion_round_trips() -> None:
    template = join_uri("files", "file:///{path}")
    assert template == "ccr-mcp://files/file:///{path}"
    expanded = template.replace("{path}", "src/main.py")
    assert split_uri(expanded) == ("files", "file:///src/main.py")


def test_uris_in_tool_results_are_made_readable_through_the_gateway() -> None:
    content = [
        {"type": "text", "text": "see"},
        {"type": "resource_link", "uri": "file:///a", "name": "a"},
        {"type": "resource", "resource": {"uri": "file:///b", "text": "b"}},
        "not a block",
    ]
    out = prefix_content_uris("files", content)
    assert out[0] == content[0] and out[3] == "not a block"
    assert out[1]["uri"] == "ccr-mcp://files/file:///a"
    assert out[2]["resource"]["uri"] == "ccr-mcp://files/file:///b"
    assert content[1]["uri"] == "file:///a"  # the input is not edited in place
    types.CallToolResult.model_validate({"content": out[:3]})
    assert prefix_content_uris("files", "text") == "text"


# --- cursors --------------------------------------------------------------------------------------


@given(st.sampled_from(list(Kind)), server_names, st.none() | st.text(max_size=20), st.integers(0, 10**6))
def test_a_cursor_decodes_to_what_was_encoded_and_only_for_its_own_list(
    kind: Kind, server: str, ucursor: str | None, offset: int
) -> None:
    token = encode_cursor(kind, server, ucursor, offset)
    assert decode_cursor(token, kind) == (server, ucursor, offset)
    other = next(k for k in Kind if k is not kind)
    assert decode_cursor(token, other) is None


@given(st.text(max_size=60) | st.integers() | st.none())
def test_a_forged_cursor_is_refused_never_raises(token: Any) -> None:
    decode_cursor(token, Kind.TOOLS)  # None or a tuple, never an exception


def test_an_unknown_cursor_is_invalid_params() -> None:
    for token in (
        "garbage",
        encode_cursor(Kind.TOOLS, "gone", None, 0),
        encode_cursor(Kind.PROMPTS, "github", None, 0),
    ):
        err = two_servers().page(Kind.TOOLS, token)
        assert isinstance(err, ProtocolError) and err.code == -32602


# --- the merged lists -----------------------------------------------------------------------------


def walk(catalog: Catalog, kind: Kind, limit: int, **kw: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = catalog.page(kind, cursor, limit=limit, **kw)
        assert isinstance(page, MergedPage), page
        assert len(page.items) <= limit
        pages.append([i[kind.key_field] for i in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_tools_of_two_servers_are_listed_under_their_prefixes_in_policy_order() -> None:
    pages = walk(two_servers(), Kind.TOOLS, 3)
    assert pages == [
        ["github__search_issues", "github__create_issue", "github__delete_repo"],
        ["github__get__me", "files__read_file", "files__write_file"],
    ]
    for page in pages:
        types.ListToolsResult.model_validate({"tools": [tool(n) for n in page]})


def test_resources_and_templates_are_listed_with_wrapped_uris() -> None:
    catalog = two_servers()
    resources = catalog.page(Kind.RESOURCES, None)
    templates = catalog.page(Kind.RESOURCE_TEMPLATES, None)
    assert isinstance(resources, MergedPage) and isinstance(templates, MergedPage)
    assert [r["uri"] for r in resources.items] == [
        "ccr-mcp://files/file:///repo/README.md",
        "ccr-mcp://files/file:///a%20b/{x}?q=1#f",
    ]
    assert templates.items[0]["uriTemplate"] == "ccr-mcp://files/file:///{path}"
    types.ListResourcesResult.model_validate(resources.result(Kind.RESOURCES))
    types.ListResourceTemplatesResult.model_validate(templates.result(Kind.RESOURCE_TEMPLATES))


page_plan = st.lists(  # servers, each a list of upstream pages, each a list of tool names
    st.tuples(
        server_names, st.lists(st.lists(st.text("abcxyz_", min_size=1, max_size=4), max_size=4), min_size=1, max_size=3)
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda t: t[0],
)


def build(plan: list[tuple[str, list[list[str]]]], *, drop: frozenset[tuple[str, int]] = frozenset()) -> Catalog:
    catalog = Catalog(tuple(UpstreamInfo(s, "2025-11-25", {"tools": {}}) for s, _ in plan))
    for server, pages in plan:
        for i, page in enumerate(pages):
            if (server, i) in drop:
                continue
            result: dict[str, Any] = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in page]}
            if i + 1 < len(pages):
                result["nextCursor"] = f"{server}-{i + 1}"
            updated = catalog.with_page(server, Kind.TOOLS, None if i == 0 else f"{server}-{i}", result)
            assert isinstance(updated, Catalog)
            catalog = updated
    return catalog


@given(page_plan, st.integers(1, 5), st.sets(st.text("abcxyz_", min_size=1, max_size=4)))
def test_paging_the_merged_list_yields_every_permitted_item_once_in_order(
    plan: list[tuple[str, list[list[str]]]], limit: int, hidden: set[str]
) -> None:
    expected = [join_name(s, n) for s, pages in plan for page in pages for n in page if n not in hidden]
    got = walk(build(plan), Kind.TOOLS, limit, permit=lambda _s, item: item["name"] not in hidden)
    assert [n for page in got for n in page] == expected


@given(page_plan, st.integers(1, 5), st.data())
def test_a_missing_page_is_fetched_on_demand_and_the_walk_ends_the_same(
    plan: list[tuple[str, list[list[str]]]], limit: int, data: st.DataObject
) -> None:
    everything = [(s, i) for s, pages in plan for i in range(len(pages))]
    drop = frozenset(data.draw(st.sets(st.sampled_from(everything))))
    full, catalog = build(plan), build(plan, drop=drop)
    expected = [n for page in walk(full, Kind.TOOLS, limit) for n in page]
    got: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        page = catalog.page(Kind.TOOLS, cursor, limit=limit)
        if isinstance(page, NeedPage):  # the adapter fetches it upstream, then asks again
            source = full.pages[(page.server, page.kind, page.upstream_cursor)]
            result: dict[str, Any] = {"tools": list(source.items)}
            if source.next_cursor:
                result["nextCursor"] = source.next_cursor
            updated = catalog.with_page(page.server, page.kind, page.upstream_cursor, result)
            assert isinstance(updated, Catalog)
            catalog = updated
            continue
        assert isinstance(page, MergedPage) and len(page.items) <= limit
        got += [i["name"] for i in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert got == expected


def test_an_upstream_cursor_cycle_ends_the_walk_instead_of_looping() -> None:
    catalog = Catalog((UpstreamInfo("loop", "2025-11-25", {"tools": {}}),))
    catalog = catalog.with_page("loop", Kind.TOOLS, None, {"tools": [tool("a")], "nextCursor": "x"})  # type: ignore[assignment]
    catalog = catalog.with_page("loop", Kind.TOOLS, "x", {"tools": [tool("b")], "nextCursor": "x"})  # type: ignore[assignment]
    assert walk(catalog, Kind.TOOLS, 10) == [["loop__a", "loop__b"]]


def test_servers_out_of_reach_are_neither_fetched_nor_listed() -> None:
    catalog = Catalog((UpstreamInfo("a", "2025-11-25", {"tools": {}}), UpstreamInfo("b", "2025-11-25", {"tools": {}})))
    catalog = catalog.with_page("b", Kind.TOOLS, None, {"tools": [tool("x")]})  # type: ignore[assignment]
    assert walk(catalog, Kind.TOOLS, 5, reach=lambda s: s == "b") == [["b__x"]]


def test_an_ill_shaped_upstream_list_is_refused_and_not_cached() -> None:
    catalog = two_servers()
    assert isinstance(catalog.with_page("github", Kind.TOOLS, None, {"tools": "no"}), ProtocolError)
    assert isinstance(catalog.with_page("github", Kind.TOOLS, None, {"tools": [], "nextCursor": 3}), ProtocolError)
    kept = catalog.with_page("github", Kind.TOOLS, None, {"tools": [{"name": 1}, {"nope": 2}, tool("ok")]})
    assert isinstance(kept, Catalog)
    assert [i["name"] for i in kept.pages[("github", Kind.TOOLS, None)].items] == ["ok"]


def test_list_changed_drops_only_that_servers_pages_of_that_kind() -> None:
    catalog = two_servers().invalidate("github", (Kind.TOOLS,))
    assert isinstance(catalog.page(Kind.TOOLS, None), NeedPage)
    assert ("github", Kind.PROMPTS, None) in catalog.pages and ("files", Kind.TOOLS, None) in catalog.pages


def test_find_knows_when_a_name_is_absent_and_when_it_cannot_tell() -> None:
    catalog = two_servers()
    assert catalog.find(Kind.TOOLS, "github", "get__me") == GITHUB_TOOLS[3]
    assert catalog.find(Kind.TOOLS, "github", "nope") is Lookup.NOT_FOUND
    partial = catalog.invalidate("github", (Kind.TOOLS,))
    assert partial.find(Kind.TOOLS, "github", "nope") is Lookup.UNKNOWN


# --- initialize -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "answered"),
    [("2025-06-18", "2025-06-18"), ("2025-11-25", "2025-11-25"), ("2024-11-05", "2025-11-25")],
)
def test_initialize_answers_the_requested_revision_when_supported_else_the_latest(
    requested: str, answered: str
) -> None:
    result = two_servers().initialize_result(requested, {"name": "ccr-gateway", "version": "0"})
    assert result["protocolVersion"] == answered
    types.InitializeResult.model_validate(result)


def test_capabilities_are_merged_honestly() -> None:
    result = two_servers().initialize_result("2025-06-18", {"name": "g", "version": "0"})
    # tools: github sends list_changed; prompts: github has them, without list_changed; resources:
    # files subscribes, no list_changed; completions: files. Nothing else (no logging, no tasks).
    assert result["capabilities"] == {
        "tools": {"listChanged": True},
        "prompts": {},
        "resources": {"subscribe": True},
        "completions": {},
    }
    assert "github__" in result["instructions"] and "Use files wisely." in result["instructions"]


def test_capabilities_only_of_servers_the_caller_may_reach_and_list_changed_when_the_gateway_sends_it() -> None:
    result = two_servers().initialize_result(
        "2025-06-18", {"name": "g", "version": "0"}, reach=lambda s: s == "files", gateway_emits_list_changed=True
    )
    assert result["capabilities"] == {
        "tools": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "completions": {},
    }
    empty = Catalog((upstream("bare"),)).initialize_result("2025-06-18", {"name": "g", "version": "0"})
    assert empty["capabilities"] == {}
    types.InitializeResult.model_validate(empty)
