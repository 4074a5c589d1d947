"""One message in, one decision out: the MCP gateway's whole protocol logic (sans-IO).

Entry points, in the order an adapter calls them:

- ``handle_post`` / ``handle_get`` / ``handle_delete``: a client's HTTP request (method, lowercase
  headers, body) with the session the adapter looked up by its ``mcp-session-id`` (or None), the
  caller's ``Access``, ``now`` and a fresh random id (used only when this is an initialize).
  -> a ``Decision``: answer now (``REPLY``), send one message upstream and relay its answer
  (``FORWARD``), fetch a catalog page with the gateway's own upstream session and call again
  (``FETCH``), open the session's standalone SSE stream (``STREAM``), or drop it (``TERMINATE``).
- ``on_upstream_message``: each message an upstream sends back (the JSON response, or each SSE
  event's data) -> a ``Delivery`` for the client (ids restored, names and URIs prefixed).
- ``on_upstream_lost`` (the upstream answered 404 for its session) and ``on_upstream_failure``
  (unreachable, 5xx, timeout): retry once with a fresh upstream session, or a clear JSON-RPC error.

Everything that changes a session happens here, through ``extproc.mcp.session``'s methods; a
decision carries ``session`` when the adapter must store it. Nothing here raises on peer input:
every refusal is a JSON-RPC error with the HTTP status of ``extproc.mcp.transport`` and
``extproc.mcp.jsonrpc`` (never a 500), and a refused message leaves the session as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from extproc.mcp import transport
from extproc.mcp.access import Access
from extproc.mcp.catalog import (
    DEFAULT_PAGE_SIZE,
    KIND_BY_LIST_CHANGED,
    KIND_BY_METHOD,
    Catalog,
    Kind,
    Lookup,
    MergedPage,
    NeedPage,
    join_uri,
    prefix_content_uris,
    split_name,
    split_uri,
)
from extproc.mcp.jsonrpc import (
    DEFAULT_MAX_BODY_BYTES,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSONRPC_VERSION,
    METHOD_NOT_FOUND,
    SUPPORTED_VERSIONS,
    ErrorResponse,
    Notification,
    ProtocolError,
    Request,
    RequestId,
    Response,
    encode,
    error_response,
    from_dict,
    is_request_id,
    negotiate_version,
    parse_body,
    result_response,
)
from extproc.mcp.session import InFlight, LostUpstream, ServerRequest, Session, new_session

RESOURCE_NOT_FOUND = -32002  # MCP's own code (2025-06-18 and 2025-11-25 server/resources, "Error Handling")

# What the client may have declared that we relay to upstreams: the server->client requests we map
# ids for. Anything else (experimental, tasks) is not passed on, so no upstream relies on it.
RELAYED_CLIENT_CAPABILITIES = ("roots", "sampling", "elicitation")
SERVER_REQUEST_CAPABILITY = {
    "roots/list": "roots",
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
}

INITIALIZED = {"jsonrpc": JSONRPC_VERSION, "method": "notifications/initialized"}


@dataclass(frozen=True)
class Config:
    server_info: Mapping[str, Any]  # the gateway's own serverInfo, e.g. {"name": "ccr-gateway", ...}
    page_size: int = DEFAULT_PAGE_SIZE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    idle_ttl_s: float = 3600.0
    allowed_origins: frozenset[str] | None = None
    gateway_emits_list_changed: bool = False


class Action(Enum):
    REPLY = "reply"
    FORWARD = "forward"
    FETCH = "fetch"
    STREAM = "stream"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class Outbound:
    """A message for one upstream. With ``initialize`` set, first open the upstream session with
    that request (then ``INITIALIZED``) and report it through ``open_upstream``."""

    server: str
    message: Mapping[str, Any]
    initialize: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    status: int = 200
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    sends: tuple[Outbound, ...] = ()  # FORWARD: exactly one, whose answer goes to the client
    fetch: NeedPage | None = None
    session: Session | None = None  # store this session (created or changed); None: nothing to store
    target: tuple[str, str] | None = None  # (server, tool/prompt/URI) for metrics and audit


@dataclass(frozen=True)
class Delivery:
    """What to do with one upstream message: pass ``to_client`` on (``final``: it answers the
    forwarded request, end the client's stream), answer the upstream ourselves, drop list caches."""

    to_client: Mapping[str, Any] | None = None
    final: bool = False
    reply_upstream: Mapping[str, Any] | None = None
    invalidate: tuple[Kind, ...] = ()
    session_changed: bool = False
    target: tuple[str, str] | None = field(default=None)


def _refuse(err: ProtocolError, session: Session | None = None) -> Decision:
    headers = err.headers + ((("mcp-session-id", session.id),) if session is not None else ())
    return Decision(Action.REPLY, err.http_status, err.body(), headers)


def _reply(session: Session, body: Mapping[str, Any], *, changed: bool = False) -> Decision:
    return Decision(
        Action.REPLY, 200, encode(body), (("mcp-session-id", session.id),), session=session if changed else None
    )


def _accepted(session: Session, sends: tuple[Outbound, ...] = (), *, changed: bool = False) -> Decision:
    return Decision(
        Action.REPLY, 202, None, (("mcp-session-id", session.id),), sends, session=session if changed else None
    )


# --- client -> gateway ------------------------------------------------------------------------------


def _session_for(headers: Mapping[str, str], session: Session | None, now: float) -> Session | ProtocolError:
    sent = headers.get(transport.SESSION_HEADER)
    if sent is None:
        return transport.missing_session()
    if session is None or session.id != sent or session.expired(now):
        return transport.unknown_session()
    return session


def handle_post(
    config: Config,
    catalog: Catalog,
    headers: Mapping[str, str],
    body: bytes,
    session: Session | None,
    access: Access,
    now: float,
    new_session_id: Callable[[], str],
) -> Decision:
    """``new_session_id``: called for an initialize only (a session id is 16 random bytes from the
    OS: no system call for the other messages)."""
    for check in (transport.check_origin(headers, config.allowed_origins), transport.check_post_headers(headers)):
        if check is not None:
            return _refuse(check)
    parsed = parse_body(body, version=session.protocol_version if session else None, max_bytes=config.max_body_bytes)
    if isinstance(parsed, ProtocolError):
        return _refuse(parsed)
    if isinstance(parsed, tuple):  # only under a batching revision, which we never negotiate
        return _refuse(ProtocolError(INVALID_REQUEST, "Invalid Request: batches are not supported", 400))
    if isinstance(parsed, Request) and parsed.method == "initialize":
        return _initialize(config, catalog, parsed, access, now, new_session_id())
    found = _session_for(headers, session, now)
    if isinstance(found, ProtocolError):
        return _refuse(found)
    if (err := transport.check_version_header(headers, found.protocol_version)) is not None:
        return _refuse(err, found)
    touched = found.touch(now)
    if isinstance(parsed, Request):
        decision = _client_request(config, catalog, found, parsed, access)
    elif isinstance(parsed, Notification):
        decision = _client_notification(found, parsed)
    else:
        decision = _client_answer(found, parsed)
    # A moved expiry must reach the store, or another replica would expire a live session.
    return replace(decision, session=found) if touched and decision.session is None else decision


def handle_get(config: Config, headers: Mapping[str, str], session: Session | None, now: float) -> Decision:
    """The standalone SSE stream for server notifications (list_changed) outside any request."""
    for check in (transport.check_origin(headers, config.allowed_origins), transport.check_get_headers(headers)):
        if check is not None:
            return _refuse(check)
    found = _session_for(headers, session, now)
    if isinstance(found, ProtocolError):
        return _refuse(found)
    touched = found.touch(now)
    return Decision(Action.STREAM, 200, None, (("mcp-session-id", found.id),), session=found if touched else None)


def handle_delete(config: Config, headers: Mapping[str, str], session: Session | None, now: float) -> Decision:
    """The client ends its session; the adapter drops it and may DELETE the upstream sessions."""
    if (check := transport.check_origin(headers, config.allowed_origins)) is not None:
        return _refuse(check)
    found = _session_for(headers, session, now)
    if isinstance(found, ProtocolError):
        return _refuse(found)
    return Decision(Action.TERMINATE, 200, None)


def handle_other(method: str) -> Decision:
    err = transport.check_method(method)
    return _refuse(err) if err is not None else Decision(Action.REPLY, 200)


def _initialize(
    config: Config, catalog: Catalog, request: Request, access: Access, now: float, new_session_id: str
) -> Decision:
    params = request.params or {}
    requested, caps, info = params.get("protocolVersion"), params.get("capabilities", {}), params.get("clientInfo")
    if not isinstance(requested, str) or not isinstance(caps, dict) or not isinstance(info, dict):
        body = error_response(
            request.id, INVALID_PARAMS, "Invalid params: initialize needs protocolVersion, capabilities and clientInfo"
        )
        return Decision(Action.REPLY, 200, encode(body))
    version = negotiate_version(requested)
    session = new_session(
        new_session_id, version, now, client_info=info, client_capabilities=caps, idle_ttl_s=config.idle_ttl_s
    )
    result = catalog.initialize_result(
        requested,
        config.server_info,
        gateway_emits_list_changed=config.gateway_emits_list_changed,
        reach=access.may_reach,
    )
    return _reply(session, result_response(request.id, result), changed=True)


def _client_request(config: Config, catalog: Catalog, session: Session, request: Request, access: Access) -> Decision:
    method, params = request.method, dict(request.params or {})
    if method == "ping":
        return _reply(session, result_response(request.id, {}))
    if (kind := KIND_BY_METHOD.get(method)) is not None:
        return _list(config, catalog, session, request, kind, access)
    if method == "tools/call":
        return _call_tool(catalog, session, request, params, access)
    if method == "prompts/get":
        return _by_name(catalog, session, request, params, access, Kind.PROMPTS, "Unknown prompt")
    if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        return _by_uri(catalog, session, request, params, access)
    if method == "completion/complete":
        return _complete(catalog, session, request, params, access)
    # logging/setLevel and tasks/* are not advertised (catalog.initialize_result says why).
    return _error(session, request.id, METHOD_NOT_FOUND, f"Method not found: {method}")


def _error(session: Session, msg_id: RequestId, code: int, message: str, data: Any = None) -> Decision:
    return _reply(session, error_response(msg_id, code, message, data))


def _list(config: Config, catalog: Catalog, session: Session, request: Request, kind: Kind, access: Access) -> Decision:
    if kind is Kind.TOOLS:
        page = catalog.page(
            kind,
            (request.params or {}).get("cursor"),
            limit=config.page_size,
            reach=access.may_reach,
            permit=lambda server, item: access.may_use_tool(server, item["name"]),
        )
    else:
        page = catalog.page(
            kind,
            (request.params or {}).get("cursor"),
            limit=config.page_size,
            reach=access.may_use_server_wide,
        )
    if isinstance(page, NeedPage):
        return Decision(Action.FETCH, fetch=page)
    if isinstance(page, ProtocolError):
        return _error(session, request.id, page.code, page.message)
    assert isinstance(page, MergedPage)
    return _reply(session, result_response(request.id, page.result(kind)))


def _call_tool(
    catalog: Catalog, session: Session, request: Request, params: dict[str, Any], access: Access
) -> Decision:
    name = params.get("name")
    if not isinstance(name, str):
        return _error(session, request.id, INVALID_PARAMS, 'Invalid params: tools/call needs a string "name"')
    split = split_name(name)
    # Unknown, of a server we do not front, or denied: one answer, so a denied tool's existence does
    # not leak (the spec's own example answers an unknown tool with -32602).
    unknown = _error(session, request.id, INVALID_PARAMS, f"Unknown tool: {name}")
    if split is None:
        return unknown
    server, tool = split
    upstream = catalog.server(server)
    if upstream is None or not upstream.offers(Kind.TOOLS) or not access.may_use_tool(server, tool):
        return unknown
    if catalog.find(Kind.TOOLS, server, tool) is Lookup.NOT_FOUND:
        return unknown
    return _forward(session, server, request, {**params, "name": tool}, tool)


def _by_name(
    catalog: Catalog, session: Session, request: Request, params: dict[str, Any], access: Access, kind: Kind, what: str
) -> Decision:
    name = params.get("name")
    split = split_name(name) if isinstance(name, str) else None
    upstream = catalog.server(split[0]) if split is not None else None
    if (
        split is None
        or upstream is None
        or not upstream.offers(kind)
        or not access.may_use_server_wide(split[0])
        or catalog.find(kind, *split) is Lookup.NOT_FOUND
    ):
        return _error(session, request.id, INVALID_PARAMS, f"{what}: {name}")
    return _forward(session, split[0], request, {**params, "name": split[1]}, split[1])


def _by_uri(catalog: Catalog, session: Session, request: Request, params: dict[str, Any], access: Access) -> Decision:
    uri = params.get("uri")
    split = split_uri(uri) if isinstance(uri, str) else None
    upstream = catalog.server(split[0]) if split is not None else None
    if (
        split is None
        or upstream is None
        or not upstream.offers(Kind.RESOURCES)
        or not access.may_use_server_wide(split[0])
    ):
        return _error(session, request.id, RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
    if request.method != "resources/read" and not _truthy(upstream.capabilities.get("resources"), "subscribe"):
        return _error(
            session, request.id, METHOD_NOT_FOUND, f"Method not found: {split[0]} has no resource subscriptions"
        )
    return _forward(session, split[0], request, {**params, "uri": split[1]}, split[1])


def _complete(catalog: Catalog, session: Session, request: Request, params: dict[str, Any], access: Access) -> Decision:
    ref = params.get("ref")
    split: tuple[str, str] | None = None
    new_ref: dict[str, Any] = {}
    if isinstance(ref, dict) and ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
        split = split_name(ref["name"])
        new_ref = {**ref, "name": split[1]} if split else {}
    elif isinstance(ref, dict) and ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
        split = split_uri(ref["uri"])
        new_ref = {**ref, "uri": split[1]} if split else {}
    upstream = catalog.server(split[0]) if split is not None else None
    if split is None or upstream is None or not access.may_use_server_wide(split[0]):
        return _error(session, request.id, INVALID_PARAMS, "Invalid params: unknown completion reference")
    if "completions" not in upstream.capabilities:
        return _error(session, request.id, METHOD_NOT_FOUND, f"Method not found: {split[0]} offers no completions")
    return _forward(session, split[0], request, {**params, "ref": new_ref}, split[1])


def _truthy(value: Any, key: str) -> bool:
    return isinstance(value, dict) and bool(value.get(key))


def upstream_initialize(session: Session, server: str) -> dict[str, Any]:
    """The initialize the gateway sends an upstream for this session: the client's revision,
    identity and relayable capabilities (the gateway is transparent to the upstream)."""
    caps = {k: v for k, v in session.client_capabilities.items() if k in RELAYED_CLIENT_CAPABILITIES}
    return Request(
        f"{session.id}:init:{server}",
        "initialize",
        {"protocolVersion": session.protocol_version, "capabilities": caps, "clientInfo": session.client_info},
    ).to_dict()


def open_upstream(
    session: Session, server: str, answer: Mapping[str, Any], upstream_session_id: str | None
) -> ProtocolError | None:
    """The upstream's answer to ``upstream_initialize``; on success the session records it (store it)."""
    result = answer.get("result")
    version = result.get("protocolVersion") if isinstance(result, dict) else None
    if version not in SUPPORTED_VERSIONS:
        return ProtocolError(
            INTERNAL_ERROR,
            f"Upstream MCP server {server!r} could not be initialized",
            200,
            data={"server": server, "protocolVersion": version},
        )
    session.upstream_opened(server, upstream_session_id, str(version))
    return None


def _forward(session: Session, server: str, request: Request, params: dict[str, Any], name: str) -> Decision:
    entry = InFlight(server, request.id, request.method, name=name)
    upstream_id = session.forward_id(entry)
    meta = params.get("_meta")
    if isinstance(meta, dict) and is_request_id(meta.get("progressToken")):
        # The upstream reports progress under our id, which maps back to this client and token.
        entry.progress_token = meta["progressToken"]
        params = {**params, "_meta": {**meta, "progressToken": upstream_id}}
    message = Request(upstream_id, request.method, params).to_dict()
    init = None if session.upstream_open(server) else upstream_initialize(session, server)
    return Decision(Action.FORWARD, sends=(Outbound(server, message, init),), session=session, target=(server, name))


def _client_notification(session: Session, note: Notification) -> Decision:
    params = dict(note.params or {})
    if note.method == "notifications/initialized":
        changed = not session.initialized
        session.initialized = True
        return _accepted(session, changed=changed)
    if note.method == "notifications/cancelled":
        found = session.in_flight_for_client_id(params.get("requestId"))
        if found is None:
            return _accepted(session)  # finished already, or never ours: nothing to cancel
        upstream_id, entry = found
        session.finish(upstream_id)  # a late answer is dropped (spec: the client ignores it anyway)
        out = Notification(note.method, {**params, "requestId": upstream_id}).to_dict()
        return _accepted(session, (Outbound(entry.server, out),), changed=True)
    if note.method == "notifications/progress":
        token = params.get("progressToken")
        request = session.server_requests.get(token) if isinstance(token, str) else None
        if request is None or request.progress_token is None:
            return _accepted(session)
        out = Notification(note.method, {**params, "progressToken": request.progress_token}).to_dict()
        return _accepted(session, (Outbound(request.server, out),))
    if note.method == "notifications/roots/list_changed":
        sends = tuple(Outbound(server, note.to_dict()) for server in session.upstreams if session.upstream_open(server))
        return _accepted(session, sends)
    return _accepted(session)  # JSON-RPC: a notification is never answered, even an unknown one


def _client_answer(session: Session, answer: Response | ErrorResponse) -> Decision:
    """The client answering a request an upstream sent it (sampling, elicitation, roots/list)."""
    request = session.server_requests.pop(answer.id, None) if isinstance(answer.id, str) else None
    if request is None:
        return _accepted(session)  # late or unknown: dropped
    if isinstance(answer, Response):
        out = Response(request.upstream_id, answer.result).to_dict()
    else:
        out = ErrorResponse(request.upstream_id, answer.code, answer.message, answer.data).to_dict()
    return _accepted(session, (Outbound(request.server, out),), changed=True)


# --- upstream -> gateway ----------------------------------------------------------------------------


def on_upstream_message(session: Session, server: str, raw: Mapping[str, Any]) -> Delivery:
    message = from_dict(raw)
    if isinstance(message, ProtocolError):
        return Delivery()  # an upstream's garbage never reaches the client
    if isinstance(message, Response | ErrorResponse):
        return _upstream_answer(session, server, message)
    if isinstance(message, Request):
        return _upstream_request(session, server, message)
    return _upstream_notification(session, server, message)


def _upstream_answer(session: Session, server: str, answer: Response | ErrorResponse) -> Delivery:
    entry = session.in_flight.get(answer.id) if isinstance(answer.id, str) else None
    if entry is None or entry.server != server:
        return Delivery()  # cancelled, or not ours
    session.finish(answer.id)
    session.upstream_succeeded(server)
    target = (server, entry.name or "")
    if isinstance(answer, ErrorResponse):
        out = ErrorResponse(entry.client_id, answer.code, answer.message, answer.data).to_dict()
        return Delivery(out, final=True, session_changed=True, target=target)
    return Delivery(
        result_response(entry.client_id, _rewrite_result(server, entry.method, answer.result)),
        final=True,
        session_changed=True,
        target=target,
    )


def _rewrite_result(server: str, method: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """URIs in an upstream's answer, made to point back through the gateway."""
    out = dict(result)
    if method == "tools/call" and "content" in out:
        out["content"] = prefix_content_uris(server, out["content"])
    elif method == "prompts/get" and isinstance(out.get("messages"), list):
        out["messages"] = [
            {**m, "content": prefix_content_uris(server, [m["content"]])[0]}
            if isinstance(m, dict) and isinstance(m.get("content"), dict)
            else m
            for m in out["messages"]
        ]
    elif method == "resources/read" and isinstance(out.get("contents"), list):
        out["contents"] = [
            {**c, "uri": join_uri(server, c["uri"])} if isinstance(c, dict) and isinstance(c.get("uri"), str) else c
            for c in out["contents"]
        ]
    return out


def _upstream_request(session: Session, server: str, request: Request) -> Delivery:
    if request.method == "ping":  # answered by the gateway: the upstream only checks we are there
        return Delivery(reply_upstream=result_response(request.id, {}))
    capability = SERVER_REQUEST_CAPABILITY.get(request.method)
    if capability is None or capability not in session.client_capabilities:
        return Delivery(
            reply_upstream=error_response(request.id, METHOD_NOT_FOUND, f"Method not found: {request.method}")
        )
    params = dict(request.params or {})
    entry = ServerRequest(server, request.id)
    gateway_id = session.server_request_id(entry)
    meta = params.get("_meta")
    if isinstance(meta, dict) and is_request_id(meta.get("progressToken")):
        entry.progress_token = meta["progressToken"]
        params["_meta"] = {**meta, "progressToken": gateway_id}
    return Delivery(Request(gateway_id, request.method, params).to_dict(), session_changed=True)


def _upstream_notification(session: Session, server: str, note: Notification) -> Delivery:
    params = dict(note.params or {})
    if (kinds := KIND_BY_LIST_CHANGED.get(note.method)) is not None:
        return Delivery(note.to_dict(), invalidate=kinds)
    if note.method == "notifications/progress":
        entry = session.in_flight_for_progress(params.get("progressToken"))
        if entry is None or entry.server != server or entry.progress_token is None:
            return Delivery()
        return Delivery(Notification(note.method, {**params, "progressToken": entry.progress_token}).to_dict())
    if note.method == "notifications/cancelled":
        for gateway_id, request in list(session.server_requests.items()):
            if request.server == server and request.upstream_id == params.get("requestId"):
                del session.server_requests[gateway_id]
                out = Notification(note.method, {**params, "requestId": gateway_id}).to_dict()
                return Delivery(out, session_changed=True)
        return Delivery()
    if note.method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
        return Delivery(Notification(note.method, {**params, "uri": join_uri(server, params["uri"])}).to_dict())
    if note.method == "notifications/elicitation/complete":
        return Delivery(note.to_dict())
    # notifications/message (logging is not advertised) and anything unknown: dropped.
    return Delivery()


def on_upstream_lost(session: Session, sent: Outbound) -> Decision:
    """The upstream answered HTTP 404 to ``sent``: its session is gone (it restarted, or expired us)."""
    upstream_id = sent.message.get("id")
    entry = session.in_flight.get(upstream_id) if isinstance(upstream_id, str) else None
    if session.upstream_lost(sent.server) is LostUpstream.REINITIALIZE and entry is not None:
        again = Outbound(sent.server, sent.message, upstream_initialize(session, sent.server))
        return Decision(Action.FORWARD, sends=(again,), session=session, target=(sent.server, entry.name or ""))
    return on_upstream_failure(session, sent, "the upstream MCP server lost the session again", None)


def on_upstream_failure(session: Session, sent: Outbound, reason: str, http_status: int | None) -> Decision:
    """The forwarded request got no answer (connect error, timeout, 5xx): a JSON-RPC error for the
    client, HTTP 200 so its own session stays intact and its next call can succeed."""
    upstream_id = sent.message.get("id")
    entry = session.finish(upstream_id)
    if entry is None:
        return _accepted(session, changed=True)  # a notification we sent, or a request cancelled since
    data = {"server": sent.server, "reason": reason, **({"status": http_status} if http_status is not None else {})}
    body = error_response(
        entry.client_id, INTERNAL_ERROR, f"Upstream MCP server {sent.server!r} failed: {reason}", data
    )
    return _reply(session, body, changed=True)
