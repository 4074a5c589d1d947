"""A small HTTP/1.1 load generator: ``python -m bench.loadgen URL --body FILE [--rate R]``.

Two modes:
- closed loop (``--rate 0``): ``--connections`` workers, each sending its next request as soon as
  the previous answer is complete (what wrk does); used only when neither wrk nor h2load exists.
- open loop (``--rate R``): requests start at Poisson arrival times with mean rate R, whether or not
  earlier ones have finished, on a pool of keep-alive connections (one request per connection at a
  time; a new connection is opened when all are busy). Latency is measured from the *scheduled*
  start, so time a request waits because the server (or this process) fell behind is counted
  (no coordinated omission). The bench uses it to compare latency at a fixed rate: wrk has no rate
  limit, and h2load's ``--rps`` fires all connections' requests at the same instants (bursts of
  ``-c`` requests), which would measure the burst, not the gateway.

The request bytes are built once; responses are read with Content-Length or chunked framing and
thrown away. Several ``--body`` files are sent in turn (a cached case's pool of requests), and
``--count-header NAME`` counts the answers per value of that header (``x-ccr-cache``: hit, miss,
bypass; "" for answers without it). Prints one JSON object on stdout (see ``result``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

PERCENTILES = (50, 75, 90, 99, 99.9)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes, counted: bytes = b"") -> tuple[int, bool, str | None]:
        """Send one request, read the whole response; (status, connection still usable, the
        ``counted`` header's value: None when not asked for, "" when the answer has none)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, keep = None, False, True
        found = "" if counted else None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = b"close" not in value.lower()
            elif name == counted:
                found = value.strip().decode(errors="replace")
        if chunked:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                await self.reader.readexactly(size + 2)
        elif length is not None:
            await self.reader.readexactly(length)
        else:  # read to close
            await self.reader.read()
            keep = False
        return status, keep, found

    def close(self) -> None:
        self.writer.close()


class _Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        self.requests = []
        for body_path in args.body:
            with open(body_path, "rb") as f:
                body = f.read()
            headers = [f"Host: {url.netloc}", f"Content-Length: {len(body)}", *args.header]
            head = f"POST {path} HTTP/1.1\r\n".encode() + b"".join(h.encode() + b"\r\n" for h in headers)
            self.requests.append(head + b"\r\n" + body)
        self.turn = 0  # the next request of the pool, shared by every connection
        self.counted = args.count_header.lower().encode()
        self.header_counts: Counter[str] = Counter()
        self.args = args
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.idle: list[_Connection] = []
        self.open = 0
        self.max_lag = 0.0

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.open += 1
        return _Connection(reader, writer)

    async def _one(self, conn: _Connection | None, started: float) -> _Connection | None:
        """One request; returns the connection if it can be reused."""
        request = self.requests[self.turn]
        self.turn = (self.turn + 1) % len(self.requests)
        try:
            if conn is None:
                conn = await self._connect()
            status, keep, value = await asyncio.wait_for(conn.exchange(request, self.counted), self.args.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            self.errors["read"] += 1
            return self._drop(conn)
        except TimeoutError:
            self.errors["timeout"] += 1
            return self._drop(conn)
        self.latencies.append(time.perf_counter() - started)
        if status >= 400:
            self.errors["status"] += 1
        if value is not None:
            self.header_counts[value] += 1
        return conn if keep else self._drop(conn)

    def _drop(self, conn: _Connection | None) -> None:  # always None: "return self._drop(conn)"
        if conn is not None:
            conn.close()
            self.open -= 1
        return None

    async def closed_loop(self, deadline: float) -> None:
        async def worker() -> None:
            conn: _Connection | None = None
            while time.perf_counter() < deadline:
                conn = await self._one(conn, time.perf_counter())
            self._drop(conn)

        await asyncio.gather(*(worker() for _ in range(self.args.connections)))

    async def open_loop(self, start: float, deadline: float) -> None:
        rng = random.Random(self.args.seed)
        for _ in range(self.args.connections):  # warm connections, as wrk has
            try:
                self.idle.append(await self._connect())
            except OSError:
                self.errors["connect"] += 1
        tasks: set[asyncio.Task[None]] = set()
        scheduled = start
        while True:
            scheduled += rng.expovariate(self.args.rate)
            if scheduled >= deadline:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lag = max(self.max_lag, -delay)
            task = asyncio.create_task(self._scheduled(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.timeout)
        for conn in self.idle:
            conn.close()

    async def _scheduled(self, scheduled: float) -> None:
        conn = self.idle.pop() if self.idle else None
        conn = await self._one(conn, scheduled)
        if conn is not None:
            self.idle.append(conn)

    async def run(self) -> dict[str, object]:
        start = time.perf_counter()
        deadline = start + self.args.duration
        if self.args.rate > 0:
            await self.open_loop(start, deadline)
        else:
            await self.closed_loop(deadline)
        elapsed = time.perf_counter() - start
        output = result(self.latencies, self.errors, elapsed, self.args, self.max_lag)
        if self.counted:
            output["header_counts"] = dict(self.header_counts)
        return output


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def result(latencies: list[float], errors: Counter[str], elapsed: float, args: argparse.Namespace, lag: float):
    ordered = sorted(latencies)
    return {
        "tool": "python-open-loop" if args.rate > 0 else "python",
        "requests": len(ordered) + errors["read"] + errors["timeout"],
        "duration_s": round(elapsed, 3),
        "errors": dict(errors),
        "latency_ms": {
            **{f"p{p:g}": round(percentile(ordered, p) * 1000, 3) for p in PERCENTILES},
            "max": round(ordered[-1] * 1000, 3) if ordered else 0.0,
            "mean": round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0,
        },
        "rate": args.rate,
        "max_schedule_lag_ms": round(lag * 1000, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument(
        "--body", action="append", required=True, help="file with a request body (POST); repeated: sent in turn"
    )
    parser.add_argument("--count-header", default="", metavar="NAME", help="count the answers per value of NAME")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s, open loop (0: closed loop)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrival times (open loop)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    return parser.parse_args(argv)


def run_and_print(work: Coroutine[Any, Any, Any]) -> None:
    """Run a load generator's coroutine and print its answer as one JSON line (what the bench reads)."""
    try:
        import uvloop  # optional: a cheaper event loop leaves more CPU to what is measured
    except ImportError:
        output = asyncio.run(work)
    else:
        output = uvloop.run(work)
    json.dump(output, sys.stdout)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> None:
    run_and_print(_Generator(parse_args(argv)).run())


if __name__ == "__main__":
    main()
