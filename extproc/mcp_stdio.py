"""One stdio MCP server that the gateway launches and supervises (issue 23): the I/O beside the core.

The sans-IO core (``extproc.mcp``) decides; this adapter only moves messages to and from one child
process, over the MCP stdio transport (2025-06-18 and 2025-11-25, basic/transports, "stdio"):

- each message is one JSON-RPC object on one line of the child's stdin / stdout, ``\\n``-delimited,
  with no embedded newline (orjson's compact output escapes every control character, so a line we
  write is always one line);
- the server must write nothing else to stdout: a line that is not a JSON-RPC message breaks the
  stream (we cannot tell which answer it swallowed), so by default the process is killed and its
  requests fail at once, instead of waiting for their timeouts (``strict_stdout=False`` logs and
  skips such lines, for servers that print a banner);
- stderr is free-form logging: each line is logged, never parsed, and never taken as an error
  (2025-11-25: the client "SHOULD NOT assume stderr output indicates error conditions"); the last
  line is quoted in the error when the process dies, because that is usually the traceback;
- shutdown is the spec's sequence, as the SDK's ``mcp/client/stdio.py`` does it: close stdin, wait,
  SIGTERM the process group, wait, SIGKILL it (lifecycle, "Shutdown").

Supervision. When the process exits (or breaks the protocol, or writes a line over
``max_line_bytes``), every request in flight fails at once with ``UpstreamUnavailable``, whose
``reason`` names the cause (``exited with signal 9``, the last stderr line); the router turns it
into its -32603 answer (``router.on_upstream_failure(session, sent, exc.reason, None)``). Nothing
restarts eagerly: the next use starts a new process, after an exponential, jittered, capped
backoff (``RestartBackoff``) counted from the exit, so a crash loop slows down and a server that
dies once a day restarts at once.

A new process knows no session. Every process gets a ``generation`` (1, 2, ...); ``on_restart``
is called with each new one after the first. The caller initializes a generation once per
gateway session and passes that generation with each later message; a message meant for an
older process raises ``UpstreamRestarted`` *without being sent*, the stdio twin of an HTTP
upstream's 404 for a lost session: call ``router.on_upstream_lost`` (re-initialize once, then a
clear error). Typical use::

    generation = await server.start()              # starts it if needed; the running generation
    if recorded.get(name) != generation:           # new session, or the process was restarted
        answer = await server.request(init, timeout, generation=generation)
        await server.notify(INITIALIZED, generation=generation)
        recorded[name] = generation
    answer = await server.request(message, timeout, generation=generation)

Ids: the core gives each forwarded request an id unique across gateway sessions
(``<session>:<n>``), so one process can serve many sessions; answers are matched by id. What the
server sends on its own (notifications, and requests such as sampling or roots/list) goes to
``on_message``, which must not block (queue it); answer a server request with ``respond``.

No zombie, no orphan: the child runs in its own process group (``start_new_session``), which is
killed on ``close()``, after the process exits, and at interpreter exit (``atexit``); each child is
reaped. On Linux the child also gets a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``),
so a SIGKILLed gateway leaves no server behind. That cannot be set in ``preexec_fn`` (unsafe once
the process has threads, and grpc.aio has), so the child starts as a tiny ``python -I -S -c``
guard that sets it and then ``exec``s the command, the same trick as
``ccr_gateway/orphan_guard.py`` (copied, not imported: extproc may not import ccr_gateway). Two
limits: the signal fires when the *thread* that forked dies (run the event loop in a thread that
lives as long as the gateway), and it reaches only the server, not processes the server started
(``npx`` -> ``node``) if the gateway is SIGKILLed; close() and atexit reach the whole group.

Not thread-safe: one event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.mcp.jsonrpc import ProtocolError, Request, is_request_id, parse_message

logger = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
# The SDK's stdio client waits this long after closing stdin, and again after SIGTERM.
DEFAULT_CLOSE_GRACE_S = 2.0
DEFAULT_KILL_GRACE_S = 2.0
# After the process exits, how long its stdout may still deliver answers it wrote before dying
# (bounded: a grandchild holding the pipe open must not keep its requests waiting).
_DRAIN_AFTER_EXIT_S = 0.5
_STDERR_LINE_LOG_CHARS = 2000
_REASON_SNIPPET_CHARS = 200

# The environment a server inherits from the gateway, as the SDK's stdio client
# (get_default_environment): enough to find and run a command, none of the gateway's secrets.
INHERITED_ENV_VARS = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")

# Copied from ccr_gateway/orphan_guard.py (extproc may not import ccr_gateway; lint-imports):
# set the parent-death signal, check the parent did not die before it was set, then become the
# command. argv: PARENT_PID COMMAND ARGS...
_GUARD = """\
import ctypes, os, signal, sys
parent, argv = int(sys.argv[1]), sys.argv[2:]
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("ccr-gateway: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != parent:
    sys.exit(1)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"ccr-gateway: cannot run {argv[0]!r}: {exc}\\n")
    os._exit(127)
