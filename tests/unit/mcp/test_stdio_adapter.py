"""The stdio upstream adapter (extproc/mcp_stdio.py) against real processes: an MCP server written
with the official SDK (servers/echo_server.py), plus plain commands where the protocol does not
matter (the guard, the backoff). Each SDK server takes about a second to start, so the tests that
leave the process healthy share one."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.mcp.access import ALLOW_ALL
from extproc.mcp.catalog import Catalog, Kind, UpstreamInfo
from extproc.mcp.router import (
    INITIALIZED,
    Action,
    Decision,
    on_upstream_failure,
    on_upstream_lost,
    on_upstream_message,
    open_upstream,
)
from extproc.mcp.session import Session
from extproc.mcp_stdio import (
    RestartBackoff,
    StdioCommand,
    StdioServer,
    UpstreamRestarted,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.unit.mcp.helpers import POST_HEADERS, initialize_body, post, request_body

pytest.importorskip("mcp.server.mcpserver")  # the test server is written with the SDK

ROOT = Path(__file__).resolve().parents[3]
ECHO = StdioCommand("echo", sys.executable, (str(Path(__file__).parent / "servers" / "echo_server.py"),))
RAW_SERVER = str(Path(__file__).parent / "servers" / "raw_server.py")
_ids = itertools.count(1)


def raw(mode: str) -> StdioCommand:
    return StdioCommand(f"raw-{mode}", sys.executable, (RAW_SERVER, mode))


def init_request(generation: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": f"test:init:{generation}:{next(_ids)}",
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"roots": {}},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }


def call(tool: str, meta: dict[str, Any] | None = None, **arguments: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": f"test:{next(_ids)}", "method": "tools/call", "params": params}


def text_of(answer: dict[str, Any]) -> str:
    assert "result" in answer, answer
    return str(answer["result"]["content"][0]["text"])


async def initialized(server: StdioServer) -> int:
    generation = await server.start()
    answer = await server.request(init_request(generation), 15, generation=generation)
    assert answer["result"]["protocolVersion"] == "2025-06-18"
    await server.notify(INITIALIZED, generation=generation)
    return generation


def alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def down(server: StdioServer) -> None:
    for _ in range(300):
        if not server.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server is still running")


class Inbox:
    """The on_message callback: what the server sent on its own."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()


@pytest.fixture(scope="module")
async def echo() -> Any:
    inbox = Inbox()
    server = StdioServer(ECHO, on_message=inbox)
    await initialized(server)
    yield server, inbox
    await server.close()


# --- the healthy path -----------------------------------------------------------------------------


async def test_initialize_list_and_call_reach_the_sdk_server(echo: tuple[StdioServer, Inbox]) -> None:
    server, _ = echo
    listed = await server.request({"jsonrpc": "2.0", "id": "test:list", "method": "tools/list"}, 10)
    assert {"echo", "sleep", "progress", "roots"} <= {tool["name"] for tool in listed["result"]["tools"]}
    text = 'line one\nline two\r\n\u2028 "quoted" ' + "é" * 10
    message = call("echo", text=text)
    answer = await server.request(message, 10, generation=server.generation)
    assert answer["id"] == message["id"] and text_of(answer) == text  # newlines travel escaped


async def test_concurrent_requests_are_matched_by_id(echo: tuple[StdioServer, Inbox]) -> None:
    server, _ = echo
    # Slow ones first, so the answers come back in another order than the requests went out.
    messages = [call("sleep", seconds=0.3 - i * 0.03) for i in range(10)] + [
        call("echo", text=f"t{i}") for i in range(10)
    ]
    answers = await asyncio.gather(*(server.request(m, 10) for m in messages))
    for message, answer in zip(messages, answers, strict=True):
        assert answer["id"] == message["id"]
    assert [text_of(a) for a in answers[10:]] == [f"t{i}" for i in range(10)]
    assert text_of(answers[0]) == "slept 0.3"


