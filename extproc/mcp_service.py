"""The MCP gateway service: the Streamable HTTP server side, in front of the sans-IO core.

Envoy's listener sends ``/mcp`` here (cluster ``ccr_mcp``) after the decision hop authenticated
the caller and set ``x-ccr-tenant`` / ``x-ccr-key`` (ccr.v1.contract; always set, any client copy
overwritten, so they are trusted; ``-`` means no tenant / no key). This adapter only moves bytes:
``extproc.mcp.router`` decides every answer and every status (docs/mcp.md), and this module
carries its decisions out:

- ``REPLY``: the core's status, headers and body (after sending what it wants sent upstream: a
  cancellation, the client's answer to an upstream's request);
- ``FETCH``: a catalog page fetched (extproc.mcp_catalog), then the core asked again;
- ``FORWARD``: the request relayed to its upstream (extproc.mcp_upstream), opening the upstream
  session first when the core says so; every upstream message goes back through
  ``router.on_upstream_message``. The client gets JSON when the upstream's answer is the only
  message, else an SSE stream, event by event (progress passes through), ended by the
  ``Delivery.final`` message. Upstream 404 -> ``on_upstream_lost``; unreachable, 5xx, timeout ->
  ``on_upstream_failure`` (a clear -32603, HTTP 200, the session intact);
- ``STREAM``: the standalone GET stream (list_changed of stdio servers, keep-alive comments);
- ``TERMINATE``: the session dropped, its upstream sessions ended in the background.

Per ``tools/call``: the caller's per-minute limit (``McpSettings.calls_per_minute``), checked
before anything goes upstream: over it, the JSON-RPC error ``RATE_LIMITED`` (-32029: JSON-RPC
leaves -32000..-32099 to the implementation; 29 for HTTP's 429), HTTP 200, ``data`` with the
limit and the seconds to the next window. Then the usage record, audit entry and metrics
(extproc.mcp_observe).

Spans (ccr.v1.tracing; no-ops when the policy traces nothing): each POST is a server span
``mcp.<method>`` (``mcp.tools/call``), the child of the ``traceparent`` Envoy sent, with
``mcp.server``, ``mcp.tool`` (tools/call only), ``ccr.tenant``, ``ccr.mcp.outcome`` and the HTTP
status; never arguments or results. Each upstream call under it is a client span
``mcp.upstream.<method>`` (opening the upstream session: ``mcp.upstream.initialize``), and its
context is the ``traceparent`` sent upstream, so the server's own spans hang below it. A request
that failed upstream, or with a 5xx, is exported even when Envoy did not sample it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from ccr.v1 import log_context, tracing
from ccr.v1.contract import ANONYMOUS_TENANT_VALUE, KEY_HEADER, TENANT_HEADER
from extproc.mcp import router
from extproc.mcp.access import Access
from extproc.mcp.catalog import split_name
from extproc.mcp.jsonrpc import DEFAULT_MAX_BODY_BYTES, INTERNAL_ERROR, INVALID_REQUEST, encode, error_response
from extproc.mcp.router import Action, Config, Decision, Outbound
from extproc.mcp.session import Session
from extproc.mcp.settings import McpSettings
from extproc.mcp_catalog import CatalogKeeper
from extproc.mcp_observe import Recorder, ToolCall
from extproc.mcp_preopen import Preopener
from extproc.mcp_store import WINDOW_S, CallCounter, MemoryCallCounter, MemorySessionStore, SessionStore
from extproc.mcp_upstream import PASSED_HEADERS, UpstreamFailed, UpstreamLost
from extproc.sse import encode_event

log = logging.getLogger("ccr.mcp")

RATE_LIMITED = -32029
MAX_FETCHES = 64  # catalog pages one client request may need (a merged page spans servers)
KEEPALIVE_S = 15.0
READY_PATH = "/ready"
SERVER_INFO = {"name": "ccr-gateway", "version": "0.1.0"}
SPAN_PREFIX = "mcp"  # a request's span is mcp.<JSON-RPC method>; an upstream call mcp.upstream.<method>
OUTCOME_ATTRIBUTE = "ccr.mcp.outcome"  # extproc.mcp_observe.OUTCOMES for tools/call; also ok / refused
FAILED_OUTCOMES = frozenset({"upstream_error", "upstream_timeout"})  # the gateway's failure: always exported


@dataclass(frozen=True)
class ServiceConfig:
    egress: str | None = None  # Envoy's egress listener host:port; None: servers' urls directly
    server_info: Mapping[str, Any] = field(default_factory=lambda: dict(SERVER_INFO))
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    page_size: int = 100
    allowed_origins: frozenset[str] | None = None


@dataclass(frozen=True)
class Caller:
    tenant: str | None  # None: anonymous (the header said "-", or no gateway set it)
    key_id: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Caller:
        tenant = headers.get(TENANT_HEADER, ANONYMOUS_TENANT_VALUE)
        key = headers.get(KEY_HEADER, ANONYMOUS_TENANT_VALUE)
        return cls(
            None if tenant in ("", ANONYMOUS_TENANT_VALUE) else tenant,
            None if key in ("", ANONYMOUS_TENANT_VALUE) else key,
        )

    def access(self, settings: McpSettings) -> Access:
        # A grant with `tenant: "-"` names the callers without a key (docs/mcp.md, "Access").
        return settings.access(self.tenant or ANONYMOUS_TENANT_VALUE, self.key_id)


def _json_reply(
    status: int, body: Mapping[str, Any] | bytes | None, headers: Mapping[str, str] | None = None
) -> web.Response:
    data = body if isinstance(body, bytes | type(None)) else encode(body)
    return web.Response(
        status=status, body=data, headers=headers or {}, content_type="application/json" if data else None
    )


class _Answer:
    """One forwarded request's answer: JSON when the final message comes first, else SSE."""

    def __init__(self, request: web.Request, headers: Mapping[str, str]) -> None:
        self._request = request
        self._headers = dict(headers)
        self._stream: web.StreamResponse | None = None
        self._json: bytes | None = None
        self.gone = False  # the client went away: stop writing

    @property
    def streamed(self) -> bool:
        return self._stream is not None

    async def message(self, body: bytes, final: bool) -> None:
        if final and self._stream is None:
            self._json = body
            return
        if self.gone:
            return
        try:
            if self._stream is None:
                self._stream = web.StreamResponse(
                    status=200,
                    headers={**self._headers, "content-type": "text/event-stream", "cache-control": "no-cache"},
                )
                await self._stream.prepare(self._request)
            await self._stream.write(encode_event(body, "message"))
        except (ConnectionResetError, RuntimeError):
            self.gone = True

    async def finish(self) -> web.StreamResponse:
        if self._stream is None:
            if self._json is not None:
                return _json_reply(200, self._json, self._headers)
            self._stream = web.StreamResponse(
                status=200, headers={**self._headers, "content-type": "text/event-stream"}
            )
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self._stream.prepare(self._request)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self._stream.write_eof()
        return self._stream


