"""The load of ``ccr-gateway bench --mcp``: ``python -m bench.mcp_load URL --samples FILE (--calls | --sessions N)``.

Raw HTTP/1.1 on keep-alive connections speaking MCP's Streamable HTTP (one JSON-RPC message per
POST), asyncio, no SDK: the SDK client costs milliseconds per call, more than what is measured.
The same program, the same bytes but the tool's name, against the upstream server directly and
against the gateway's endpoint, so the difference is the gateway's.

- ``--calls``: one MCP session (initialize, notifications/initialized), then ``tools/call`` of
  ``--tool`` at ``--rate`` calls/s, open loop (Poisson arrivals, latency from the *scheduled*
  start, so a server falling behind is counted: no coordinated omission) on a pool of
  ``--connections`` warm connections sharing the session (a new one opened when all are busy),
  first for ``--warmup`` s (not recorded), then for ``--duration`` s. Each answer is checked: HTTP
  200, the JSON-RPC id, a result whose text is the one sent. Samples: ``scheduled_s latency_s ok``.
- ``--sessions N``: N new sessions one after another on one warm connection, each timed as
  initialize + notifications/initialized + tools/list (``setup``), then its first ``tools/call``
  (``first_call``; through the gateway it opens the upstream session), then DELETEd (not timed).
  Two sessions first, not recorded. Samples: ``setup_s first_call_s ok``.

An answer may be JSON or SSE (``data:`` lines; the JSON-RPC answer is the message with the
request's id). One JSON line on stdout at the end: counts, errors by kind, ``exchanges`` (every
HTTP request sent, warm-up and session set-up included: what the processes' CPU paid for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

PROTOCOL_VERSION = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
CALL_TEXT = "hello from the bench"
SAMPLES_HEADER = "# scheduled_s latency_s ok"
SESSION_SAMPLES_HEADER = "# setup_s first_call_s ok"


class AnswerError(Exception):
    """An answer that is not the expected one; ``kind`` names it in the error counts."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Connection:
    """One keep-alive HTTP/1.1 connection; ``post`` sends one request and reads the whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[bytes, bytes], bytes, bool]:
        """(status, headers with lowercase names, body, still usable)."""
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep = b"close" not in headers.get(b"connection", b"").lower()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            data = b"".join(parts)
        elif b"content-length" in headers:
            data = await self.reader.readexactly(int(headers[b"content-length"]))
        elif status in (202, 204, 304) or 100 <= status < 200:
            data = b""
        else:  # read to close
            data = await self.reader.read()
            keep = False
        return status, headers, data, keep

    def close(self) -> None:
        self.writer.close()


def answer_of(body: bytes, content_type: bytes, msg_id: int) -> dict[str, Any]:
    """The JSON-RPC answer to ``msg_id`` in a JSON or SSE body."""
    if content_type.startswith(b"text/event-stream"):
        for line in body.replace(b"\r\n", b"\n").split(b"\n"):
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if isinstance(message, dict) and message.get("id") == msg_id and "method" not in message:
                    return message
        raise AnswerError("no_answer", "the SSE stream held no answer")
    message = json.loads(body)
    if not isinstance(message, dict) or message.get("id") != msg_id:
        raise AnswerError("wrong_answer", "not the answer to this request")
    return message


class Client:
    """Builds the requests of one target; the session id goes on every request once known."""

    def __init__(self, url: str, tool: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.netloc = parts.netloc
        self.tool = tool
        self.session_id = b""
        self.version = PROTOCOL_VERSION
        self.next_id = 0

    async def connect(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        return Connection(reader, writer)

    def head(self, method: str, length: int) -> bytes:
        lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.netloc}", f"Accept: {ACCEPT}"]
        if method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {length}"]
        if self.session_id:
            lines += [f"Mcp-Session-Id: {self.session_id.decode()}", f"MCP-Protocol-Version: {self.version}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def rpc(self, conn: Connection, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """One request and its checked answer; (the answer, connection reusable)."""
        self.next_id += 1
        msg_id = self.next_id
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()
        status, headers, data, keep = await conn.request(self.head("POST", len(body)), body)
        if status != 200:
            raise AnswerError("status", f"HTTP {status} to {method}: {data[:200]!r}")
        message = answer_of(data, headers.get(b"content-type", b""), msg_id)
        if "error" in message:
            raise AnswerError("jsonrpc_error", f"{method}: {message['error']}")
        if method == "initialize":
            self.session_id = headers.get(b"mcp-session-id", b"")
            self.version = str(message.get("result", {}).get("protocolVersion", PROTOCOL_VERSION))
        return message, keep

    async def notify_initialized(self, conn: Connection) -> bool:
        body = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
        status, _, data, keep = await conn.request(self.head("POST", len(body)), body)
        if status != 202:
            raise AnswerError("status", f"HTTP {status} to notifications/initialized: {data[:200]!r}")
        return keep

    async def open_session(self, conn: Connection) -> None:
        self.session_id = b""
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        }
        await self.rpc(conn, "initialize", params)
        if not self.session_id:
            raise AnswerError("no_session", "initialize answered without Mcp-Session-Id")
        await self.notify_initialized(conn)

    async def call(self, conn: Connection) -> bool:
        message, keep = await self.rpc(conn, "tools/call", {"name": self.tool, "arguments": {"text": CALL_TEXT}})
        content = message.get("result", {}).get("content") or [{}]
        if content[0].get("text") != CALL_TEXT or message["result"].get("isError"):
            raise AnswerError("wrong_answer", f"tools/call answered {str(message)[:200]}")
        return keep

    async def list_tools(self, conn: Connection) -> bool:
        message, keep = await self.rpc(conn, "tools/list", {})
        if not any(tool.get("name") == self.tool for tool in message.get("result", {}).get("tools", [])):
            raise AnswerError("wrong_answer", f"tools/list does not hold {self.tool}")
        return keep

    async def end_session(self, conn: Connection) -> bool:
        status, _, _, keep = await conn.request(self.head("DELETE", 0), b"")
        self.session_id = b""
        return keep and status < 500


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client = Client(args.url, args.tool)
        self.errors: Counter[str] = Counter()
        self.first_errors: list[str] = []
        self.exchanges = 0
        self.reconnects = 0  # calls sent again on a new connection: the server had closed an idle one
        self.idle: list[Connection] = []
        self.max_lag = 0.0

    def _failed(self, exc: BaseException) -> None:
        kind = exc.kind if isinstance(exc, AnswerError) else "timeout" if isinstance(exc, TimeoutError) else "read"
        self.errors[kind] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{type(exc).__name__}: {exc}"[:300])

    async def _call(self, held: list[Connection | None]) -> bool:
        """tools/call on ``held[0]`` (a new connection when None; ``held[0]`` is the one used). A
        kept-alive connection the server closed meanwhile (uvicorn closes idle ones after 5 s)
        fails before any byte of an answer: the call goes again on a new connection, as every HTTP
        client does, its time counted."""
        conn = held[0]
        if conn is not None:
            try:
                return await self.client.call(conn)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
                conn.close()
                held[0] = None
                self.reconnects += 1
        held[0] = await self.client.connect()
        return await self.client.call(held[0])

    async def _one(self, conn: Connection | None) -> tuple[Connection | None, bool]:
        """One tools/call; (the connection if reusable, the answer was right)."""
        self.exchanges += 1
        held = [conn]
        try:
            keep = await asyncio.wait_for(self._call(held), self.args.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            self._failed(exc)
            if held[0] is not None:
                held[0].close()
            return None, False
        except AnswerError as exc:
            self._failed(exc)
            return held[0], False
        if not keep and held[0] is not None:
            held[0].close()
            return None, True
        return held[0], True

    async def _scheduled(self, scheduled: float, samples: list[tuple[float, float, int]] | None) -> None:
        conn, ok = await self._one(self.idle.pop() if self.idle else None)
        if samples is not None:
            samples.append((scheduled, time.perf_counter() - scheduled, int(ok)))
        if conn is not None:
            self.idle.append(conn)

    async def _open_loop(self, start: float, seconds: float, samples: list[tuple[float, float, int]] | None) -> None:
        rng = random.Random(self.args.seed)
        tasks: set[asyncio.Task[None]] = set()
        scheduled, deadline = start, start + seconds
        while True:
            scheduled += rng.expovariate(self.args.rate)
            if scheduled >= deadline:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif samples is not None:
                self.max_lag = max(self.max_lag, -delay)
            task = asyncio.create_task(self._scheduled(scheduled, samples))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.timeout)

    async def calls(self) -> dict[str, Any]:
        first = await self.client.connect()
        await self.client.open_session(first)
        self.exchanges += 2
        self.idle = [first] + [await self.client.connect() for _ in range(self.args.connections - 1)]
        if self.args.warmup > 0:
            await self._open_loop(time.perf_counter(), self.args.warmup, None)
        samples: list[tuple[float, float, int]] = []
        start = time.perf_counter()
        await self._open_loop(start, self.args.duration, samples)
        elapsed = time.perf_counter() - start
        conn = self.idle.pop() if self.idle else await self.client.connect()
        await self.client.end_session(conn)
        self.exchanges += 1
        for idle in [conn, *self.idle]:
            idle.close()
        with open(self.args.samples, "w") as out:
            out.write(SAMPLES_HEADER + "\n")
            out.writelines(f"{s - start:.6f} {lat:.6f} {ok}\n" for s, lat, ok in samples)
        return {
            "calls": len(samples),
            "elapsed_s": round(elapsed, 3),
            "max_schedule_lag_ms": round(self.max_lag * 1e3, 3),
        }

    async def sessions(self) -> dict[str, Any]:
        conn: Connection | None = None
        samples: list[tuple[float, float, int]] = []
        for index in range(self.args.sessions + 2):  # the first two not recorded
            setup = first_call = 0.0
            ok = 1
            try:
                if conn is None:
                    conn = await self.client.connect()
                started = time.perf_counter()
                await asyncio.wait_for(self.client.open_session(conn), self.args.timeout)
                await asyncio.wait_for(self.client.list_tools(conn), self.args.timeout)
                listed = time.perf_counter()
                await asyncio.wait_for(self.client.call(conn), self.args.timeout)
                setup, first_call = listed - started, time.perf_counter() - listed
                if not await self.client.end_session(conn):
                    conn.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError, AnswerError) as exc:
                self._failed(exc)
                ok = 0
                if conn is not None:
                    conn.close()
                conn = None
            self.exchanges += 5
            if index >= 2:
                samples.append((setup, first_call, ok))
        if conn is not None:
            conn.close()
        with open(self.args.samples, "w") as out:
            out.write(SESSION_SAMPLES_HEADER + "\n")
            out.writelines(f"{setup:.6f} {first:.6f} {ok}\n" for setup, first, ok in samples)
        return {"sessions": len(samples)}

    async def run(self) -> dict[str, Any]:
        output = await (self.sessions() if self.args.sessions else self.calls())
        output |= {"exchanges": self.exchanges, "reconnects": self.reconnects, "errors": dict(self.errors)}
        output["first_errors"] = self.first_errors
        return output


def read_samples(path: str) -> list[tuple[float, float, int]]:
    """A ``--samples`` file: (scheduled s from the start, latency s, ok) or (setup s, first call s, ok)."""
    samples = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            a, b, ok = line.split()
            samples.append((float(a), float(b), int(ok)))
    return samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp_load", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the MCP endpoint, http://host:port/mcp")
    parser.add_argument("--samples", required=True, help="file to write every call's (or session's) timing to")
    parser.add_argument("--tool", default="echo", help="the tool called (it must echo its text)")
    parser.add_argument("--rate", type=float, default=200.0, help="tools/call per second, open loop")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds recorded")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the rate first, not recorded")
    parser.add_argument("--connections", type=int, default=8, help="warm keep-alive connections")
    parser.add_argument("--sessions", type=int, default=0, help="N: time N new sessions instead of calls")
    parser.add_argument("--seed", type=int, default=7, help="seed of the arrival times")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.connections < 1 or args.sessions < 0:
        parser.error("--rate must be positive, --connections at least 1, --sessions 0 or more")
    return args


def main(argv: list[str] | None = None) -> None:
    result = asyncio.run(Load(parse_args(argv)).run())
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