async def test_progress_notifications_reach_the_callback(echo: tuple[StdioServer, Inbox]) -> None:
    server, inbox = echo
    inbox.messages.clear()
    message = call("progress", meta={"progressToken": "test:tok"}, steps=3)
    assert text_of(await server.request(message, 10)) == "done"
    progress = [m for m in inbox.messages if m["method"] == "notifications/progress"]
    assert [m["params"]["progress"] for m in progress] == [1, 2, 3]
    assert {m["params"]["progressToken"] for m in progress} == {"test:tok"}


async def test_a_server_request_reaches_the_callback_and_is_answered_with_respond(
    echo: tuple[StdioServer, Inbox],
) -> None:
    server, inbox = echo
    inbox.messages.clear()
    inbox.arrived.clear()
    pending = asyncio.create_task(server.request(call("roots"), 10))
    await asyncio.wait_for(inbox.arrived.wait(), 5)
    (asked,) = inbox.messages
    assert asked["method"] == "roots/list" and "id" in asked
    await server.respond({"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": [{"uri": "file:///repo"}]}})
    assert text_of(await pending) == "file:///repo"


async def test_a_timeout_is_its_own_error_and_leaves_the_process_running(echo: tuple[StdioServer, Inbox]) -> None:
    server, _ = echo
    pid = server.pid
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"no answer to tools/call within 0\.3s"):
        await server.request(call("sleep", seconds=5), 0.3)
    assert time.monotonic() - started < 1.5
    assert server.pid == pid and text_of(await server.request(call("echo", text="still here"), 10)) == "still here"


async def test_misuse_is_a_value_error(echo: tuple[StdioServer, Inbox]) -> None:
    server, _ = echo
    with pytest.raises(ValueError):
        await server.request({"jsonrpc": "2.0", "method": "tools/list"}, 1)  # no id
    with pytest.raises(ValueError):
        await server.notify({"jsonrpc": "2.0", "id": 1, "method": "x"})
    with pytest.raises(ValueError):
        await server.respond({"jsonrpc": "2.0", "id": 1})


# --- through the core: a server killed mid-call ----------------------------------------------------


async def forward(server: StdioServer, session: Session, decision: Decision, initialized_in: dict[str, int]) -> bytes:
    """The glue the hop will hold, reduced to one FORWARD: open the upstream session on the running
    generation if needed, send, and map every failure to the router's own answers."""
    while True:
        assert decision.action is Action.FORWARD, decision
        (sent,) = decision.sends
        generation = initialized_in.get(session.id)
        try:
            if sent.initialize is not None:  # the core asks for a (fresh) upstream session
                generation = await server.start(budget=10)
                answer = await server.request(sent.initialize, 15, generation=generation)
                assert open_upstream(session, sent.server, answer, None) is None
                await server.notify(INITIALIZED, generation=generation)
                initialized_in[session.id] = generation
            # Pinned to the process this session initialized: a restarted one raises UpstreamRestarted.
            answer = await server.request(sent.message, 10, generation=generation)
        except UpstreamRestarted:
            decision = on_upstream_lost(session, sent)  # re-initialize once, then a clear error
            if decision.action is not Action.FORWARD:
                assert decision.body is not None
                return decision.body
            continue
        except UpstreamUnavailable as exc:
            failed = on_upstream_failure(session, sent, exc.reason, None)
            assert failed.body is not None
            return failed.body
        delivery = on_upstream_message(session, sent.server, answer)
        assert delivery.final and delivery.to_client is not None
        return orjson.dumps(delivery.to_client)


async def catalog_of(server: StdioServer) -> Catalog:
    generation = await server.start()
    result = (await server.request(init_request(generation), 15))["result"]
    tools = (await server.request({"jsonrpc": "2.0", "id": "test:cat", "method": "tools/list"}, 10))["result"]
    catalog = Catalog((UpstreamInfo.from_initialize_result("echo", result),)).with_page("echo", Kind.TOOLS, None, tools)
    assert isinstance(catalog, Catalog)
    return catalog


