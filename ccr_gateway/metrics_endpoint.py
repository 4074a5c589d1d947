"""One Prometheus scrape target per gateway: `up`'s ``/metrics``, every Python process summed.

`up` points each child it starts (control plane, ext_proc workers, ledger writer) at one directory
with ``PROMETHEUS_MULTIPROC_DIR``: prometheus_client then keeps each process's samples in
memory-mapped files there instead of its own memory, and this endpoint reads them all at scrape
time (``MultiProcessCollector``). Counters and histograms are summed over processes, a restarted
worker's counts included (a counter never goes back when a worker dies); gauges say how they
combine where they are defined (``multiprocess_mode``: ``livesum``, ``livemax``...), and a dead
process's live gauges are dropped (``process_dead``).

`up`'s own metrics (its children's restarts) are in memory (``SUPERVISOR_REGISTRY``): `up` imports
prometheus_client before it sets the variable, and serving them from their own registry keeps the
families the children also define (imported by `up` for its checks) from appearing twice.

Envoy's metrics stay on its admin port (``/stats/prometheus``): a second scrape target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_REGISTRY = CollectorRegistry(auto_describe=True)


def prepare(run_dir: str) -> str:
    """An empty directory for the children's metric files (a previous run's would be summed in)."""
    directory = os.path.join(run_dir, "metrics")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    return directory


def process_dead(directory: str, pid: int | None) -> None:
    """Drop a dead child's live gauges (its counters stay: they are part of the totals)."""
    if pid is not None:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, directory)


def exposition(directory: str) -> bytes:
    """Every child's metrics, then `up`'s own."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry) + generate_latest(SUPERVISOR_REGISTRY)


def serve(port: int, directory: str, address: str = "127.0.0.1") -> ThreadingHTTPServer:
    """``GET /metrics`` on ``address:port`` in a daemon thread; the server is returned to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "the metrics are at /metrics")
                return
            body = exposition(directory)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per scrape would drown `up`'s log

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
