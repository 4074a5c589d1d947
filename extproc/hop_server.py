"""HTTP/1.1 server of the decision hop (extproc.hop): asyncio and httptools' C parser, nothing else.

Envoy's Lua filter keeps a few connections to each worker open and sends one small request per
decision; an asyncio Protocol answering from the parser's callbacks keeps the Python cost per call
to a parse, one dispatch and one write. Routes:

- ``POST /decide``: the client's headers (``x-ccr-hop-method`` / ``x-ccr-hop-path`` carry its
  method and path) and body -> extproc.hop.decide;
- ``POST /respond``: a provider's answer (``x-ccr-context``, ``x-ccr-status``) -> extproc.hop.respond;
- ``GET /healthz``: 200 once a policy is installed, 503 before.

A failure here is a 500, which the Lua filter answers as a 503 in the client's format (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import httptools

from extproc import hop
from extproc.state import GatewayState

log = logging.getLogger("ccr.extproc")

METHOD_HEADER = "x-ccr-hop-method"
PATH_HEADER = "x-ccr-hop-path"
CONTEXT_HEADER = "x-ccr-context"
STATUS_HEADER = "x-ccr-status"

_REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error", 503: b"Service Unavailable"}


class _HopProtocol(asyncio.Protocol):
    __slots__ = ("_body", "_headers", "_parser", "_state", "_transport", "_url")

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
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
        status, answer = self._answer()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % (
            status,
            _REASONS.get(status, b"OK"),
            len(answer),
        )
        transport.writelines((head, answer))  # one writev, no copy of the (up to MBs) answer
        if not self._parser.should_keep_alive():
            transport.close()

    def _answer(self) -> tuple[int, bytes]:
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
                return 200, hop.respond(self._state, headers[CONTEXT_HEADER], status, content_type, body)
            if path == b"/healthz":
                return (200, b"ok") if self._state.table is not None else (503, b"no policy yet")
            return 404, b"no such route"
        except Exception:  # a bug: fail closed (the Lua filter answers 503) and say so in the log
            log.exception("decision hop failed on %s", path.decode("latin-1"))
            return 500, b"internal error"


async def start(listen: str, state: GatewayState) -> asyncio.AbstractServer:
    """Serve on ``unix:/path`` or ``host:port``."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol] = lambda: _HopProtocol(state)  # noqa: E731
    if listen.startswith("unix:"):
        path = listen[len("unix:") :]
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a crashed run
        return await loop.create_unix_server(factory, path)
    host, _, port = listen.rpartition(":")
    return await loop.create_server(factory, host or "127.0.0.1", int(port))