class McpService:
    """The aiohttp application's state. ``install`` takes each new policy's ``mcp:`` section."""

    def __init__(
        self,
        config: ServiceConfig = ServiceConfig(),
        store: SessionStore | None = None,
        counter: CallCounter | None = None,
        recorder: Recorder | None = None,
        clock: Any = time.time,
    ) -> None:
        self.config = config
        self.store: SessionStore = store if store is not None else MemorySessionStore()
        self.counter: CallCounter = counter if counter is not None else MemoryCallCounter()
        self.recorder = recorder if recorder is not None else Recorder()
        self.clock = clock
        self.instance = secrets.token_hex(6)
        self.keeper = CatalogKeeper(
            config.server_info, self.instance, egress=config.egress, on_unsolicited=self._unsolicited
        )
        # Upstream sessions opened when a client session is ready, ahead of its first call.
        self.preopener = Preopener(lambda: self.keeper.upstreams, self.store)
        self.router_config: Config | None = None
        self.settings: McpSettings | None = None
        self.policy_seen = False
        self._listeners: dict[str, set[asyncio.Queue[bytes | None]]] = {}

    # --- policy and lifecycle ---------------------------------------------------------------------

    def install(self, settings: McpSettings | None) -> None:
        self.policy_seen = True
        self.settings = settings
        self.router_config = (
            Config(
                server_info=self.config.server_info,
                page_size=self.config.page_size,
                max_body_bytes=self.config.max_body_bytes,
                idle_ttl_s=settings.idle_ttl_s,
                allowed_origins=self.config.allowed_origins,
            )
            if settings is not None
            else None
        )
        self.keeper.install(settings)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes + 1)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def close_streams(self) -> None:
        """End every standalone GET stream (before the server stops: they never end by themselves)."""
        for queues in self._listeners.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def close(self) -> None:
        """Stop for good: streams, stdio servers (the spec's shutdown), stores, sinks."""
        self.close_streams()
        await self.preopener.close()
        await self.keeper.close()
        await self.store.close()
        await self.counter.close()
        await self.recorder.close()

    # --- requests ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        caller = Caller.from_headers(headers)
        token = log_context.bind(request_id=request_id, tenant=caller.tenant)
        # POSTs only: a GET stream lives as long as its session, a span over it says nothing.
        opened = tracing.begin(SPAN_PREFIX, headers.get("traceparent")) if request.method == "POST" else None
        status = 499  # cancelled: the client went away before its answer
        try:
            response = await self._handle(request, headers, request_id, caller)
            status = response.status
            return response
        finally:
            _end_span(opened, status)
            log_context.reset(token)

    async def _handle(
        self, request: web.Request, headers: dict[str, str], request_id: str, caller: Caller
    ) -> web.StreamResponse:
        try:
            if request.path == READY_PATH and request.method == "GET":
                return web.Response(status=200 if self.policy_seen else 503, text="ready\n" if self.policy_seen else "")
            settings, config = self.settings, self.router_config
            if settings is None or config is None or request.path != settings.path:
                return _json_reply(
                    404, error_response(None, INVALID_REQUEST, "Not Found: no MCP endpoint here (policy: mcp.path)")
                )
            return await self._dispatch(request, headers, request_id, caller, settings, config)
        except RedisError as exc:
            log.error("MCP session store unavailable: %s", type(exc).__name__)
            return _json_reply(503, error_response(None, INTERNAL_ERROR, "Service Unavailable: session store"))
        except Exception:
            log.exception("MCP request failed")
            return _json_reply(500, error_response(None, INTERNAL_ERROR, "Internal error in the MCP gateway"))

    async def _dispatch(
        self,
        request: web.Request,
        headers: dict[str, str],
        request_id: str,
        caller: Caller,
        settings: McpSettings,
        config: Config,
    ) -> web.StreamResponse:
        method = request.method
        if method not in ("POST", "GET", "DELETE"):
            return self._reply(router.handle_other(method))
        session = await self._session(headers)
        now = self.clock()
        if method == "GET":
            decision = router.handle_get(config, headers, session, now)
            if decision.action is Action.STREAM and session is not None:
                await self._store(decision)
                return await self._stream(request, session, decision)
            return self._reply(decision)
        if method == "DELETE":
            decision = router.handle_delete(config, headers, session, now)
            if decision.action is Action.TERMINATE and session is not None:
                await self._terminate(session)
            return self._reply(decision)
        body = await _read_body(request, config.max_body_bytes)
        root = tracing.current()  # the request's span (None when not traced)
        if root is not None:
            _name_span(root, body, caller)
        access = caller.access(settings)
        passed = {k: headers[k] for k in PASSED_HEADERS if k in headers}
        await self.keeper.ensure()
        was_ready = session is not None and session.initialized
        decision = router.handle_post(config, self.keeper.catalog, headers, body, session, access, now, _new_id)
        fetches = 0
        while decision.action is Action.FETCH and decision.fetch is not None and fetches < MAX_FETCHES:
            fetches += 1
            need = decision.fetch
            with _upstream_span(need.kind.method, need.server) as span:
                await self.keeper.fetch(need, _traced(passed, span))
            decision = router.handle_post(config, self.keeper.catalog, headers, body, session, access, now, _new_id)
        if root is not None:
            _describe(root, decision, body)
        if decision.action is Action.FETCH:
            return _json_reply(200, error_response(_request_id(body), INTERNAL_ERROR, "Catalog pages did not settle"))
        await self._store(decision)
        if session is not None and session.initialized and not was_ready:  # notifications/initialized
            reachable = [name for name in self.keeper.upstreams if access.may_reach(name)]
            self.preopener.start(session, reachable, passed)
        target_session = decision.session or session
        if decision.action is Action.FORWARD and target_session is not None:
            return await self._forward(request, decision, target_session, caller, request_id, settings, passed)
        if decision.sends and target_session is not None:
            await self._send_all(target_session, decision.sends)
        if b"tools/call" in body and decision.status == 200 and target_session is not None:
            self._record_refused(body, decision, caller, request_id, settings, target_session.id)
        return self._reply(decision)

    def _record_refused(
        self, body: bytes, decision: Decision, caller: Caller, request_id: str, settings: McpSettings, session_id: str
    ) -> None:
        """A tools/call the core answered itself is a refused one (unknown or not granted: the same
        answer): the ledger and the audit log see the attempt too."""
        with contextlib.suppress(orjson.JSONDecodeError):
            request, answer = orjson.loads(body), orjson.loads(decision.body or b"{}")
            params = request.get("params") if isinstance(request, dict) else None
            name = params.get("name") if isinstance(params, dict) else None
            if request.get("method") != "tools/call" or not isinstance(name, str) or "error" not in answer:
                return
            split = split_name(name)
            server = split[0] if split is not None and settings.server(split[0]) is not None else "(unknown)"
            tool = (split[1] if split is not None else name)[:200]
            now = time.time()
            call = ToolCall(
                request_id,
                now,
                0.0,
                settings.path,
                server,
                tool,
                "refused",
                caller.tenant,
                caller.key_id,
                session_id,
                False,
            )
            self.recorder.tool_call(call)

    async def _session(self, headers: Mapping[str, str]) -> Session | None:
        session_id = headers.get("mcp-session-id")
        return await self.store.get(session_id) if session_id else None

    async def _store(self, decision: Decision) -> None:
        if decision.session is not None:
            await self.store.put(decision.session)

    @staticmethod
    def _reply(decision: Decision) -> web.Response:
        return _json_reply(decision.status, decision.body, dict(decision.headers))

    async def _send_all(self, session: Session, sends: tuple[Outbound, ...]) -> None:
        """Notifications and answers for upstreams (cancellation, the client's answer to sampling):
        nothing comes back; a failure is logged, the client's 202 stands."""
        for out in sends:
            upstream = self.keeper.upstreams.get(out.server)
            opened = session.upstream_open(out.server)
            if upstream is None or opened is None:
                continue
            try:
                await upstream.send(out.message, opened.session_id, opened.protocol_version)
            except (UpstreamFailed, UpstreamLost) as exc:
                log.warning(
                    "MCP %s to server %s not delivered: %s", out.message.get("method", "answer"), out.server, exc
                )

    async def _terminate(self, session: Session) -> None:
        self.preopener.cancel(session.id)
        await self.store.delete(session.id)
        for queue in self._listeners.pop(session.id, set()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        for name, upstream_session in session.upstreams.items():
            upstream = self.keeper.upstreams.get(name)
            if upstream is not None and upstream_session.protocol_version:
                self.keeper.spawn(upstream.end_session(upstream_session.session_id, upstream_session.protocol_version))

    # --- forwarding -------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        decision: Decision,
        session: Session,
        caller: Caller,
        request_id: str,
        settings: McpSettings,
        passed: Mapping[str, str],
    ) -> web.StreamResponse:
        started, began = time.time(), time.perf_counter()
        out = decision.sends[0]
        is_call = out.message.get("method") == "tools/call"
        server, tool = decision.target or (out.server, "")
        answer = _Answer(request, {"mcp-session-id": session.id})

        root = tracing.current()

        def record(outcome: str) -> None:
            if root is not None:
                root.set(OUTCOME_ATTRIBUTE, outcome)
            if is_call:
                call = ToolCall(
                    request_id,
                    started,
                    time.perf_counter() - began,
                    settings.path,
                    server,
                    tool,
                    outcome,
                    caller.tenant,
                    caller.key_id,
                    session.id,
                    answer.streamed,
                )
                # After the answer has gone out (the loop's next turn), not before: the usage record,
                # audit entry and metrics are ~0.1 ms the caller need not wait for.
                asyncio.get_running_loop().call_soon(self.recorder.tool_call, call)

        if is_call and (limit := settings.calls_per_minute(caller.tenant or ANONYMOUS_TENANT_VALUE, caller.key_id)) > 0:
            now = self.clock()
            count = await self.counter.hit(caller.tenant or ANONYMOUS_TENANT_VALUE, caller.key_id or "-", now)
            if count > limit:
                entry = session.finish(out.message.get("id"))
                await self.store.put(session)
                retry = WINDOW_S - now % WINDOW_S
                body = error_response(
                    entry.client_id if entry is not None else None,
                    RATE_LIMITED,
                    f"Rate limit: at most {limit} tool calls per minute for this key",
                    {"limit": limit, "retryAfterSeconds": round(retry, 1)},
                )
                record("rate_limited")
                return _json_reply(200, body, {"mcp-session-id": session.id})
        outcome = await self._relay(out, session, answer, passed)
        record(outcome)
        return await answer.finish()

    async def _relay(self, out: Outbound, session: Session, answer: _Answer, passed: Mapping[str, str]) -> str:
        """Send ``out`` and relay what comes back; the outcome (extproc.mcp_observe.OUTCOMES)."""
        attempt = out
        while True:
            upstream = self.keeper.upstreams.get(attempt.server)
            try:
                if upstream is None:
                    raise UpstreamFailed("it is no longer in the policy")
                if attempt.initialize is not None and await self.preopener.wait(session, attempt.server):
                    attempt = dataclasses.replace(attempt, initialize=None)  # opened ahead (extproc.mcp_preopen)
                if attempt.initialize is not None:
                    with _upstream_span("initialize", attempt.server) as span:
                        opened = await upstream.open(attempt.initialize, _traced(passed, span))
                    refused = router.open_upstream(session, attempt.server, opened.answer, opened.token)
                    if refused is not None:
                        entry = session.finish(attempt.message.get("id"))
                        await self.store.put(session)
                        if entry is not None:
                            body = error_response(entry.client_id, refused.code, refused.message, refused.data)
                            await answer.message(encode(body), final=True)
                        return "upstream_error"
                    await self.store.put(session)
                current = session.upstream_open(attempt.server)
                token, version = (current.session_id, current.protocol_version) if current else (None, "")
                # aclosing: leaving at the final message releases the upstream response now.
                with _upstream_span(attempt.message.get("method"), attempt.server, attempt.message) as span:
                    replies = upstream.exchange(attempt.message, token, version, _traced(passed, span))
                    async with contextlib.aclosing(replies):
                        async for message in replies:
                            delivery = router.on_upstream_message(session, attempt.server, message)
                            if delivery.reply_upstream is not None:
                                with contextlib.suppress(UpstreamFailed, UpstreamLost):
                                    await upstream.send(delivery.reply_upstream, token, version)
                            if delivery.invalidate:
                                self.keeper.invalidate(attempt.server, delivery.invalidate)
                            if delivery.session_changed:
                                await self.store.put(session)
                            if delivery.to_client is not None:
                                await answer.message(encode(delivery.to_client), delivery.final)
                            if delivery.final:
                                return _outcome(delivery.to_client)
                if attempt.message.get("id") not in session.in_flight:
                    return "cancelled"  # the client cancelled it: no answer is due
                raise UpstreamFailed("it closed the stream without an answer")
            except UpstreamLost:
                decision = router.on_upstream_lost(session, attempt)
                await self._store(decision)
                if decision.action is Action.FORWARD:
                    attempt = decision.sends[0]
                    continue
                if decision.body is not None:
                    await answer.message(decision.body, final=True)
                return "upstream_error"
            except UpstreamFailed as exc:
                decision = router.on_upstream_failure(session, attempt, exc.reason, exc.status)
                await self._store(decision)
                if decision.body is not None:
                    await answer.message(decision.body, final=True)
                log.warning("MCP server %s failed: %s", attempt.server, exc.reason)
                return "upstream_timeout" if exc.timeout else "upstream_error"

    # --- the standalone GET stream ----------------------------------------------------------------

    async def _stream(self, request: web.Request, session: Session, decision: Decision) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={**dict(decision.headers), "content-type": "text/event-stream", "cache-control": "no-cache"},
        )
        await response.prepare(request)
        # aiohttp holds the status line and headers until the first write: an SSE comment now, or
        # the client would wait for the first keep-alive to learn the stream is open.
        await response.write(b": stream open\n\n")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=256)
        self._listeners.setdefault(session.id, set()).add(queue)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    item = b": keep-alive\n\n"
                if item is None:
                    break
                await response.write(item)
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            queues = self._listeners.get(session.id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._listeners[session.id]
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    def _unsolicited(self, server: str, message: dict[str, Any]) -> None:
        """A stdio server's message outside any request: list_changed goes to every open stream
        (the catalog already dropped the list); anything else needs a session and is dropped."""
        if not str(message.get("method", "")).endswith("/list_changed"):
            return
        event = encode_event(encode(message), "message")
        for queues in self._listeners.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event)


