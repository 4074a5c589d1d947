"""Shared fixtures for the MCP core's tests: two upstream servers' real shapes (built with the
official SDK's ``mcp.types`` models, so they are what an SDK server sends), headers, a client."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.mcp.access import ALLOW_ALL, Access
from extproc.mcp.catalog import Catalog, Kind, UpstreamInfo
from extproc.mcp.router import Config, Decision, handle_post
from extproc.mcp.session import Session

types = pytest.importorskip("mcp.types")  # the SDK is a test-only dependency of the core

NOW = 1_000_000.0
SESSION_ID = "sess-0123456789abcdef"
POST_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
CONFIG = Config(server_info={"name": "ccr-gateway", "version": "0.1.0"}, page_size=3)


def dump(model: Any) -> dict[str, Any]:
    """An SDK model as it goes on the wire (camelCase, unset fields left out)."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def tool(name: str, description: str = "") -> dict[str, Any]:
    return dump(types.Tool(name=name, description=description or name, input_schema={"type": "object"}))


GITHUB_TOOLS = [tool("search_issues"), tool("create_issue"), tool("delete_repo"), tool("get__me")]
FILES_TOOLS = [tool("read_file"), tool("write_file")]
FILES_RESOURCES = [
    dump(types.Resource(name="readme", uri="file:///repo/README.md", mime_type="text/markdown")),
    dump(types.Resource(name="weird", uri="file:///a%20b/{x}?q=1#f")),
]
FILES_TEMPLATES = [dump(types.ResourceTemplate(name="any file", uri_template="file:///{path}"))]
GITHUB_PROMPTS = [dump(types.Prompt(name="triage", description="triage an issue"))]


def upstream(name: str, **caps: Any) -> UpstreamInfo:
    result = dump(
        types.InitializeResult(
            protocol_version="2025-11-25",
            capabilities=types.ServerCapabilities.model_validate(caps),
            server_info=types.Implementation(name=f"{name}-server", version="1.0"),
            instructions=f"Use {name} wisely.",
        )
    )
    return UpstreamInfo.from_initialize_result(name, result)


def two_servers() -> Catalog:
    """github: tools (two upstream pages) + prompts; files: tools, resources with subscribe, completions."""
    catalog = Catalog(
        (
            upstream("github", tools={"listChanged": True}, prompts={}),
            upstream("files", tools={}, resources={"subscribe": True, "listChanged": False}, completions={}),
        )
    )
    steps = [
        ("github", Kind.TOOLS, None, {"tools": GITHUB_TOOLS[:2], "nextCursor": "gh-2"}),
        ("github", Kind.TOOLS, "gh-2", {"tools": GITHUB_TOOLS[2:]}),
        ("github", Kind.PROMPTS, None, {"prompts": GITHUB_PROMPTS}),
        ("files", Kind.TOOLS, None, {"tools": FILES_TOOLS}),
        ("files", Kind.RESOURCES, None, {"resources": FILES_RESOURCES}),
        ("files", Kind.RESOURCE_TEMPLATES, None, {"resourceTemplates": FILES_TEMPLATES}),
    ]
    for server, kind, cursor, result in steps:
        updated = catalog.with_page(server, kind, cursor, result)
        assert isinstance(updated, Catalog)
        catalog = updated
    return catalog


def initialize_body(version: str = "2025-06-18", msg_id: int | str = 0, **caps: Any) -> bytes:
    """The initialize request exactly as the SDK's ClientSession builds it."""
    params = types.InitializeRequestParams(
        protocol_version=version,
        capabilities=types.ClientCapabilities.model_validate(caps),
        client_info=types.Implementation(name="claude-code", version="2.0.0"),
    )
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": dump(params)})


def request_body(method: str, params: dict[str, Any] | None = None, msg_id: int | str = 1) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg)


def notification_body(method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return orjson.dumps(msg)


def session_headers(session: Session, **extra: str) -> dict[str, str]:
    return {**POST_HEADERS, "mcp-session-id": session.id, "mcp-protocol-version": session.protocol_version, **extra}


def start(catalog: Catalog | None = None, access: Access = ALLOW_ALL, **caps: Any) -> Session:
    decision = handle_post(
        CONFIG, catalog or two_servers(), POST_HEADERS, initialize_body(**caps), None, access, NOW, lambda: SESSION_ID
    )
    assert decision.status == 200 and decision.session is not None
    return decision.session


def post(
    session: Session | None,
    body: bytes,
    *,
    catalog: Catalog | None = None,
    access: Access = ALLOW_ALL,
    headers: dict[str, str] | None = None,
    now: float = NOW + 1,
) -> Decision:
    hdrs = headers if headers is not None else (session_headers(session) if session else POST_HEADERS)
    return handle_post(CONFIG, catalog or two_servers(), hdrs, body, session, access, now, lambda: "unused-new-id")


def body_of(decision: Decision) -> dict[str, Any]:
    assert decision.body is not None
    out = orjson.loads(decision.body)
    types.jsonrpc_message_adapter.validate_python(out)  # every reply is a valid JSON-RPC message
    return out
