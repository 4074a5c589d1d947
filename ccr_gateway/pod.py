"""`ccr-gateway pod`: two small helpers for running the gateway's pieces in containers.

- ``pod probe TARGET``: an exec probe. Envoy's admin (``/ready``) listens on 127.0.0.1 only, and
  each ext_proc worker answers ``GET /healthz`` on its decision hop's Unix socket; neither can be
  reached by a kubelet ``httpGet`` probe (it dials the pod IP) or by Docker's health check without
  curl in the image. Exit 0 on a 2xx answer, 1 otherwise, with one line saying what answered.
- ``pod metrics-relay``: Envoy's ``/stats/prometheus`` and a worker's metrics port listen on
  loopback (by design: the admin API shows the whole configuration). The relay serves each
  ``--route PATH=URL`` on a pod-reachable address, a scrape of PATH fetching that loopback page
  only; nothing else of the admin API is reachable through it. Prometheus keeps its two jobs
  (deploy/observability/prometheus: ``ccr-gateway`` on /metrics, ``ccr-envoy`` on
  /stats/prometheus) on one address, so both share the ``gateway`` label the alerts group by.
  Several URLs on one PATH are concatenated (they must not share metric families). A source that
  does not answer is left out of that scrape and counted in ``ccr_pod_metrics_source_up{source}``
  = 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ccr_gateway.probes import http_status, unix_http_status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def probe_status(target: str, path: str, timeout: float) -> int:
    """The HTTP status of a GET on ``target``: ``http://host:port/path`` or ``unix:SOCKET`` (then
    ``path`` is asked); 0 when nothing answered."""
    if target.startswith("unix:"):
        return unix_http_status(target[len("unix:") :], path, timeout)
    if target.startswith("http://"):
        return http_status(target, timeout)
    raise ValueError(f"a probe target is http://HOST:PORT/PATH or unix:SOCKET, not {target!r}")


def fetch(url: str, timeout: float) -> bytes | None:
    """The body of a 200 answer to ``GET url``, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def relay_page(sources: list[str], timeout: float) -> bytes:
    """Every source's exposition in order, then whether each answered."""
    parts: list[bytes] = []
    up: list[str] = []
    for url in sources:
        body = fetch(url, timeout)
        if body is not None:
            parts.append(body if body.endswith(b"\n") or not body else body + b"\n")
        up.append(f'ccr_pod_metrics_source_up{{source="{url}"}} {0 if body is None else 1}')
    parts.append(
        (
            "# HELP ccr_pod_metrics_source_up Whether the relay's loopback source answered this scrape\n"
            "# TYPE ccr_pod_metrics_source_up gauge\n" + "\n".join(up) + "\n"
        ).encode()
    )
    return b"".join(parts)


def parse_routes(routes: list[str]) -> dict[str, list[str]]:
    """``["/metrics=http://127.0.0.1:9465/metrics", ...]`` -> {path: [url, ...]} (ValueError if malformed)."""
    out: dict[str, list[str]] = {}
    for route in routes:
        path, sep, url = route.partition("=")
        if not sep or not path.startswith("/") or not url.startswith("http://"):
            raise ValueError(f"a route is /PATH=http://127.0.0.1:PORT/PATH, not {route!r}")
        out.setdefault(path, []).append(url)
    return out


def serve_relay(address: str, port: int, routes: dict[str, list[str]], timeout: float = 2.0) -> ThreadingHTTPServer:
    """Each route's ``GET PATH`` on ``address:port`` in a daemon thread; the server is returned to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            sources = routes.get(self.path.split("?", 1)[0])
            if sources is None:
                self.send_error(404, f"relayed: {', '.join(sorted(routes))}")
                return
            body = relay_page(sources, timeout)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per scrape would drown the container's log

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-relay", daemon=True).start()
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Helpers for running the gateway's pieces in containers (Kubernetes, Compose)."
    sub = parser.add_subparsers(dest="pod_command", required=True, metavar="{probe,metrics-relay}")
    probe = sub.add_parser("probe", help="GET a loopback URL or a Unix socket; exit 0 on a 2xx answer")
    probe.add_argument("target", help="http://127.0.0.1:9901/ready or unix:/run/ccr/hop-0.sock")
    probe.add_argument("--path", default="/healthz", help="the path asked on a unix: target (default /healthz)")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    probe.set_defaults(func=run_probe)
    relay = sub.add_parser("metrics-relay", help="serve loopback-only metrics pages on a pod-reachable address")
    relay.add_argument("--listen", default="0.0.0.0:9464", help="host:port to serve on (default 0.0.0.0:9464)")
    relay.add_argument(
        "--route",
        action="append",
        required=True,
        metavar="PATH=URL",
        help="serve the loopback page URL at PATH, e.g. /stats/prometheus=http://127.0.0.1:9901/stats/prometheus; "
        "repeat for more (several URLs on one PATH are concatenated)",
    )
    relay.set_defaults(func=run_relay)


def run_probe(args: argparse.Namespace) -> int:
    try:
        status = probe_status(args.target, args.path, args.timeout)
    except ValueError as exc:
        print(f"ccr-gateway pod probe: {exc}", file=sys.stderr)
        return 2
    where = args.target + (args.path if args.target.startswith("unix:") else "")
    print(f"{where}: {status or 'no answer'}")
    return 0 if 200 <= status < 300 else 1


def run_relay(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"ccr-gateway pod metrics-relay: --listen is host:port, not {args.listen!r}", file=sys.stderr)
        return 2
    try:
        routes = parse_routes(args.route)
    except ValueError as exc:
        print(f"ccr-gateway pod metrics-relay: {exc}", file=sys.stderr)
        return 2
    server = serve_relay(host, int(port), routes)
    print(f"relaying {', '.join(f'{p} <- {u}' for p, us in routes.items() for u in us)} on {args.listen}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ccr_gateway.pod probe ...``: the same commands without loading the whole CLI
    (a probe runs every few seconds: ~0.1 s of CPU this way, ~0.3 s through `ccr-gateway`, which
    loads the policy model first)."""
    parser = argparse.ArgumentParser(prog="python -m ccr_gateway.pod")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