# --- spans (only called when the request is traced: they may parse what the hot path does not) ----


def _name_span(root: tracing.Span, body: bytes, caller: Caller) -> None:
    """The request's span named after its JSON-RPC method, and the caller's tenant on it."""
    method = "invalid"
    with contextlib.suppress(orjson.JSONDecodeError):
        raw = orjson.loads(body)
        if isinstance(raw, dict):
            named = raw.get("method")
            method = named[:100] if isinstance(named, str) else "response" if "id" in raw else "invalid"
    root.name = f"{SPAN_PREFIX}.{method}"
    root.set("mcp.method.name", method)
    root.set("ccr.tenant", caller.tenant or ANONYMOUS_TENANT_VALUE)
    root.set("ccr.key_id", caller.key_id)


def _describe(root: tracing.Span, decision: Decision, body: bytes) -> None:
    """Server and tool from the core's decision; for an answer the gateway gives itself, whether
    it refused (a JSON-RPC error or a transport refusal) or answered."""
    if decision.target is not None:
        root.set("mcp.server", decision.target[0])
        if root.name == f"{SPAN_PREFIX}.tools/call":
            root.set("mcp.tool", decision.target[1])
    if decision.action is Action.FORWARD:
        return  # its outcome is the upstream's (_forward)
    refused = decision.status >= 400
    if not refused and decision.body:
        with contextlib.suppress(orjson.JSONDecodeError):
            answer = orjson.loads(decision.body)
            refused = isinstance(answer, dict) and "error" in answer
    root.set(OUTCOME_ATTRIBUTE, "refused" if refused else "ok")
    if refused and root.name == f"{SPAN_PREFIX}.tools/call" and "mcp.server" not in root.attributes:
        # An unknown or denied tool: the name the client asked for says which (never a grant's detail).
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            params = orjson.loads(body).get("params")
            name = params.get("name") if isinstance(params, dict) else None
            if isinstance(name, str) and (split := split_name(name)) is not None:
                root.set("mcp.server", split[0][:100])
                root.set("mcp.tool", split[1][:200])