async def test_a_server_killed_mid_call_fails_fast_then_restarts_and_the_session_reinitializes() -> None:
    restarted: list[int] = []
    server = StdioServer(ECHO, on_restart=restarted.append, backoff=RestartBackoff(initial=0.05, jitter=0))
    try:
        catalog = await catalog_of(server)
        opened = post(None, initialize_body(), catalog=catalog, headers=POST_HEADERS)
        assert opened.session is not None
        session, initialized_in = opened.session, {}

        def tools_call(msg_id: int, tool: str, **arguments: Any) -> Decision:
            body = request_body("tools/call", {"name": f"echo__{tool}", "arguments": arguments}, msg_id)
            return post(session, body, catalog=catalog, access=ALLOW_ALL)

        first = orjson.loads(await forward(server, session, tools_call(1, "echo", text="hi"), initialized_in))
        assert first["id"] == 1 and first["result"]["content"][0]["text"] == "hi"

        pid = server.pid
        assert pid is not None
        slow = asyncio.create_task(forward(server, session, tools_call(2, "sleep", seconds=30), initialized_in))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        failed = orjson.loads(await slow)
        assert time.monotonic() - started < 2.0  # at once, not after the 10 s timeout
        assert failed["id"] == 2 and failed["error"]["code"] == -32603
        assert failed["error"]["data"] == {"server": "echo", "reason": "exited with signal 9"}
        assert await gone(pid)

        # The next call restarts the process; the session notices the new generation, takes the
        # core's lost-session path (re-initialize once) and the call goes through.
        again = orjson.loads(await forward(server, session, tools_call(3, "echo", text="back"), initialized_in))
        assert again["id"] == 3 and again["result"]["content"][0]["text"] == "back"
        assert server.restarts == 1 and restarted == [2] and server.generation == 2
        assert server.pid != pid and initialized_in[session.id] == 2
    finally:
        await server.close()


# --- a server that breaks the transport ----------------------------------------------------------


async def test_a_line_over_the_limit_stops_the_reader_with_a_clear_error() -> None:
    server = StdioServer(ECHO, max_line_bytes=64 * 1024)
    try:
        await initialized(server)
        pid = server.pid
        assert pid is not None
        with pytest.raises(UpstreamUnavailable, match="wrote a line over 65536 bytes"):
            await server.request(call("echo", text="x" * 200_000), 10)
        assert await gone(pid) and not server.running
    finally:
        await server.close()


async def test_garbage_on_stdout_is_a_clear_error_not_a_hang() -> None:
    server = StdioServer(raw("garbage"))
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as caught:
            await server.request(call("echo"), 10)
        assert time.monotonic() - started < 2.0 and not isinstance(caught.value, UpstreamTimeout)
        assert caught.value.reason == "it wrote a line to stdout that is not a JSON-RPC message"
        # The line itself goes to the operator's log only, never into the client's error.
        assert caught.value.detail is not None and "'this is not JSON-RPC'" in caught.value.detail
    finally:
        await server.close()


async def test_garbage_on_stdout_is_skipped_when_not_strict() -> None:
    server = StdioServer(raw("garbage"), strict_stdout=False)
    try:
        assert (await server.request(call("echo"), 10))["result"] == {"echo": "tools/call"}
    finally:
        await server.close()


async def test_stdout_closed_mid_line_reports_the_exit_and_the_cut() -> None:
    server = StdioServer(raw("cut"))
    try:
        with pytest.raises(UpstreamUnavailable, match=r"exited with code 3; its stdout ended mid-line \(25 bytes"):
            await server.request(call("echo"), 10)
    finally:
        await server.close()


# --- no process left behind ---------------------------------------------------------------------


async def test_close_leaves_no_process_not_even_one_the_server_started() -> None:
    server = StdioServer(ECHO)
    await initialized(server)
    pid = server.pid
    assert pid is not None
    grandchild = int(text_of(await server.request(call("spawn_grandchild"), 10)))
    assert alive(grandchild) and os.getpgid(grandchild) == pid  # the server's own group
    pending = asyncio.create_task(server.request(call("sleep", seconds=30), 10))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 3.0  # the SDK server exits when its stdin closes
    assert not alive(pid) and await gone(grandchild)
    try:
        answer = await pending
    except UpstreamUnavailable as exc:
        assert exc.reason == "the gateway closed this server"
    else:  # the SDK server answers what it has in flight once its stdin closes
        assert answer["error"]["message"] == "Connection closed"
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await server.start()


