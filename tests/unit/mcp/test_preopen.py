"""extproc.mcp_preopen: upstream sessions opened when a client session is ready, ahead of its first
call, and a call that comes meanwhile waiting for the opening instead of opening a second one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from extproc.mcp_preopen import Preopener
from extproc.mcp_store import MemorySessionStore
from extproc.mcp_upstream import Opened, UpstreamFailed
from tests.unit.mcp.helpers import start


class FakeUpstream:
    def __init__(self, name: str, delay: float = 0.0, fail: bool = False) -> None:
        self.name, self.delay, self.fail = name, delay, fail
        self.opened: list[Mapping[str, Any]] = []
        self.ended: list[str | None] = []

    async def open(self, initialize: Mapping[str, Any], passed: Mapping[str, str]) -> Opened:
        self.opened.append(initialize)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise UpstreamFailed("it did not answer initialize")
        version = initialize["params"]["protocolVersion"]
        answer = {"jsonrpc": "2.0", "id": initialize["id"], "result": {"protocolVersion": version}}
        return Opened(answer, f"{self.name}-upstream-session")

    async def end_session(self, token: str | None, version: str) -> None:
        self.ended.append(token)


class RecordingStore(MemorySessionStore):
    def __init__(self) -> None:
        super().__init__()
        self.put_sessions: list[str] = []

    async def put(self, session: Any) -> None:
        self.put_sessions.append(session.id)
        await super().put(session)


async def test_a_ready_session_gets_its_upstream_sessions_and_the_store_keeps_them() -> None:
    session, store = start(), RecordingStore()
    upstreams = {"github": FakeUpstream("github"), "files": FakeUpstream("files")}
    preopener = Preopener(lambda: upstreams, store)
    preopener.start(session, ["github", "files"], {})
    assert await preopener.wait(session, "github") and await preopener.wait(session, "files")
    assert session.upstream_open("github").session_id == "github-upstream-session"
    assert store.put_sessions == [session.id, session.id]  # each opening is stored, as a call's
    preopener.start(session, ["github"], {})  # open already: nothing sent again
    await asyncio.sleep(0)
    assert len(upstreams["github"].opened) == 1


async def test_a_call_during_the_opening_waits_for_it_and_opens_no_second_session() -> None:
    session = start()
    slow = FakeUpstream("github", delay=0.05)
    preopener = Preopener(lambda: {"github": slow}, MemorySessionStore())
    preopener.start(session, ["github"], {})
    assert session.upstream_open("github") is None
    assert await preopener.wait(session, "github")  # what the call does before sending initialize
    assert len(slow.opened) == 1 and slow.ended == []


async def test_a_failed_opening_leaves_the_first_call_to_open_the_session() -> None:
    session = start()
    preopener = Preopener(lambda: {"github": FakeUpstream("github", fail=True)}, MemorySessionStore())
    preopener.start(session, ["github", "gone-from-the-policy"], {})
    assert not await preopener.wait(session, "github")
    assert not await preopener.wait(session, "gone-from-the-policy")
    assert session.upstream_open("github") is None


async def test_closing_cancels_the_openings_in_flight() -> None:
    session = start()
    preopener = Preopener(lambda: {"github": FakeUpstream("github", delay=30)}, MemorySessionStore())
    preopener.start(session, ["github"], {})
    await asyncio.wait_for(preopener.close(), 1)
    assert session.upstream_open("github") is None


async def test_ending_a_session_stops_its_openings_so_none_stores_it_again() -> None:
    session, other, store = start(), start(), RecordingStore()
    other.id = "another-session"
    upstream = FakeUpstream("github", delay=0.05)
    preopener = Preopener(lambda: {"github": upstream}, store)
    preopener.start(session, ["github"], {})
    preopener.start(other, ["github"], {})
    preopener.cancel(session.id)
    assert not await preopener.wait(session, "github")
    assert await preopener.wait(other, "github")  # another session's opening goes on
    assert store.put_sessions == ["another-session"]
