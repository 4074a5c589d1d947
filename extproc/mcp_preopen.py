"""Upstream MCP sessions opened ahead of the client's first call (the MCP service's I/O edge).

The core opens an upstream session lazily: the first ``tools/call`` for a server carries its
``initialize`` (extproc.mcp.router), and that call waits for two round trips to the server, a few
milliseconds on a fast one (docs/performance.md, "MCP gateway"). When the client says
``notifications/initialized``, its session is ready and a call will come; the service then opens,
in the background, an upstream session with each server the caller may reach. A call that comes
while one is still opening waits for it instead of opening a second one.

A failed opening is only logged at debug level: the first call opens the session itself, as it
would have anyway, and answers the client with what went wrong. Sessions stay the core's: the
opening records the upstream in the session (``router.open_upstream``) and stores it, as a call's
would. The session store hands every request of a session on this replica the same object
(extproc.mcp_store), so a call sees what the opening recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from extproc.mcp import router
from extproc.mcp.session import Session
from extproc.mcp_store import SessionStore
from extproc.mcp_upstream import Upstream, UpstreamFailed, UpstreamLost

log = logging.getLogger("ccr.mcp.preopen")

# How long a call waits for an opening in flight before opening a session itself (the opening
# is then left to finish; a second upstream session is the worst outcome, as without this).
WAIT_S = 10.0


class Preopener:
    """The openings in flight, by (client session id, server)."""

    def __init__(self, upstreams: Callable[[], Mapping[str, Upstream]], store: SessionStore) -> None:
        self._upstreams = upstreams  # the policy's servers now (they change with the policy)
        self._store = store
        self._opening: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start(self, session: Session, servers: Iterable[str], passed: Mapping[str, str]) -> None:
        """Open ``session``'s upstream session with each of ``servers`` it has none with yet."""
        upstreams = self._upstreams()
        for server in servers:
            key = (session.id, server)
            upstream = upstreams.get(server)
            if upstream is None or session.upstream_open(server) is not None or key in self._opening:
                continue
            task = asyncio.get_running_loop().create_task(self._open(session, upstream, passed))
            self._opening[key] = task
            task.add_done_callback(lambda _, key=key: self._opening.pop(key, None))

    async def wait(self, session: Session, server: str) -> bool:
        """Wait for an opening in flight with ``server``; True when ``session`` has an upstream
        session with it now (the caller sends no initialize then)."""
        task = self._opening.get((session.id, server))
        if task is not None:
            await asyncio.wait({task}, timeout=WAIT_S)
        return session.upstream_open(server) is not None

    def cancel(self, session_id: str) -> None:
        """The client ended its session: its openings in flight stop (a session deleted from the
        store must not be stored again by an opening that finishes after)."""
        for (opening_for, _), task in list(self._opening.items()):
            if opening_for == session_id:
                task.cancel()

    async def close(self) -> None:
        for task in list(self._opening.values()):
            task.cancel()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)

    async def _open(self, session: Session, upstream: Upstream, passed: Mapping[str, str]) -> None:
        server = upstream.name
        try:
            opened = await upstream.open(router.upstream_initialize(session, server), passed)
            if session.upstream_open(server) is not None:  # opened meanwhile after all: one is enough
                if version := _version(opened.answer):
                    await upstream.end_session(opened.token, version)
            elif router.open_upstream(session, server, opened.answer, opened.token) is None:
                await self._store.put(session)
        except (UpstreamFailed, UpstreamLost, OSError) as exc:
            log.debug(
                "MCP session %s: opening server %s ahead failed (the first call will): %s", session.id, server, exc
            )
        except Exception:  # the session store, or a bug: the first call opens the session itself
            log.exception("MCP session %s: opening server %s ahead failed", session.id, server)


def _version(answer: Mapping[str, Any]) -> str:
    result = answer.get("result")
    version = result.get("protocolVersion") if isinstance(result, dict) else None
    return version if isinstance(version, str) else ""