"""


class UpstreamUnavailable(Exception):
    """The server cannot answer: it exited, broke the protocol, could not start, is waiting out its
    restart backoff, or the adapter was closed.

    ``reason`` is what the client's -32603 may say: our own words only. ``detail`` is for the
    operator's log (the offending stdout line, the last stderr line): a server's output can carry
    what the client must not see, such as the credentials it was started with."""

    def __init__(self, server: str, reason: str, detail: str | None = None) -> None:
        super().__init__(f"MCP stdio server {server!r}: {reason}" + (f" ({detail})" if detail else ""))
        self.server = server
        self.reason = reason
        self.detail = detail


class UpstreamTimeout(UpstreamUnavailable):
    """No answer within the timeout; the process is still running (a cancellation was sent)."""


class UpstreamRestarted(UpstreamUnavailable):
    """The process this message was meant for is gone; it was not sent. Re-initialize
    (``router.on_upstream_lost``) against the current generation and send it again."""


@dataclass(frozen=True)
class StdioCommand:
    """What to run; every value already resolved (secrets substituted) by the caller.

    ``env`` is added over ``INHERITED_ENV_VARS`` taken from the gateway's own environment.
    """

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True)
class RestartBackoff:
    """Delay before a restart: ``initial`` * ``factor`` ** (quick exits in a row - 1), at most
    ``ceiling``, shortened by up to ``jitter`` (a fraction) so servers that died together do not
    restart together. A process that ran ``reset_after`` seconds counts as healthy: its exit
    restarts after ``initial`` again."""

    initial: float = 0.1
    factor: float = 2.0
    ceiling: float = 30.0
    jitter: float = 0.5
    reset_after: float = 60.0

    def delay(self, failures: int, rand: float) -> float:
        """``failures``: quick exits in a row (>= 1); ``rand`` in [0, 1)."""
        base = min(self.ceiling, self.initial * self.factor ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rand)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is not running"
    return f"exited with signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own protocol plus an event set when the process exits.

    Not ``Process.wait()``: since 3.11 it also waits for every pipe to close, so a grandchild
    holding stdout open would hide the server's death (the SDK's stdio client polls for the same
    reason)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


@dataclass
class _Run:
    """One process: a generation."""

    generation: int
    process: asyncio.subprocess.Process
    protocol: _Protocol
    started_at: float
    pending: dict[Any, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=1))
    violation: str | None = None  # the server broke the transport (stdout garbage, a line too long)
    cut: int | None = None  # stdout ended this many bytes into a line
    detail: str | None = None  # for the log: the offending line, the last stderr line
    down: str | None = None  # set once: why this process is no longer usable
    closing: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


# Process groups still alive, killed at interpreter exit if nobody closed them (pgid -> name).
_LIVE_GROUPS: dict[int, str] = {}


@atexit.register
def _kill_live_groups() -> None:
    for pgid in list(_LIVE_GROUPS):
        _killpg(pgid, signal.SIGKILL)


def _killpg(pgid: int, signum: int) -> None:
    # The leader's pid is the group id (start_new_session). Never getpgid(): it fails once the
    # leader is reaped while other members live on.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _snippet(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:_REASON_SNIPPET_CHARS] + ("..." if len(text) > _REASON_SNIPPET_CHARS else ""))


class StdioServer:
    """One supervised stdio MCP server process (see the module docstring)."""

    def __init__(
        self,
        command: StdioCommand,
        *,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        on_restart: Callable[[int], None] | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        strict_stdout: bool = True,
        backoff: RestartBackoff = RestartBackoff(),
        close_grace_s: float = DEFAULT_CLOSE_GRACE_S,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        parent_death_signal: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.command = command
        self.name = command.name
        self._on_message = on_message
        self._on_restart = on_restart
        self._max_line = max_line_bytes
        self._strict = strict_stdout
        self._backoff = backoff
        self._close_grace = close_grace_s
        self._kill_grace = kill_grace_s
        self._guard = parent_death_signal and sys.platform.startswith("linux")
        self._clock, self._sleep, self._rand = clock, sleep, rand
        self._run: _Run | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self.generation = 0  # of the newest process started; 0 before the first
        self.restarts = 0  # processes started after one had exited
        self.last_exit: str | None = None
        self._failures = 0  # quick exits in a row, for the backoff
        self._restart_due: float | None = None  # clock() at which the next start may happen

    # --- state ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None and self._run.down is None

    @property
    def pid(self) -> int | None:
        return self._run.pid if self.running and self._run is not None else None

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, *, budget: float | None = None) -> int:
        """Make sure a process runs and return its generation. A restart waits out the rest of
        its backoff, unless that exceeds ``budget`` seconds: then ``UpstreamUnavailable`` now."""
        return (await self._ensure(budget)).generation

    async def _ensure(self, budget: float | None) -> _Run:
        async with self._start_lock:
            if self._closed:
                raise UpstreamUnavailable(self.name, "the gateway closed this server")
            if self._run is not None and self._run.down is None:
                return self._run
            if self._restart_due is not None:
                wait = self._restart_due - self._clock()
                if wait > 0:
                    if budget is not None and wait > budget:
                        raise UpstreamUnavailable(
                            self.name, f"restarting in {wait:.1f}s; it {self.last_exit or 'stopped'}"
                        )
                    await self._sleep(wait)
                    if self._closed:
                        raise UpstreamUnavailable(self.name, "the gateway closed this server")
            run = await self._spawn()
            self._run = run
            if run.generation > 1:
                self.restarts += 1
                logger.warning(
                    "MCP stdio server %s restarted (pid %d, generation %d, restart %d)",
                    self.name,
                    run.pid,
                    run.generation,
                    self.restarts,
                )
                if self._on_restart is not None:
                    try:
                        self._on_restart(run.generation)
                    except Exception:
                        logger.exception("on_restart callback of MCP stdio server %s failed", self.name)
            return run

    async def _spawn(self) -> _Run:
        env = {k: v for k in INHERITED_ENV_VARS if (v := os.environ.get(k)) is not None and not v.startswith("()")}
        env.update(self.command.env)
        # Resolve the command here, with the child's PATH, so "not found" is a clear error rather
        # than the guard's exit code 127.
        executable = shutil.which(self.command.command, path=env.get("PATH", os.defpath))
        if executable is None:
            self._note_exit(f"cannot start: command {self.command.command!r} not found or not executable")
            raise UpstreamUnavailable(self.name, f"command {self.command.command!r} not found or not executable")
        argv: list[str] = [executable, *self.command.args]
        if self._guard:
            argv = [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), *argv]
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(self._max_line, loop),
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.command.cwd,
                start_new_session=True,  # its own process group, killed as one; no terminal signals
            )
        except OSError as exc:
            self._note_exit(f"cannot start: {exc}")
            raise UpstreamUnavailable(self.name, f"cannot start: {exc}") from exc
        process = asyncio.subprocess.Process(transport, protocol, loop)
        self.generation += 1
        run = _Run(self.generation, process, protocol, self._clock())
        _LIVE_GROUPS[run.pid] = self.name
        run.tasks.append(asyncio.create_task(self._supervise(run), name=f"mcp-stdio-{self.name}"))
        run.tasks.append(asyncio.create_task(self._log_stderr(run), name=f"mcp-stdio-{self.name}-stderr"))
        logger.info("MCP stdio server %s started (pid %d, generation %d)", self.name, run.pid, run.generation)
        return run

    async def close(self) -> None:
        """Stop for good: close stdin, wait, SIGTERM the group, wait, SIGKILL it; reap."""
        self._closed = True
        run = self._run
        if run is None:
            return
        run.closing = True
        if run.down is None:
            stdin = run.process.stdin
            if stdin is not None:
                with contextlib.suppress(OSError):
                    stdin.close()
            if not await self._wait_exit(run, self._close_grace):
                _killpg(run.pid, signal.SIGTERM)
                if not await self._wait_exit(run, self._kill_grace):
                    _killpg(run.pid, signal.SIGKILL)
        # _supervise sees the exit, fails what is in flight, kills what is left of the group and
        # reaps the server; wait for it (bounded), then stop the stderr logger too (a survivor
        # could hold that pipe open).
        await asyncio.wait({run.tasks[0]}, timeout=self._kill_grace + 1.0)
        self._down(run, "the gateway closed this server")
        for task in run.tasks:
            task.cancel()
        await asyncio.gather(*run.tasks, return_exceptions=True)

    @staticmethod
    async def _wait_exit(run: _Run, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.protocol.exited.wait(), timeout)
        return run.protocol.exited.is_set()

    # --- messages ---------------------------------------------------------------------------------

    async def request(
        self, message: Mapping[str, Any], timeout: float, *, generation: int | None = None
    ) -> dict[str, Any]:
        """Send a request and return its answer (a response or error response, as sent).

        ``timeout`` bounds everything: a restart, the write and the answer. ``generation``: the
        process this request is for (the one its session initialized); None for any."""
        msg_id = message.get("id")
        if not isinstance(message.get("method"), str) or not is_request_id(msg_id):
            raise ValueError("request() needs a JSON-RPC request: a method and a string or integer id")
        deadline = asyncio.get_running_loop().time() + timeout
        run = await self._usable(generation, timeout)
        if msg_id in run.pending:
            raise ValueError(f"request id {msg_id!r} is already in flight to {self.name}")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        run.pending[msg_id] = future
        try:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._write(run, message), max(remaining, 0.0))
                remaining = deadline - asyncio.get_running_loop().time()
                return await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
            except TimeoutError:
                if future.done() and not future.cancelled():
                    return future.result()  # answered (or failed) at the last moment
                if run.down is not None:
                    raise UpstreamUnavailable(self.name, run.down, run.detail) from None
                await self._cancel_upstream(run, message)
                raise UpstreamTimeout(self.name, f"no answer to {message['method']} within {timeout:g}s") from None
        finally:
            if run.pending.get(msg_id) is future:
                del run.pending[msg_id]
            if not future.done():
                future.cancel()

    async def notify(self, message: Mapping[str, Any], *, generation: int | None = None, timeout: float = 10.0) -> None:
        """Send a notification (no id, never answered)."""
        if not isinstance(message.get("method"), str) or "id" in message:
            raise ValueError("notify() needs a JSON-RPC notification: a method and no id")
        run = await self._usable(generation, timeout)
        await asyncio.wait_for(self._write(run, message), timeout)

    async def respond(
        self, message: Mapping[str, Any], *, generation: int | None = None, timeout: float = 10.0
    ) -> None:
        """Answer a request the server sent (sampling, roots/list, ping). Never restarts the
        server: an answer only means something to the process that asked."""
        if "method" in message or not is_request_id(message.get("id")) or ("result" in message) == ("error" in message):
            raise ValueError("respond() needs a JSON-RPC response: an id and exactly one of result and error")
        run = self._run
        if run is None or run.down is not None or (generation is not None and generation != run.generation):
            raise UpstreamRestarted(self.name, "the process that sent this request is gone")
        await asyncio.wait_for(self._write(run, message), timeout)

    async def _usable(self, generation: int | None, budget: float) -> _Run:
        run = self._run
        if generation is not None and (run is None or run.down is not None or run.generation != generation):
            # Whether or not a newer process runs yet, the session this message belongs to is gone.
            raise UpstreamRestarted(
                self.name,
                f"the process was restarted (generation {generation} -> {self.generation}); it {self.last_exit}",
            )
        return await self._ensure(budget)

    async def _write(self, run: _Run, message: Mapping[str, Any]) -> None:
        line = orjson.dumps(message) + b"\n"  # compact: no newline inside (control chars escaped)
        stdin = run.process.stdin
        if run.down is not None or stdin is None:
            raise UpstreamUnavailable(self.name, run.down or "its stdin is closed", run.detail)
        try:
            stdin.write(line)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError) as exc:  # RuntimeError: transport closed
            # The process is going down: wait (bounded) for the supervisor to say why.
            await asyncio.wait({run.tasks[0]}, timeout=_DRAIN_AFTER_EXIT_S + 0.5)
            raise UpstreamUnavailable(self.name, run.down or f"its stdin is closed ({exc})", run.detail) from exc

    async def _cancel_upstream(self, run: _Run, message: Mapping[str, Any]) -> None:
        if message.get("method") == "initialize":
            return  # "The initialize request MUST NOT be cancelled by clients" (basic/utilities/cancellation)
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": message["id"], "reason": "timed out in the gateway"},
        }
        with contextlib.suppress(UpstreamUnavailable, TimeoutError):
            await asyncio.wait_for(self._write(run, note), 1.0)

    # --- the process ------------------------------------------------------------------------------

    async def _supervise(self, run: _Run) -> None:
        """Read stdout until it ends or breaks; then decide why the process is down."""
        reader = asyncio.create_task(self._read_stdout(run))
        exited = asyncio.create_task(run.protocol.exited.wait())
        try:
            await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
            if run.violation is None:
                # Give the answers written just before an exit their chance; and a process that
                # closed stdout, its chance to exit (bounded both ways).
                await asyncio.wait({reader, exited}, timeout=_DRAIN_AFTER_EXIT_S, return_when=asyncio.ALL_COMPLETED)
        finally:
            reader.cancel()
            exited.cancel()
        code = run.process.returncode
        cut = f"; its stdout ended mid-line ({run.cut} bytes without a newline)" if run.cut else ""
        if run.violation is not None:
            reason = run.violation
        elif code is not None:
            reason = describe_exit(code) + cut
        else:
            reason = "closed its stdout" + cut
        if run.stderr_tail:
            last = f"last stderr line: {_snippet(run.stderr_tail[-1])}"
            run.detail = f"{run.detail}; {last}" if run.detail else last
        self._down(run, reason)
        # Kill whatever is left of the group (the server itself when it broke the protocol, or
        # the processes it started), then reap the server.
        _killpg(run.pid, signal.SIGKILL)
        await self._wait_exit(run, self._kill_grace)
        _LIVE_GROUPS.pop(run.pid, None)
        transport = getattr(run.process, "_transport", None)
        if transport is not None:
            transport.close()

    def _down(self, run: _Run, reason: str) -> None:
        if run.down is not None:
            return
        run.down = "the gateway closed this server" if run.closing else reason
        for future in run.pending.values():
            if not future.done():
                future.set_exception(UpstreamUnavailable(self.name, run.down, run.detail))
        run.pending.clear()
        if run.closing:
            return
        ran_for = self._clock() - run.started_at
        self._failures = 1 if ran_for >= self._backoff.reset_after else self._failures + 1
        delay = self._backoff.delay(self._failures, self._rand())
        self._restart_due = self._clock() + delay
        self.last_exit = reason
        logger.warning(
            "MCP stdio server %s (pid %d) %s%s; next use restarts it in %.2fs or later",
            self.name,
            run.pid,
            reason,
            f" ({run.detail})" if run.detail else "",
            delay,
        )

    def _note_exit(self, reason: str) -> None:
        """A start that failed counts as a quick exit, for the backoff."""
        self._failures += 1
        self._restart_due = self._clock() + self._backoff.delay(self._failures, self._rand())
        self.last_exit = reason

    async def _read_stdout(self, run: _Run) -> None:
        stdout = run.process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    run.cut = len(exc.partial)
                return
            except asyncio.LimitOverrunError:
                # The reader holds at most about twice the limit; stop before it grows further.
                run.violation = f"it wrote a line over {self._max_line} bytes to stdout"
                return
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if not self._handle_line(run, line):
                return

    def _handle_line(self, run: _Run, line: bytes) -> bool:
        """One stdout line; False when it broke the stream."""
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError:
            raw = None
        parsed = parse_message(raw) if isinstance(raw, dict) else None
        if parsed is None or isinstance(parsed, ProtocolError):
            if self._strict:
                run.violation = "it wrote a line to stdout that is not a JSON-RPC message"
                run.detail = f"the line: {_snippet(line)}"
                return False
            logger.warning(
                "MCP stdio server %s wrote a non-JSON-RPC line to stdout, skipped: %s", self.name, _snippet(line)
            )
            return True
        assert isinstance(raw, dict)
        if "method" in raw:  # a request or a notification of the server's own
            if self._on_message is None:
                if isinstance(parsed, Request):
                    logger.warning("MCP stdio server %s sent %s with nobody to answer it", self.name, parsed.method)
                return True
            try:
                self._on_message(raw)
            except Exception:
                logger.exception("on_message callback of MCP stdio server %s failed", self.name)
            return True
        future = run.pending.pop(raw.get("id"), None) if is_request_id(raw.get("id")) else None
        if future is None:
            # A late answer (timed out, cancelled) or an error about a message it could not read.
            logger.info("MCP stdio server %s answered an id not in flight: %s", self.name, _snippet(line))
        elif not future.done():
            future.set_result(raw)
        return True

    async def _log_stderr(self, run: _Run) -> None:
        stderr = run.process.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
                if not line:
                    return
            except asyncio.LimitOverrunError as exc:
                line = await stderr.read(exc.consumed)  # log the first part, drop nothing silently
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if text:
                text = text[:_STDERR_LINE_LOG_CHARS]
                run.stderr_tail.append(text)
                logger.info("MCP stdio server %s: %s", self.name, text)
