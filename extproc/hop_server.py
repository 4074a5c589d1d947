"""HTTP/1.1 server of the decision hop (extproc.hop): asyncio and httptools' C parser, nothing else.

Envoy's Lua filter keeps a few connections to each worker open and sends one small request per
decision; an asyncio Protocol answering from the parser's callbacks keeps the Python cost per call
to a parse, one dispatch and one write. Routes:

- ``POST /decide``: the client's headers (``x-ccr-hop-method`` / ``x-ccr-hop-path`` carry its
  method and path) and body -> extproc.hop.decide;
- ``POST /respond``: a provider's answer (``x-ccr-context``, ``x-ccr-status``) -> extproc.hop.respond;
- ``POST /store``: a miss's answer for the response cache (``x-ccr-cache-token``; ``x-ccr-status``:
  200 with the body, else the status of an answer not stored) -> extproc.hop.store;
- ``GET /healthz``: 200 once a policy is installed, 503 before.

A decision that waits on a store (the keys' limits in Redis, the response cache: ``hop.Pending``)
is answered from a task when the store has replied; Envoy sends nothing else on that connection meanwhile (HTTP/1.1, no
pipelining), so answers never overtake each other.

A failure here is a 500, which the Lua filter answers as a 503 in the client's format (fail closed).

Draining (SIGTERM): the listening socket closes (Envoy's next connect is refused, which ejects this
worker from the hop cluster and the Lua filter asks again elsewhere); each answer still owed goes
out with ``connection: close``, so Envoy never sends another request on a connection this worker is
about to drop; idle connections are closed after a moment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable

import httptools

from ccr.v1 import log_context, tracing
from ccr.v1.contract import REQUEST_ID_HEADER
from extproc import hop
from extproc.state import GatewayState

log = logging.getLogger("ccr.extproc")

METHOD_HEADER = "x-ccr-hop-method"
PATH_HEADER = "x-ccr-hop-path"
CONTEXT_HEADER = "x-ccr-context"
CACHE_TOKEN_HEADER = "x-ccr-cache-token"
STATUS_HEADER = "x-ccr-status"

_SPAN_NAMES = {b"/decide": "ccr.decide", b"/respond": "ccr.respond", b"/store": "ccr.cache.store"}
_REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error", 503: b"Service Unavailable"}


class HopServer:
    """The listening server and its open connections (to drain them)."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.connections: set[_HopProtocol] = set()
        self.draining = False
        self.server: asyncio.AbstractServer | None = None
        self.pending: set[asyncio.Task[None]] = set()  # answers waiting on the limits in Redis

    async def drain(self, timeout: float, idle_grace: float = 0.2) -> None:
        """Stop accepting, answer what is owed with ``connection: close``, then close the rest."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        # A request Envoy has just written may still be on its way: give it a moment to arrive.
        await asyncio.sleep(idle_grace)
        for connection in list(self.connections):
            connection.close_if_idle()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
            for connection in list(self.connections):
                connection.close_if_idle()


class _HopProtocol(asyncio.Protocol):
    __slots__ = ("_body", "_busy", "_headers", "_owner", "_parser", "_state", "_transport", "_url")

    def __init__(self, owner: HopServer) -> None:
        self._owner = owner
        self._state = owner.state
        self._busy = False  # between a request's first byte and its answer
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._owner.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.connections.discard(self)

    def close_if_idle(self) -> None:
        if not self._busy and self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._busy = True
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("utf-8", "replace")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        # The request's span in this process, the child of the Lua filter's call (a no-op when the
        # policy traces nothing); current while the answer is made, tasks started meanwhile too.
        name = _SPAN_NAMES.get(self._url.split(b"?", 1)[0])
        # Every log line about this request names it (one connection carries request after request:
        # unbound again below, whichever way the answer goes).
        logged = log_context.bind(request_id=self._headers.get(REQUEST_ID_HEADER))
        opened = tracing.begin(name, self._headers.get("traceparent")) if name is not None else None
        status, answer = self._answer()
        if isinstance(answer, hop.Pending):  # the limits are in Redis: answer when it has
            task = asyncio.get_running_loop().create_task(self._answer_later(answer, opened))
            self._owner.pending.add(task)
            task.add_done_callback(self._owner.pending.discard)
            tracing.detach(opened)
        else:
            self._send(status, answer)
            tracing.end(opened, "the decision hop failed" if status == 500 else None)
        log_context.reset(logged)

    async def _answer_later(self, pending: hop.Pending, opened: tracing.Opened | None) -> None:
        try:
            answer = await pending.answer
        except Exception:  # a bug: fail closed, as for a synchronous answer
            log.exception("request %s: decision hop failed on /decide", self._headers.get(REQUEST_ID_HEADER, "-"))
            self._send(500, b"internal error")
            tracing.end(opened, "the decision hop failed")
        else:
            self._send(200, answer)
            tracing.end(opened)

    def _send(self, status: int, answer: bytes) -> None:
        self._busy = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        closing = self._owner.draining or not self._parser.should_keep_alive()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n%s\r\n" % (
            status,
            _REASONS.get(status, b"OK"),
            len(answer),
            b"connection: close\r\n" if closing else b"",
        )
        transport.writelines((head, answer))  # one writev, no copy of the (up to MBs) answer
        if closing:
            transport.close()

    def _answer(self) -> tuple[int, bytes | hop.Pending]:
        method = self._parser.get_method()
        path = self._url.split(b"?", 1)[0]
        body = b"".join(self._body)
        headers = self._headers
        try:
            if method == b"POST" and path == b"/decide":
                client_method = headers.pop(METHOD_HEADER, "")
                client_path = headers.pop(PATH_HEADER, "/")
                return 200, hop.decide(self._state, client_method, client_path, headers, body)
            if method == b"POST" and path == b"/respond":
                status = int(headers.get(STATUS_HEADER, "0") or 0)
                content_type = headers.get("content-type", "")
                request_id = headers.get(REQUEST_ID_HEADER, "")
                return 200, hop.respond(self._state, headers[CONTEXT_HEADER], status, content_type, body, request_id)
            if method == b"POST" and path == b"/store":
                token = headers.get(CACHE_TOKEN_HEADER, "")
                status = int(headers.get(STATUS_HEADER, "200") or 0)
                return 200, hop.Pending(hop.store(self._state, token, status, headers.get("content-type", ""), body))
            if path == b"/healthz":
                return (200, b"ok") if self._state.table is not None else (503, b"no policy yet")
            return 404, b"no such route"
        except Exception:  # a bug: fail closed (the Lua filter answers 503) and say so in the log
            request_id = headers.get(REQUEST_ID_HEADER, "-")
            log.exception("request %s: decision hop failed on %s", request_id, path.decode("latin-1"))
            return 500, b"internal error"


async def start(listen: str, state: GatewayState, tls: ssl.SSLContext | None = None) -> HopServer:
    """Serve on ``unix:/path`` or ``host:port``; ``tls``: HTTPS on ``host:port`` (the context says
    whether a client certificate is required: extproc.server.TlsFiles requires one)."""
    loop = asyncio.get_running_loop()
    hop_server = HopServer(state)
    factory: Callable[[], asyncio.Protocol] = lambda: _HopProtocol(hop_server)  # noqa: E731
    if listen.startswith("unix:"):
        if tls is not None:
            raise ValueError(f"TLS on the decision hop needs a TCP address, not {listen}")
        path = listen[len("unix:") :]
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a crashed run
        hop_server.server = await loop.create_unix_server(factory, path)
    else:
        host, _, port = listen.rpartition(":")
        hop_server.server = await loop.create_server(factory, host or "127.0.0.1", int(port), ssl=tls)
    return hop_server
