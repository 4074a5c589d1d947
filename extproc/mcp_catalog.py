"""The upstream servers of the current policy and the merged catalog built from them (I/O side).

The core's ``Catalog`` is a value: what each upstream said at initialize, and the list pages
fetched so far. Keeping it filled is I/O, and lives here:

- ``install(settings)``: a new policy. Servers whose definition did not change keep their
  upstream object (a stdio process stays up), what they said at initialize and their pages; the
  others are closed and made anew.
- ``ensure()``, before each client request: servers not yet probed are initialized with the
  gateway's *own* upstream session (the probe), at most every ``probe_retry_s`` for one that
  failed, the request waiting at most ``probe_wait_s`` (a server still silent is left out of the
  catalog until its probe ends); pages older than ``page_ttl_s`` are dropped, since an HTTP upstream's list_changed only
  reaches us while a client's request to it is open.
- ``fetch(need)``: the core's ``FETCH`` decision: one list page, fetched with the probe session
  (re-probed once if the upstream lost it). A server that cannot answer gets an empty page for
  ``probe_retry_s``: the merged list still shows every other server's items, instead of the
  whole list failing for one server.

Probing happens at install too (in the background), so a client's first session costs no
upstream round trip (issue 23: "a new session adds <= 10 ms").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from extproc.mcp.catalog import KIND_BY_LIST_CHANGED, Catalog, Kind, NeedPage, UpstreamInfo
from extproc.mcp.jsonrpc import LATEST_VERSION, SUPPORTED_VERSIONS
from extproc.mcp.settings import McpSettings, UpstreamServer
from extproc.mcp_upstream import HttpUpstream, StdioUpstream, Upstream, UpstreamFailed, UpstreamLost

log = logging.getLogger("ccr.mcp.catalog")

DEFAULT_PAGE_TTL_S = 300.0
DEFAULT_PROBE_RETRY_S = 5.0
DEFAULT_PROBE_WAIT_S = 3.0  # how long a client's request waits for servers being initialized


class CatalogKeeper:
    def __init__(
        self,
        server_info: Mapping[str, Any],
        instance: str,
        *,
        egress: str | None = None,
        page_ttl_s: float = DEFAULT_PAGE_TTL_S,
        probe_retry_s: float = DEFAULT_PROBE_RETRY_S,
        probe_wait_s: float = DEFAULT_PROBE_WAIT_S,
        on_unsolicited: Callable[[str, dict[str, Any]], None] = lambda _s, _m: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server_info = dict(server_info)
        self.instance = instance
        self.egress = egress
        self.page_ttl_s = page_ttl_s
        self.probe_retry_s = probe_retry_s
        self.probe_wait_s = probe_wait_s
        self._on_unsolicited = on_unsolicited
        self._clock = clock
        self.settings: McpSettings | None = None
        self.catalog = Catalog(())
        self.upstreams: dict[str, Upstream] = {}
        self._definitions: dict[str, UpstreamServer] = {}
        self._infos: dict[str, UpstreamInfo] = {}
        self._probe: dict[str, tuple[str | None, str]] = {}  # server -> (token, revision) of our own session
        self._probe_failed: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._expires: dict[tuple[str, Kind], float] = {}
        self._fetching: dict[tuple[str, Kind, str | None], asyncio.Future[None]] = {}
        self._probing: dict[str, asyncio.Task[bool]] = {}
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle --------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # No connection limit per host: Envoy's egress is one host for every server.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=True)
        return self._http

    def spawn(self, coroutine: Any) -> None:
        """Run in the background, kept until done (and cancelled at close)."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def install(self, settings: McpSettings | None) -> None:
        """A new policy's ``mcp:`` section (None: no MCP endpoint). Call on the event loop."""
        self.settings = settings
        wanted = {s.name: s for s in settings.servers} if settings is not None else {}
        for name, old in list(self._definitions.items()):
            if wanted.get(name) != old:
                upstream = self.upstreams.pop(name, None)
                if upstream is not None:
                    self.spawn(upstream.close())
                del self._definitions[name]
                self._infos.pop(name, None)
                self._probe.pop(name, None)
                self._probe_failed.pop(name, None)
        for name, server in wanted.items():
            if name not in self._definitions:
                self._definitions[name] = server
                self.upstreams[name] = self._make(server)
        pages = {k: v for k, v in self.catalog.pages.items() if k[0] in self._infos}
        self.catalog = Catalog(self._servers(), pages)
        if wanted:
            self.spawn(self.ensure())

    def _make(self, server: UpstreamServer) -> Upstream:
        if server.is_stdio:
            return StdioUpstream(server, self.instance, self._unsolicited)
        return HttpUpstream(server, self._session(), self.egress)

    def _servers(self) -> tuple[UpstreamInfo, ...]:
        """In policy order: the merged lists' order."""
        if self.settings is None:
            return ()
        return tuple(self._infos[s.name] for s in self.settings.servers if s.name in self._infos)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(u.close() for u in self.upstreams.values()), return_exceptions=True)
        self.upstreams.clear()
        if self._http is not None:
            await self._http.close()

    # --- probing ----------------------------------------------------------------------------------

    async def ensure(self) -> Catalog:
        """The catalog, with every reachable server probed and stale pages dropped."""
        now = self._clock()
        stale = [key for key, due in self._expires.items() if due <= now]
        for server, kind in stale:
            del self._expires[(server, kind)]
            self.catalog = self.catalog.invalidate(server, (kind,))
        missing = [
            name
            for name in self._definitions
            if name not in self._infos and now - self._probe_failed.get(name, -1e18) >= self.probe_retry_s
        ]
        if missing:
            probes = [self._probing.get(name) or self._start_probe(name) for name in missing]
            # A server that does not answer (blackholed, not refusing) must not hold every client's
            # request for its whole timeout: wait briefly, let the probe finish in the background.
            await asyncio.wait(probes, timeout=self.probe_wait_s)
        return self.catalog

    def _start_probe(self, name: str) -> asyncio.Task[bool]:
        task = asyncio.ensure_future(self.probe(name))
        self._probing[name] = task
        self._background.add(task)

        def done(_: asyncio.Task[bool]) -> None:
            self._background.discard(task)
            self._probing.pop(name, None)

        task.add_done_callback(done)
        return task

    async def probe(self, name: str, *, again: bool = False) -> bool:
        """Initialize our own session with ``name``; True when it answered."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._probe and not again:
                return True
            upstream = self.upstreams.get(name)
            if upstream is None:
                return False
            initialize = {
                "jsonrpc": "2.0",
                "id": f"ccr-gw:init:{next(self._ids)}",
                "method": "initialize",
                "params": {"protocolVersion": LATEST_VERSION, "capabilities": {}, "clientInfo": self.server_info},
            }
            try:
                opened = await upstream.open(initialize, {})
            except (UpstreamFailed, UpstreamLost) as exc:
                reason = exc.reason if isinstance(exc, UpstreamFailed) else "it lost the session at once"
                log.warning("MCP server %s could not be initialized: %s", name, reason)
                self._probe_failed[name] = self._clock()
                return False
            result = opened.answer.get("result")
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if not isinstance(result, dict) or version not in SUPPORTED_VERSIONS:
                log.warning("MCP server %s answered initialize with revision %r: not used", name, version)
                self._probe_failed[name] = self._clock()
                return False
            if self.upstreams.get(name) is not upstream:
                return False  # the policy replaced it meanwhile
            self._probe[name] = (opened.token, str(version))
            self._probe_failed.pop(name, None)
            if name not in self._infos:
                self._infos[name] = UpstreamInfo.from_initialize_result(name, result)
                self.catalog = Catalog(self._servers(), self.catalog.pages)
                log.info("MCP server %s is in the catalog (revision %s)", name, version)
            return True

    # --- pages ------------------------------------------------------------------------------------

    async def fetch(self, need: NeedPage, passed: Mapping[str, str]) -> None:
        """Fetch one upstream list page into the catalog (concurrent asks for it share one fetch)."""
        key = (need.server, need.kind, need.upstream_cursor)
        running = self._fetching.get(key)
        if running is None:
            running = asyncio.ensure_future(self._fetch(need, passed))
            self._fetching[key] = running
            running.add_done_callback(lambda _f: self._fetching.pop(key, None))
        await asyncio.shield(running)

    async def _fetch(self, need: NeedPage, passed: Mapping[str, str]) -> None:
        reason = "it is not in the policy"
        for attempt in range(2):
            upstream = self.upstreams.get(need.server)
            probe = self._probe.get(need.server)
            if upstream is None:
                break
            if probe is None:
                if not await self.probe(need.server, again=attempt > 0):
                    reason = "it could not be initialized"
                    break
                probe = self._probe[need.server]
            message = {
                "jsonrpc": "2.0",
                "id": f"ccr-gw:{next(self._ids)}",
                "method": need.kind.method,
                "params": need.request_params(),
            }
            try:
                answer = None
                async with contextlib.aclosing(upstream.exchange(message, probe[0], probe[1], passed)) as replies:
                    async for reply in replies:
                        if reply.get("id") == message["id"] and "method" not in reply:
                            answer = reply
                            break
            except UpstreamLost:
                self._probe.pop(need.server, None)
                continue
            except UpstreamFailed as exc:
                reason = exc.reason
                break
            result = answer.get("result") if answer is not None else None
            if isinstance(result, dict):
                updated = self.catalog.with_page(need.server, need.kind, need.upstream_cursor, result)
                if isinstance(updated, Catalog):
                    self.catalog = updated
                    self._expires.setdefault((need.server, need.kind), self._clock() + self.page_ttl_s)
                    return
            reason = "it sent no valid answer"
            break
        log.warning(
            "MCP server %s: %s failed (%s); listed as empty for %gs",
            need.server,
            need.kind.method,
            reason,
            self.probe_retry_s,
        )
        empty = self.catalog.with_page(need.server, need.kind, need.upstream_cursor, {need.kind.member: []})
        if isinstance(empty, Catalog):
            self.catalog = empty
            due = self._clock() + self.probe_retry_s
            self._expires[(need.server, need.kind)] = min(due, self._expires.get((need.server, need.kind), due))

    def invalidate(self, server: str, kinds: tuple[Kind, ...]) -> None:
        """An upstream said a list changed: its pages of those kinds are fetched again on demand."""
        self.catalog = self.catalog.invalidate(server, kinds)
        for kind in kinds:
            self._expires.pop((server, kind), None)

    def _unsolicited(self, server: str, message: dict[str, Any]) -> None:
        kinds = KIND_BY_LIST_CHANGED.get(str(message.get("method")))
        if kinds is not None:
            self.invalidate(server, kinds)
        with contextlib.suppress(Exception):
            self._on_unsolicited(server, message)
