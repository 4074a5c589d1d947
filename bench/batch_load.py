"""The interactive load of ``ccr-gateway bench --batches``: ``python -m bench.batch_load URL --body FILE``.

The bench's open loop (``bench.loadgen``: Poisson arrivals at ``--rate``, a pool of warm keep-alive
connections, latency counted from the *scheduled* start, so no coordinated omission), with two
differences the batch benchmark needs:

- it runs until SIGTERM (or ``--duration``), because a batch's drain time is not known in advance;
- it keeps every request, ``scheduled start, latency, status`` on the monotonic clock (shared by
  all processes on Linux), in ``--samples``: the bench cuts the windows it reports (the drain, the
  upload) out of them and computes any percentile (p95 included, which loadgen does not print).

``--rate 0`` is a closed loop on ``--connections`` instead. Status 0 is a request that got no
answer (connection error or ``--timeout``). One JSON line on stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import LoadError
from bench.loadgen import _Connection, run_and_print

SAMPLES_HEADER = "# scheduled_s latency_s status"


class InteractiveLoad:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        with open(args.body, "rb") as f:
            body = f.read()
        headers = [f"Host: {url.netloc}", f"Content-Length: {len(body)}", *args.header]
        head = f"POST {url.path or '/'} HTTP/1.1\r\n".encode() + b"".join(h.encode() + b"\r\n" for h in headers)
        self.request = head + b"\r\n" + body
        self.args = args
        self.samples: list[tuple[float, float, int]] = []
        self.idle: list[_Connection] = []
        self.stop = asyncio.Event()
        self.max_lag = 0.0

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return _Connection(reader, writer)

    async def _one(self, conn: _Connection | None, scheduled: float) -> _Connection | None:
        status, keep = 0, False
        try:
            if conn is None:
                conn = await self._connect()
            status, keep, _ = await asyncio.wait_for(conn.exchange(self.request), self.args.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError, TimeoutError):
            pass
        self.samples.append((scheduled, time.monotonic() - scheduled, status))
        if keep:
            return conn
        if conn is not None:
            conn.close()
        return None

    async def _scheduled(self, scheduled: float) -> None:
        conn = await self._one(self.idle.pop() if self.idle else None, scheduled)
        if conn is not None:
            self.idle.append(conn)

    async def open_loop(self, deadline: float) -> None:
        rng = random.Random(self.args.seed)
        for _ in range(self.args.connections):
            try:
                self.idle.append(await self._connect())
            except OSError:
                self.samples.append((time.monotonic(), 0.0, 0))
        tasks: set[asyncio.Task[None]] = set()
        scheduled = time.monotonic()
        while not self.stop.is_set():
            scheduled += rng.expovariate(self.args.rate)
            if scheduled >= deadline:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                try:  # wake early on SIGTERM: no request is scheduled after it
                    await asyncio.wait_for(self.stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            else:
                self.max_lag = max(self.max_lag, -delay)
            task = asyncio.create_task(self._scheduled(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.timeout)
        for conn in self.idle:
            conn.close()

    async def closed_loop(self, deadline: float) -> None:
        async def worker() -> None:
            conn: _Connection | None = None
            while not self.stop.is_set() and time.monotonic() < deadline:
                conn = await self._one(conn, time.monotonic())
            if conn is not None:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(self.args.connections)))

    async def run(self) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        start = time.monotonic()
        deadline = start + self.args.duration
        if self.args.rate > 0:
            await self.open_loop(deadline)
        else:
            await self.closed_loop(deadline)
        with open(self.args.samples, "w") as out:
            out.write(SAMPLES_HEADER + "\n")
            out.writelines(f"{s:.6f} {lat:.6f} {status}\n" for s, lat, status in self.samples)
        return {
            "requests": len(self.samples),
            "started": round(start, 6),
            "duration_s": round(time.monotonic() - start, 3),
            "rate": self.args.rate,
            "max_schedule_lag_ms": round(self.max_lag * 1000, 3),
        }


def read_samples(path: str) -> list[tuple[float, float, int]]:
    """The ``--samples`` file: (scheduled start on the monotonic clock, latency in s, HTTP status)."""
    samples = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            start, latency, status = line.split()
            samples.append((float(start), float(latency), int(status)))
    return samples


class LoadProcess:
    """One ``python -m bench.batch_load`` process, started at once: then ``wait`` for it to end
    (``duration_s``) or ``stop`` it first; either way ``wait`` returns its samples."""

    def __init__(
        self,
        url: str,
        body: Path,
        headers: dict[str, str],
        rate: float,
        connections: int,
        duration_s: float,
        workdir: Path,
        name: str,
    ) -> None:
        self.samples, self.log = workdir / f"{name}.samples", workdir / f"{name}.log"
        argv = [sys.executable, "-m", "bench.batch_load", url, "--body", str(body), "--samples", str(self.samples)]
        argv += ["--rate", f"{rate:g}", "--duration", f"{duration_s:g}", "--connections", str(connections)]
        for header, value in headers.items():
            argv += ["-H", f"{header}: {value}"]
        # Importable from the work dir whether or not the package is installed.
        source_root = str(Path(__file__).resolve().parent.parent)
        child = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")]))}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=child, start_new_session=True
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> list[tuple[float, float, int]]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LoadError(f"the interactive load did not finish within {timeout:.0f} s") from None
        if code != 0:
            raise LoadError(f"the interactive load failed ({code}):\n{self.log.read_text(errors='replace')[-2000:]}")
        return read_samples(str(self.samples))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_load", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="file with the request body (POST)")
    parser.add_argument("--samples", required=True, help="file to write every request's timing to")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds at most (SIGTERM ends it sooner)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s, open loop (0: closed loop)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the arrival times (open loop)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_and_print(InteractiveLoad(parse_args(argv)).run())


if __name__ == "__main__":
    main()