async def test_close_escalates_to_sigkill_for_a_server_that_ignores_stdin_and_sigterm() -> None:
    stubborn = StdioCommand(
        "stubborn",
        sys.executable,
        ("-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"),
    )
    server = StdioServer(stubborn, close_grace_s=0.2, kill_grace_s=0.2)
    await server.start()
    pid = server.pid
    assert pid is not None
    await asyncio.sleep(0.2)  # past the guard's exec and the signal() call
    await server.close()
    assert not alive(pid)


GATEWAY = """
import asyncio, sys
from extproc.mcp_stdio import StdioCommand, StdioServer

async def main():
    server = StdioServer(StdioCommand("sleeper", "sleep", ("600",)), parent_death_signal=sys.argv[1] == "guard")
    await server.start()
    print(server.pid, flush=True)
    if sys.argv[1] == "guard":
        await asyncio.sleep(600)  # SIGKILLed by the test

asyncio.run(main())  # "atexit": returns without close()
"""


@pytest.mark.parametrize("how", ["guard", "atexit"])
async def test_no_server_outlives_the_gateway(how: str) -> None:
    """SIGKILL the gateway: the parent-death signal kills the server. Exit without close(): the
    atexit hook does."""
    gateway = subprocess.Popen([sys.executable, "-c", GATEWAY, how], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(gateway.stdout.readline), 10)
        pid = int(line)
        if how == "guard":
            await asyncio.sleep(0.1)
            assert alive(pid)
            gateway.kill()
        assert await asyncio.to_thread(gateway.wait, 10) is not None
        assert await gone(pid)
    finally:
        gateway.kill()
        gateway.wait()
        if gateway.stdout is not None:
            gateway.stdout.close()


# --- restarts: backoff and failures to start ---------------------------------------------------------


def test_backoff_doubles_up_to_its_ceiling_and_jitter_only_shortens() -> None:
    backoff = RestartBackoff(initial=0.1, factor=2, ceiling=1.0, jitter=0.5)
    assert [backoff.delay(n, 0.0) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(3, 0.999) == pytest.approx(0.2, abs=0.001)
    assert all(0.5 <= backoff.delay(9, r / 10) <= 1.0 for r in range(10))


async def test_a_crash_loop_waits_out_a_growing_backoff_on_an_injected_clock() -> None:
    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    restarted: list[int] = []
    crasher = StdioCommand(
        "crasher", sys.executable, ("-I", "-S", "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)")
    )
    server = StdioServer(
        crasher,
        on_restart=restarted.append,
        backoff=RestartBackoff(initial=1.0, factor=2.0, ceiling=4.0, jitter=0.0, reset_after=60.0),
        clock=lambda: clock[0],
        sleep=sleep,
        parent_death_signal=False,
    )
    try:
        for _ in range(5):
            await server.start()
            await down(server)
            assert server.last_exit == "exited with code 3"
        assert slept == [1.0, 2.0, 4.0, 4.0] and server.restarts == 4 and restarted == [2, 3, 4, 5]
        # A restart further away than the caller can wait: refused at once, with the cause.
        with pytest.raises(UpstreamUnavailable, match=r"restarting in 4\.0s; it exited with code 3"):
            await server.request(call("echo", text="x"), 1.0)
        # A run that lasted reset_after seconds counts as healthy: the next restart is quick again.
        await server.start(budget=10)
        clock[0] += 60.0  # before the process can exit: it "ran" a minute
        await down(server)
        slept.clear()
        await server.start()
        assert slept == [1.0]
    finally:
        await server.close()


async def test_a_missing_command_is_a_clear_error() -> None:
    server = StdioServer(StdioCommand("nope", "ccr-no-such-mcp-server"))
    with pytest.raises(UpstreamUnavailable, match="'ccr-no-such-mcp-server' not found"):
        await server.start()
    await server.close()
