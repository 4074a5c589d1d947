"""The router (extproc.mcp.router): one message in, one decision out. Golden flows as an SDK client
and SDK servers would exchange them, each refusal with its code and HTTP status, and the session
left intact by every refusal."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.mcp.access import Access, Grant
from extproc.mcp.catalog import Kind, NeedPage
from extproc.mcp.router import (
    INITIALIZED,
    Action,
    Decision,
    Outbound,
    handle_delete,
    handle_get,
    handle_other,
    on_upstream_failure,
    on_upstream_lost,
    on_upstream_message,
    open_upstream,
    upstream_initialize,
)
from extproc.mcp.session import Session
from tests.unit.mcp.helpers import (
    CONFIG,
    NOW,
    POST_HEADERS,
    SESSION_ID,
    body_of,
    initialize_body,
    notification_body,
    post,
    request_body,
    session_headers,
    start,
    two_servers,
    types,
)


def forwarded(decision: Decision) -> Outbound:
    assert decision.action is Action.FORWARD and len(decision.sends) == 1
    return decision.sends[0]


def opened(session: Session, server: str) -> None:
    err = open_upstream(session, server, {"result": {"protocolVersion": session.protocol_version}}, f"up-{server}")
    assert err is None


# --- initialize and local answers -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_initialize_opens_a_session_and_answers_the_merged_server(version: str) -> None:
    decision = post(None, initialize_body(version), headers=POST_HEADERS)
    assert decision.action is Action.REPLY and decision.status == 200
    assert decision.session is not None
    assert ("mcp-session-id", decision.session.id) in decision.headers
    reply = body_of(decision)
    result = types.InitializeResult.model_validate(reply["result"])
    assert result.protocol_version == version and reply["id"] == 0
    assert decision.session is not None and decision.session.protocol_version == version
    assert decision.session.client_info["name"] == "claude-code"


def test_initialize_without_its_params_is_invalid_params_and_opens_no_session() -> None:
    decision = post(None, request_body("initialize", {"protocolVersion": "2025-06-18"}, 0), headers=POST_HEADERS)
    assert (decision.status, body_of(decision)["error"]["code"], decision.session) == (200, -32602, None)


def test_ping_and_the_initialized_notification_are_answered_by_the_gateway() -> None:
    session = start()
    assert body_of(post(session, request_body("ping", msg_id="p")))["result"] == {}
    decision = post(session, notification_body("notifications/initialized"))
    assert (decision.status, decision.body, decision.sends) == (202, None, ())
    assert session.initialized and decision.session is session


def test_tools_list_is_answered_from_the_catalog_in_pages_of_the_configured_size() -> None:
    session = start()
    first = body_of(post(session, request_body("tools/list")))["result"]
    assert [t["name"] for t in first["tools"]] == [
        "github__search_issues",
        "github__create_issue",
        "github__delete_repo",
    ]
    second = body_of(post(session, request_body("tools/list", {"cursor": first["nextCursor"]})))["result"]
    assert [t["name"] for t in second["tools"]] == ["github__get__me", "files__read_file", "files__write_file"]
    for result in (first, second):
        types.ListToolsResult.model_validate(result)


def test_a_list_page_not_cached_yet_is_a_fetch_for_the_adapter() -> None:
    catalog = two_servers().invalidate("files", (Kind.PROMPTS,)).invalidate("github", (Kind.PROMPTS,))
    decision = post(start(), request_body("prompts/list"), catalog=catalog)
    assert decision.action is Action.FETCH and decision.fetch == NeedPage("github", Kind.PROMPTS, None)


def test_prompts_and_resources_lists_follow_server_wide_grants() -> None:
    access = Access(Grant(allow=("github/*", "files")))
    session = start(access=access)
    prompts = body_of(post(session, request_body("prompts/list"), access=access))["result"]
    resources = body_of(post(session, request_body("resources/list"), access=access))["result"]
    assert prompts["prompts"] == []  # github granted tool by tool: its prompts are not
    assert next(r["uri"] for r in resources["resources"]) == "ccr-mcp://files/file:///repo/README.md"
    types.ListPromptsResult.model_validate(prompts)


# --- forwarding and the way back -----------------------------------------------------------------


def test_tools_call_goes_to_its_server_unprefixed_with_our_id_and_progress_token() -> None:
    session = start()
    params = {"name": "files__read_file", "arguments": {"path": "a"}, "_meta": {"progressToken": "tok-1"}}
    decision = post(session, request_body("tools/call", params, msg_id=7))
    out = forwarded(decision)
    assert out.server == "files" and decision.target == ("files", "read_file")
    upstream_id = out.message["id"]
    assert out.message["params"] == {
        "name": "read_file",
        "arguments": {"path": "a"},
        "_meta": {"progressToken": upstream_id},
    }
    types.CallToolRequest.model_validate(out.message)
    assert out.initialize == upstream_initialize(session, "files")  # no upstream session yet: open it first
    assert out.initialize["params"]["protocolVersion"] == "2025-06-18"
    types.InitializeRequest.model_validate(out.initialize)

    progress = on_upstream_message(
        session,
        "files",
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": upstream_id, "progress": 1}},
    )
    assert progress.to_client == {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "tok-1", "progress": 1},
    }
    types.ProgressNotification.model_validate(progress.to_client)

    answer = {
        "jsonrpc": "2.0",
        "id": upstream_id,
        "result": {"content": [{"type": "resource_link", "uri": "file:///a", "name": "a"}]},
    }
    delivery = on_upstream_message(session, "files", answer)
    assert delivery.final and delivery.session_changed
    assert delivery.to_client is not None and delivery.to_client["id"] == 7
    assert delivery.to_client["result"]["content"][0]["uri"] == "ccr-mcp://files/file:///a"
    types.CallToolResult.model_validate(delivery.to_client["result"])
    assert session.in_flight == {}
    assert on_upstream_message(session, "files", answer) == on_upstream_message(
        session, "files", {}
    )  # a duplicate is dropped


def test_an_opened_upstream_is_not_initialized_again() -> None:
    session = start()
    opened(session, "github")
    assert forwarded(post(session, request_body("tools/call", {"name": "github__create_issue"}))).initialize is None


def test_an_upstream_answering_an_unsupported_revision_is_refused() -> None:
    session = start()
    err = open_upstream(session, "files", {"result": {"protocolVersion": "2024-11-05"}}, None)
    assert err is not None and err.code == -32603 and session.upstream_open("files") is None


def test_an_upstream_error_reaches_the_client_under_its_own_id() -> None:
    session = start()
    out = forwarded(post(session, request_body("prompts/get", {"name": "github__triage"}, msg_id="c")))
    assert out.message["params"] == {"name": "triage"}
    delivery = on_upstream_message(
        session, "github", {"jsonrpc": "2.0", "id": out.message["id"], "error": {"code": -32602, "message": "bad"}}
    )
    assert delivery.to_client == {"jsonrpc": "2.0", "id": "c", "error": {"code": -32602, "message": "bad"}}


def test_an_answer_from_another_server_for_our_id_is_dropped() -> None:
    session = start()
    out = forwarded(post(session, request_body("tools/call", {"name": "files__read_file"})))
    assert (
        on_upstream_message(session, "github", {"jsonrpc": "2.0", "id": out.message["id"], "result": {}}).to_client
        is None
    )
    assert session.in_flight  # still waiting for the right one


def test_resources_read_unwraps_the_uri_and_wraps_the_contents() -> None:
    session = start()
    out = forwarded(post(session, request_body("resources/read", {"uri": "ccr-mcp://files/file:///a%20b/{x}?q=1#f"})))
    assert out.server == "files" and out.message["params"] == {"uri": "file:///a%20b/{x}?q=1#f"}
    reply = {
        "jsonrpc": "2.0",
        "id": out.message["id"],
        "result": {"contents": [{"uri": "file:///a%20b/{x}?q=1#f", "text": "hi"}]},
    }
    result = on_upstream_message(session, "files", reply).to_client["result"]  # type: ignore[index]
    assert result["contents"][0]["uri"] == "ccr-mcp://files/file:///a%20b/{x}?q=1#f"
    types.ReadResourceResult.model_validate(result)


def test_prompt_messages_with_resources_are_rewritten() -> None:
    session = start()
    out = forwarded(post(session, request_body("prompts/get", {"name": "github__triage"})))
    message = {"role": "user", "content": {"type": "resource", "resource": {"uri": "repo://x", "text": "t"}}}
    result = on_upstream_message(
        session, "github", {"jsonrpc": "2.0", "id": out.message["id"], "result": {"messages": [message]}}
    )
    rewritten = result.to_client["result"]  # type: ignore[index]
    assert rewritten["messages"][0]["content"]["resource"]["uri"] == "ccr-mcp://github/repo://x"
    types.GetPromptResult.model_validate(rewritten)


def test_subscribe_and_completion_route_by_their_references() -> None:
    session = start()
    sub = forwarded(post(session, request_body("resources/subscribe", {"uri": "ccr-mcp://files/file:///x"})))
    assert sub.server == "files" and sub.message["params"] == {"uri": "file:///x"}
    ref = {"type": "ref/resource", "uri": "ccr-mcp://files/file:///{path}"}
    done = forwarded(
        post(session, request_body("completion/complete", {"ref": ref, "argument": {"name": "path", "value": "s"}}))
    )
    assert done.message["params"]["ref"] == {"type": "ref/resource", "uri": "file:///{path}"}
    types.CompleteRequest.model_validate(done.message)


def test_client_cancellation_reaches_the_upstream_under_our_id_and_the_late_answer_is_dropped() -> None:
    session = start()
    out = forwarded(post(session, request_body("tools/call", {"name": "files__read_file"}, msg_id=9)))
    decision = post(session, notification_body("notifications/cancelled", {"requestId": 9, "reason": "user"}))
    assert decision.status == 202 and decision.session is session
    (cancel,) = decision.sends
    assert cancel.server == "files" and cancel.message["params"] == {"requestId": out.message["id"], "reason": "user"}
    types.CancelledNotification.model_validate(cancel.message)
    assert (
        on_upstream_message(session, "files", {"jsonrpc": "2.0", "id": out.message["id"], "result": {}}).to_client
        is None
    )
    assert post(session, notification_body("notifications/cancelled", {"requestId": 9})).sends == ()


def test_a_sampling_request_from_an_upstream_is_relayed_and_its_answer_routed_back() -> None:
    session = start(sampling={})
    request = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "sampling/createMessage",
        "params": {"messages": [], "maxTokens": 5, "_meta": {"progressToken": 3}},
    }
    delivery = on_upstream_message(session, "github", request)
    assert delivery.to_client is not None and not delivery.final
    gateway_id = delivery.to_client["id"]
    assert delivery.to_client["params"]["_meta"] == {"progressToken": gateway_id}
    types.CreateMessageRequest.model_validate(delivery.to_client)
    progress = post(
        session, notification_body("notifications/progress", {"progressToken": gateway_id, "progress": 0.5})
    )
    assert progress.sends[0].message["params"] == {"progressToken": 3, "progress": 0.5}
    answer = {
        "jsonrpc": "2.0",
        "id": gateway_id,
        "result": {"role": "assistant", "content": {"type": "text", "text": "x"}, "model": "m"},
    }
    decision = post(session, orjson.dumps(answer))
    assert decision.status == 202
    assert decision.sends == (Outbound("github", {**answer, "id": 41}),)


def test_server_requests_the_client_did_not_declare_are_refused_upstream() -> None:
    session = start()
    delivery = on_upstream_message(session, "github", {"jsonrpc": "2.0", "id": 1, "method": "roots/list"})
    assert delivery.to_client is None and delivery.reply_upstream is not None
    assert delivery.reply_upstream["error"]["code"] == -32601
    ping = on_upstream_message(session, "github", {"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert ping.reply_upstream == {"jsonrpc": "2.0", "id": 2, "result": {}}


def test_upstream_cancellation_of_its_own_request_reaches_the_client_under_our_id() -> None:
    session = start(roots={})
    gid = on_upstream_message(session, "files", {"jsonrpc": "2.0", "id": "r", "method": "roots/list"}).to_client["id"]  # type: ignore[index]
    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "r"}}
    assert on_upstream_message(session, "github", note).to_client is None  # not github's request
    assert on_upstream_message(session, "files", note).to_client == {**note, "params": {"requestId": gid}}


def test_upstream_notifications_are_rewritten_invalidated_or_dropped() -> None:
    session = start()
    changed = on_upstream_message(
        session, "files", {"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}
    )
    assert changed.invalidate == (Kind.RESOURCES, Kind.RESOURCE_TEMPLATES) and changed.to_client is not None
    updated = on_upstream_message(
        session,
        "files",
        {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///x"}},
    )
    assert updated.to_client["params"]["uri"] == "ccr-mcp://files/file:///x"  # type: ignore[index]
    types.ResourceUpdatedNotification.model_validate(updated.to_client)
    for dropped in (
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "nope", "progress": 1}},
        {"jsonrpc": "2.0", "method": "notifications/unknown"},
        {"not": "json-rpc"},
    ):
        assert on_upstream_message(session, "files", dropped).to_client is None


def test_roots_list_changed_goes_to_every_open_upstream() -> None:
    session = start(roots={"listChanged": True})
    opened(session, "files")
    decision = post(session, notification_body("notifications/roots/list_changed"))
    assert [s.server for s in decision.sends] == ["files"]


# --- a lost or failing upstream -------------------------------------------------------------------


def test_an_upstream_that_lost_its_session_is_reopened_once_then_a_clear_error() -> None:
    session = start()
    opened(session, "files")
    out = forwarded(post(session, request_body("tools/call", {"name": "files__read_file"}, msg_id=3)))
    retry = forwarded(on_upstream_lost(session, out))
    assert retry.message == out.message and retry.initialize is not None
    opened(session, "files")
    final = on_upstream_lost(session, retry)
    reply = body_of(final)
    assert final.status == 200 and reply["id"] == 3 and reply["error"]["code"] == -32603
    assert reply["error"]["data"]["server"] == "files"
    assert session.in_flight == {}


def test_an_unreachable_upstream_is_a_json_rpc_error_never_a_500() -> None:
    session = start()
    out = forwarded(post(session, request_body("tools/call", {"name": "github__create_issue"}, msg_id="z")))
    decision = on_upstream_failure(session, out, "connect timeout", 503)
    reply = body_of(decision)
    assert decision.status == 200 and reply["id"] == "z" and reply["error"]["data"]["status"] == 503
    assert forwarded(post(session, request_body("tools/call", {"name": "github__create_issue"}))).server == "github"


# --- refusals: each code and status ---------------------------------------------------------------


def refusal(decision: Decision) -> tuple[int, int]:
    return decision.status, body_of(decision)["error"]["code"]


REQUEST_REFUSALS: list[Any] = [
    pytest.param("nope/method", {}, (200, -32601), id="unknown method"),
    pytest.param("logging/setLevel", {"level": "info"}, (200, -32601), id="logging is not advertised"),
    pytest.param("tasks/get", {"taskId": "t"}, (200, -32601), id="tasks are not advertised"),
    pytest.param("tools/call", {}, (200, -32602), id="tools/call without a name"),
    pytest.param("tools/call", {"name": "read_file"}, (200, -32602), id="a tool name without a server"),
    pytest.param("tools/call", {"name": "gitlab__x"}, (200, -32602), id="a server we do not front"),
    pytest.param("tools/call", {"name": "github__nope"}, (200, -32602), id="a tool its server does not have"),
    pytest.param("tools/list", {"cursor": "forged"}, (200, -32602), id="a forged cursor"),
    pytest.param("prompts/get", {"name": "github__nope"}, (200, -32602), id="an unknown prompt"),
    pytest.param("prompts/get", {"name": "files__x"}, (200, -32602), id="a server without prompts"),
    pytest.param("resources/read", {"uri": "file:///x"}, (200, -32002), id="a uri not of ours"),
    pytest.param("resources/read", {"uri": "ccr-mcp://github/x"}, (200, -32002), id="a server without resources"),
    pytest.param(
        "completion/complete",
        {"ref": {"type": "ref/prompt", "name": "github__triage"}},
        (200, -32601),
        id="no completions",
    ),
    pytest.param("completion/complete", {"ref": {"type": "ref/x"}}, (200, -32602), id="an unknown reference"),
]


@pytest.mark.parametrize(("method", "params", "expected"), REQUEST_REFUSALS)
def test_each_refused_request_gets_its_code_and_leaves_the_session_intact(
    method: str, params: dict[str, Any], expected: tuple[int, int]
) -> None:
    session = start()
    before = session.to_bytes()
    decision = post(session, request_body(method, params, msg_id="r"))
    assert refusal(decision) == expected and body_of(decision)["id"] == "r"
    assert decision.sends == () and decision.session is None
    assert Session.from_bytes(before).in_flight == session.in_flight


def test_a_denied_tool_is_refused_exactly_like_an_unknown_one() -> None:
    access = Access(Grant(allow=("*",), deny=("github/delete_*",)))
    session = start(access=access)
    denied = body_of(post(session, request_body("tools/call", {"name": "github__delete_repo"}), access=access))
    unknown = body_of(post(session, request_body("tools/call", {"name": "github__nope"}), access=access))
    assert denied["error"] == {"code": -32602, "message": "Unknown tool: github__delete_repo"}
    assert unknown["error"] == {"code": -32602, "message": "Unknown tool: github__nope"}


def test_subscribing_where_the_upstream_cannot_is_method_not_found() -> None:
    catalog = two_servers()
    catalog = type(catalog)(
        tuple(s if s.name != "files" else type(s)("files", "2025-11-25", {"resources": {}}) for s in catalog.servers),
        catalog.pages,
    )
    decision = post(start(catalog), request_body("resources/subscribe", {"uri": "ccr-mcp://files/x"}), catalog=catalog)
    assert refusal(decision) == (200, -32601)


TRANSPORT_REFUSALS: list[Any] = [
    pytest.param({"content-type": "application/json"}, b"{}", (406, -32600), id="accept missing"),
    pytest.param({"accept": "application/json"}, b"{}", (406, -32600), id="accept without event-stream"),
    pytest.param({"accept": "*/*", "content-type": "text/plain"}, b"{}", (415, -32600), id="not json"),
    pytest.param({**POST_HEADERS, "origin": "https://evil.example"}, b"{}", (403, -32600), id="origin not allowed"),
    pytest.param(POST_HEADERS, b"{", (400, -32700), id="malformed JSON"),
    pytest.param(POST_HEADERS, b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', (400, -32600), id="a batch"),
    pytest.param(
        POST_HEADERS, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[]}', (400, -32602), id="array params"
    ),
    pytest.param(POST_HEADERS, b"{" + b" " * 5_000_000 + b"}", (413, -32600), id="oversize"),
    pytest.param(POST_HEADERS, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', (400, -32600), id="no session id"),
    pytest.param(
        {**POST_HEADERS, "mcp-session-id": "other"},
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        (404, -32600),
        id="unknown session",
    ),
    pytest.param(
        {**POST_HEADERS, "mcp-session-id": SESSION_ID, "mcp-protocol-version": "2099-01-01"},
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        (400, -32600),
        id="unsupported version header",
    ),
    pytest.param(
        {**POST_HEADERS, "mcp-session-id": SESSION_ID, "mcp-protocol-version": "2025-11-25"},
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        (400, -32600),
        id="version header not the sessions",
    ),
]


@pytest.mark.parametrize(("headers", "body", "expected"), TRANSPORT_REFUSALS)
def test_each_transport_refusal_gets_its_http_status(
    headers: dict[str, str], body: bytes, expected: tuple[int, int]
) -> None:
    from dataclasses import replace

    from extproc.mcp.router import handle_post

    session = start()
    config = replace(CONFIG, allowed_origins=frozenset({"https://ok.example"}))
    decision = handle_post(
        config, two_servers(), headers, body, session, Access(Grant(allow=("*",))), NOW + 1, lambda: "x"
    )
    assert refusal(decision) == expected
    assert decision.session is None and decision.sends == ()


def test_an_expired_session_is_404_and_the_client_may_initialize_again() -> None:
    session = start()
    decision = post(session, request_body("ping"), now=NOW + CONFIG.idle_ttl_s + 1)
    assert refusal(decision) == (404, -32600)
    again = post(session, initialize_body(), headers=session_headers(session), now=NOW + CONFIG.idle_ttl_s + 1)
    assert again.status == 200 and again.session is not None


def test_a_missing_version_header_means_the_sessions_revision() -> None:
    session = start()
    headers = {k: v for k, v in session_headers(session).items() if k != "mcp-protocol-version"}
    assert body_of(post(session, request_body("ping"), headers=headers))["result"] == {}


def test_notifications_unknown_and_answers_unknown_are_accepted_and_dropped() -> None:
    session = start()
    assert post(session, notification_body("notifications/whatever")).status == 202
    late = post(session, b'{"jsonrpc":"2.0","id":"s99","result":{}}')
    assert (late.status, late.sends) == (202, ())


def test_get_opens_the_stream_and_delete_ends_the_session_and_other_methods_are_405() -> None:
    session = start()
    hdrs = {"accept": "text/event-stream", "mcp-session-id": SESSION_ID}
    assert handle_get(CONFIG, hdrs, session, NOW).action is Action.STREAM
    assert handle_get(CONFIG, {"accept": "application/json", "mcp-session-id": SESSION_ID}, session, NOW).status == 406
    assert handle_get(CONFIG, {"accept": "text/event-stream"}, session, NOW).status == 400
    assert handle_delete(CONFIG, {"mcp-session-id": SESSION_ID}, session, NOW).action is Action.TERMINATE
    assert handle_delete(CONFIG, {"mcp-session-id": SESSION_ID}, None, NOW).status == 404
    other = handle_other("PUT")
    assert other.status == 405 and ("allow", "GET, POST, DELETE") in other.headers
    assert INITIALIZED["method"] == "notifications/initialized"


# --- never a 500 -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
methods = st.sampled_from(
    [
        "ping",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "initialize",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/initialized",
        "notifications/roots/list_changed",
        "x",
    ]
)
names = st.sampled_from(
    ["github__create_issue", "files__read_file", "github__", "__x", "ccr-mcp://files/file:///a", "x"]
)
params = st.fixed_dictionaries(
    {},
    optional={
        "name": names | json_values,
        "uri": names | json_values,
        "cursor": st.text(max_size=10) | json_values,
        "ref": st.fixed_dictionaries(
            {"type": st.sampled_from(["ref/prompt", "ref/resource"]), "name": names, "uri": names}
        )
        | json_values,
        "requestId": st.integers(0, 3) | json_values,
        "progressToken": json_values,
        "_meta": st.fixed_dictionaries({"progressToken": json_values}) | json_values,
        "protocolVersion": st.sampled_from(["2025-06-18", "2024-11-05"]) | json_values,
        "capabilities": json_values,
        "clientInfo": json_values,
    },
)
messages = st.builds(
    lambda m, p, i, with_id: orjson.dumps(
        {"jsonrpc": "2.0", "method": m, "params": p, **({"id": i} if with_id else {})}
    ),
    methods,
    params,
    st.integers(0, 3) | st.text(max_size=3),
    st.booleans(),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages | st.binary(max_size=40), min_size=1, max_size=6))
def test_no_sequence_of_client_messages_raises_or_answers_5xx(bodies: list[bytes]) -> None:
    session = start(sampling={}, roots={})
    opened(session, "files")
    for body in bodies:
        decision = post(session, body)
        assert decision.status < 500
        if decision.body is not None:
            body_of(decision)
        for sent in decision.sends:
            on_upstream_failure(session, sent, "down", 502)
            on_upstream_lost(session, sent)
    assert Session.from_bytes(session.to_bytes()) == session


@settings(max_examples=200)
@given(
    st.lists(
        st.builds(
            lambda m, p, i: {"jsonrpc": "2.0", "method": m, "params": p, "id": i},
            methods | st.sampled_from(["sampling/createMessage", "roots/list", "notifications/progress"]),
            params,
            st.integers(0, 3),
        )
        | json_values.filter(lambda v: isinstance(v, dict)),
        max_size=6,
    )
)
def test_no_upstream_message_raises(upstream_messages: list[dict[str, Any]]) -> None:
    session = start(sampling={}, roots={})
    forwarded(post(session, request_body("tools/call", {"name": "files__read_file", "_meta": {"progressToken": 1}})))
    for raw in upstream_messages:
        on_upstream_message(session, "files", raw)
    assert Session.from_bytes(session.to_bytes()) == session


def test_a_request_that_moves_expiry_noticeably_hands_the_session_back_to_store() -> None:
    session = start()
    assert post(session, request_body("ping"), now=NOW + 1).session is None
    later = post(session, request_body("ping"), now=NOW + 120)
    assert later.session is session and session.last_seen == NOW + 120
    assert not session.expired(NOW + 120 + CONFIG.idle_ttl_s - 1)