def _end_span(opened: tracing.Opened | None, status: int) -> None:
    if opened is None:
        return
    root = opened[0]
    root.set("http.response.status_code", status)
    outcome = root.attributes.get(OUTCOME_ATTRIBUTE)
    failed = status >= 500 or outcome in FAILED_OUTCOMES
    tracing.end(opened, f"MCP request failed: {outcome if outcome in FAILED_OUTCOMES else status}" if failed else None)


def _upstream_span(method: Any, server: str, message: Mapping[str, Any] | None = None) -> Any:
    """A client span around one call to an upstream (a no-op when the request is not traced)."""
    if tracing.current() is None:
        return tracing.NO_SPAN
    attributes: dict[str, tracing.AttributeValue] = {"mcp.server": server}
    name = method if isinstance(method, str) else "message"
    if name == "tools/call" and message is not None:
        params = message.get("params")
        if isinstance(params, dict) and isinstance(params.get("name"), str):
            attributes["mcp.tool"] = params["name"]  # the upstream's own name (no prefix)
    return tracing.span(f"{SPAN_PREFIX}.upstream.{name}", tracing.CLIENT, attributes)


def _traced(passed: Mapping[str, str], span: Any) -> Mapping[str, str]:
    """The headers passed upstream, with the client span as the parent the upstream continues."""
    if isinstance(span, tracing.Span):
        return {**passed, "traceparent": span.traceparent()}
    return passed


def _outcome(final: Mapping[str, Any] | None) -> str:
    if final is None or "error" in final:
        return "upstream_error"
    result = final.get("result")
    return "tool_error" if isinstance(result, dict) and result.get("isError") else "ok"


def _new_id() -> str:
    return secrets.token_hex(16)


def _request_id(body: bytes) -> Any:
    with contextlib.suppress(orjson.JSONDecodeError):
        raw = orjson.loads(body)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str | int):
            return raw["id"]
    return None


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, read up to one byte past ``limit``: the core answers an oversize body (413)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


async def start(app: web.Application, listen: str) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` or ``unix:/path``; the runner and the address it serves on."""
    # Open GET streams end at close_streams(); a request still relaying gets a few seconds.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    if listen.startswith("unix:"):
        path = listen[len("unix:") :]
        site: web.BaseSite = web.UnixSite(runner, path)
        await site.start()
        return runner, listen
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        await runner.cleanup()
        raise ValueError(f"--listen takes HOST:PORT or unix:PATH, not {listen!r}")
    tcp = web.TCPSite(runner, host.strip("[]"), int(port))
    await tcp.start()
    server = tcp._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else int(port)
    return runner, f"{host}:{bound}"
