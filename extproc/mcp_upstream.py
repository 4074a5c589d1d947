"""The MCP gateway service's way to its upstream servers: Streamable HTTP through Envoy, or stdio.

One small interface (``Upstream``) with two implementations, so the service's request loop does not
care which kind of server it talks to:

- ``open(initialize)``: initialize + notifications/initialized, the answer and a *token* naming
  the upstream session (HTTP: the server's ``Mcp-Session-Id``; stdio: this replica and the
  process generation, so a session that moved replicas or outlived its process is seen as lost);
- ``exchange(request, token)``: every message the upstream sends while answering (progress,
  its own requests such as sampling), the answer last;
- ``send(message, token)``: a notification or an answer to one of the upstream's requests.

Failures are two exceptions, the router's two entry points: ``UpstreamLost`` (the upstream does
not know the session: HTTP 404, or a restarted stdio process; ``router.on_upstream_lost``
re-initializes once) and ``UpstreamFailed`` (unreachable, 5xx, timeout, a dead process;
``router.on_upstream_failure`` answers -32603 and the next call tries again). ``reason`` is in our
own words: it reaches the client, so it never quotes a server's output or a credential.

HTTP servers are reached through Envoy when ``egress`` is set (``http://<egress><url path>`` with
``x-ccr-mcp-server: <name>``: Envoy routes on that header to the server's cluster and owns TLS,
host rewrite, circuit breaking); without it (tests, a laptop) at their url directly. Credentials:
the policy's header and env values are templates (``${VAR}``, a whole ``vault:`` reference),
expanded here with ccr.v1.env_refs when a server is called or launched; never logged. The client's
own headers never reach an upstream: every upstream request is built from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from ccr.v1.contract import MCP_SERVER_HEADER
from ccr.v1.env_refs import VAULT_PREFIX, EnvError, expand_env
from extproc.mcp.jsonrpc import METHOD_NOT_FOUND, error_response, result_response
from extproc.mcp.router import INITIALIZED
from extproc.mcp.settings import UpstreamServer
from extproc.mcp_stdio import (
    StdioCommand,
    StdioServer,
    UpstreamRestarted,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from extproc.sse import SSEDecoder

log = logging.getLogger("ccr.mcp.upstream")

ACCEPT = "application/json, text/event-stream"
# The headers the gateway passes from the client's request to an upstream: trace context only.
PASSED_HEADERS = ("traceparent", "tracestate")


class UpstreamLost(Exception):
    """The upstream does not know this session any more (HTTP 404 to a request with its session id,
    or a stdio process restarted since the session was opened)."""


class UpstreamFailed(Exception):
    """No answer: unreachable, an HTTP error, a timeout, a dead process. ``reason`` may reach the
    client; ``status`` is the upstream's HTTP status when it sent one."""

    def __init__(self, reason: str, status: int | None = None, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.timeout = timeout


@dataclass(frozen=True)
class Opened:
    answer: Mapping[str, Any]  # the initialize answer, as sent
    token: str | None  # names the upstream session (module docstring)


class Upstream(Protocol):
    name: str

    async def open(self, initialize: Mapping[str, Any], passed: Mapping[str, str]) -> Opened: ...

    def exchange(
        self, message: Mapping[str, Any], token: str | None, version: str, passed: Mapping[str, str]
    ) -> AsyncGenerator[dict[str, Any], None]: ...

    async def send(self, message: Mapping[str, Any], token: str | None, version: str) -> None: ...

    async def end_session(self, token: str | None, version: str) -> None: ...

    async def close(self) -> None: ...


async def expand(template: str) -> str:
    """One policy template, resolved; a ``vault:`` read blocks (hvac), so it runs in a thread."""
    if template.startswith(VAULT_PREFIX):
        return await asyncio.to_thread(expand_env, template)
    return expand_env(template)


async def _credentials(server: str, items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    try:
        return {name: await expand(value) for name, value in items}
    except EnvError as exc:
        # The message names the variable or reference, never a value; the client gets less.
        log.error("MCP server %s: a credential could not be resolved: %s", server, exc)
        raise UpstreamFailed("the gateway could not resolve its credentials for this server") from None


def _decode(data: bytes | str) -> dict[str, Any] | None:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return raw if isinstance(raw, dict) else None


class HttpUpstream:
    """A Streamable HTTP server, reached with one shared aiohttp session."""

    def __init__(self, server: UpstreamServer, http: aiohttp.ClientSession, egress: str | None = None) -> None:
        self.name = server.name
        self.server = server
        self._http = http
        if egress:
            parts = urlsplit(server.url)
            self._url = f"http://{egress}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
            self._route = {MCP_SERVER_HEADER: server.name}
        else:
            self._url, self._route = server.url, {}
        if "${" in self._url or VAULT_PREFIX in self._url:
            self._url_template: str | None = self._url  # ${VAR} in the query (docs/mcp.md "Credentials")
        else:
            self._url_template = None

    async def _request_parts(
        self, token: str | None, version: str | None, passed: Mapping[str, str]
    ) -> tuple[str, dict[str, str]]:
        headers = await _credentials(self.name, self.server.headers)
        headers.update(self._route)
        headers.update({k: v for k, v in passed.items() if k in PASSED_HEADERS})
        headers["accept"] = ACCEPT
        headers["content-type"] = "application/json"
        if token is not None:
            headers["mcp-session-id"] = token
        if version:
            headers["mcp-protocol-version"] = version
        url = self._url if self._url_template is None else await expand(self._url_template)
        return url, headers

    async def _post(
        self,
        message: Mapping[str, Any],
        token: str | None,
        version: str | None,
        passed: Mapping[str, str],
        seen: dict[str, str] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        url, headers = await self._request_parts(token, version, passed)
        timeout = aiohttp.ClientTimeout(total=self.server.timeout_s)
        try:
            async with self._http.post(url, data=orjson.dumps(message), headers=headers, timeout=timeout) as resp:
                if resp.status == 404 and token is not None:
                    raise UpstreamLost()
                if resp.status >= 400:
                    raise UpstreamFailed(f"it answered HTTP {resp.status}", resp.status)
                if seen is not None and (sid := resp.headers.get("mcp-session-id")):
                    seen["session_id"] = sid
                if resp.status == 202:
                    return
                if resp.content_type == "text/event-stream":
                    decoder = SSEDecoder()
                    async for chunk in resp.content.iter_any():
                        for event in decoder.feed(chunk):
                            if (decoded := _decode(event.data)) is not None:
                                yield decoded
                    for event in decoder.close():
                        if (decoded := _decode(event.data)) is not None:
                            yield decoded
                    return
                body = await resp.read()
                if body and (decoded := _decode(body)) is not None:
                    yield decoded
        except TimeoutError:
            raise UpstreamFailed(f"no answer within {self.server.timeout_s:g}s", timeout=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"unreachable ({type(exc).__name__})") from None

    async def open(self, initialize: Mapping[str, Any], passed: Mapping[str, str]) -> Opened:
        seen: dict[str, str] = {}
        answer = None
        async for message in self._post(initialize, None, None, passed, seen):
            if message.get("id") == initialize.get("id") and "method" not in message:
                answer = message
        if answer is None:
            raise UpstreamFailed("it did not answer initialize")
        token = seen.get("session_id")
        result = answer.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str):
            async for _ in self._post(INITIALIZED, token, version, passed):
                pass
        return Opened(answer, token)

    def exchange(
        self, message: Mapping[str, Any], token: str | None, version: str, passed: Mapping[str, str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        return self._post(message, token, version, passed)

    async def send(self, message: Mapping[str, Any], token: str | None, version: str) -> None:
        async for _ in self._post(message, token, version, {}):
            pass

    async def end_session(self, token: str | None, version: str) -> None:
        """DELETE the upstream session (spec: the client SHOULD); best effort."""
        if token is None:
            return
        with contextlib.suppress(UpstreamFailed, aiohttp.ClientError, TimeoutError):
            url, headers = await self._request_parts(token, version, {})
            timeout = aiohttp.ClientTimeout(total=min(self.server.timeout_s, 5.0))
            async with self._http.delete(url, headers=headers, timeout=timeout):
                pass

    async def close(self) -> None:
        pass  # the aiohttp session is the service's


_CANCELLED: dict[str, Any] = {}  # put in an exchange's queue: the client cancelled, stop waiting


class StdioUpstream:
    """A stdio server: one process for the whole replica (extproc.mcp_stdio), launched on first use.

    What the process sends on its own is routed here: progress to the exchange whose request id
    is its token (the core makes the token the upstream request id); a request of the server's
    (sampling, roots/list) to the one exchange in flight when there is exactly one, since stdio
    says nothing about which request it belongs to; anything else to ``on_unsolicited``
    (list_changed: the catalog drops that list).
    """

    def __init__(
        self,
        server: UpstreamServer,
        instance: str,
        on_unsolicited: Callable[[str, dict[str, Any]], None] = lambda _s, _m: None,
    ) -> None:
        self.name = server.name
        self.server = server
        self._instance = instance
        self._on_unsolicited = on_unsolicited
        self._process: StdioServer | None = None
        self._lock = asyncio.Lock()
        self._streams: dict[Any, asyncio.Queue[dict[str, Any]]] = {}
        self._replies: set[asyncio.Task[None]] = set()

    async def _proc(self) -> StdioServer:
        async with self._lock:
            if self._process is None:
                command = [await expand(part) if "${" in part else part for part in self.server.command]
                env = await _credentials(self.name, self.server.env)
                self._process = StdioServer(
                    StdioCommand(self.name, command[0], tuple(command[1:]), env), on_message=self._on_message
                )
            return self._process

    def _token(self, generation: int) -> str:
        return f"{self._instance}:{generation}"

    def _generation(self, token: str | None) -> int:
        instance, _, generation = (token or "").rpartition(":")
        if instance != self._instance or not generation.isdigit():
            raise UpstreamLost()  # opened on another replica, or never
        return int(generation)

    async def open(self, initialize: Mapping[str, Any], passed: Mapping[str, str]) -> Opened:
        proc = await self._proc()
        try:
            generation = await proc.start(budget=self.server.timeout_s)
            answer = await proc.request(initialize, self.server.timeout_s, generation=generation)
            await proc.notify(INITIALIZED, generation=generation)
        except UpstreamRestarted:
            raise UpstreamLost() from None
        except UpstreamUnavailable as exc:
            raise UpstreamFailed(exc.reason, timeout=isinstance(exc, UpstreamTimeout)) from None
        return Opened(answer, self._token(generation))

    async def exchange(
        self, message: Mapping[str, Any], token: str | None, version: str, passed: Mapping[str, str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        generation = self._generation(token)
        proc = await self._proc()
        msg_id = message.get("id")
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._streams[msg_id] = queue
        answer = asyncio.ensure_future(proc.request(message, self.server.timeout_s, generation=generation))
        try:
            while not answer.done():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({answer, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                item = getter.result()
                if item is _CANCELLED:
                    return
                yield item
            while not queue.empty():  # sent before the answer
                if (item := queue.get_nowait()) is not _CANCELLED:
                    yield item
            try:
                yield answer.result()
            except UpstreamRestarted:
                raise UpstreamLost() from None
            except UpstreamUnavailable as exc:
                raise UpstreamFailed(exc.reason, timeout=isinstance(exc, UpstreamTimeout)) from None
        finally:
            self._streams.pop(msg_id, None)
            if not answer.done():
                answer.cancel()
                with contextlib.suppress(BaseException):
                    await answer

    async def send(self, message: Mapping[str, Any], token: str | None, version: str) -> None:
        generation = self._generation(token)
        proc = await self._proc()
        if message.get("method") == "notifications/cancelled":
            params = message.get("params")
            queue = self._streams.get(params.get("requestId")) if isinstance(params, dict) else None
            if queue is not None:
                queue.put_nowait(_CANCELLED)
        try:
            if "method" in message:
                await proc.notify(message, generation=generation)
            else:
                await proc.respond(message, generation=generation)
        except UpstreamRestarted:
            raise UpstreamLost() from None
        except UpstreamUnavailable as exc:
            raise UpstreamFailed(exc.reason, timeout=isinstance(exc, UpstreamTimeout)) from None

    async def end_session(self, token: str | None, version: str) -> None:
        pass  # one process serves every session: nothing per session to end

    async def close(self) -> None:
        if self._process is not None:
            await self._process.close()

    def _on_message(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        token = params.get("progressToken") if isinstance(params, dict) else None
        if message.get("method") == "notifications/progress" and token in self._streams:
            self._streams[token].put_nowait(message)
            return
        if "id" in message:  # a request of the server's own
            if len(self._streams) == 1:
                next(iter(self._streams.values())).put_nowait(message)
                return
            if message.get("method") == "ping":
                reply = result_response(message["id"], {})
            else:
                reply = error_response(message["id"], METHOD_NOT_FOUND, f"Method not found: {message.get('method')}")
            if self._process is not None:
                task = asyncio.ensure_future(self._respond(reply))
                self._replies.add(task)
                task.add_done_callback(self._replies.discard)
            return
        self._on_unsolicited(self.name, message)

    async def _respond(self, reply: Mapping[str, Any]) -> None:
        assert self._process is not None
        with contextlib.suppress(UpstreamUnavailable, TimeoutError):
            await self._process.respond(reply)
