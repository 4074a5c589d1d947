"""`ccr-gateway pod probe` and `pod metrics-relay`: the two helpers the containers run."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ccr_gateway import pod
from tests.deploy.commands import parse_ccr, parse_pod


@contextlib.contextmanager
def http_server(routes: dict[str, tuple[int, bytes]]) -> Iterator[str]:
    """A loopback HTTP server answering each path with (status, body); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path, (404, b"no"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def unix_server(path: Path, status_line: bytes) -> Iterator[None]:
    """A Unix socket answering one request per connection with ``status_line``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(status_line + b"\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        listener.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_probe_of_a_ready_url_exits_0_and_says_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    with http_server({"/ready": (200, b"LIVE")}) as base:
        assert pod.run_probe(parse_pod(["probe", f"{base}/ready"])) == 0
    assert capsys.readouterr().out.strip() == f"{base}/ready: 200"


def test_probe_of_an_unready_or_silent_url_exits_1() -> None:
    with http_server({"/ready": (503, b"PRE_INITIALIZING")}) as base:
        assert pod.run_probe(parse_pod(["probe", f"{base}/ready"])) == 1
    assert pod.run_probe(parse_pod(["probe", f"http://127.0.0.1:{free_port()}/ready", "--timeout", "0.5"])) == 1


def test_probe_asks_healthz_on_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "hop-0.sock"
    with unix_server(socket_path, b"HTTP/1.1 200 OK"):
        assert pod.run_probe(parse_pod(["probe", f"unix:{socket_path}"])) == 0
    os.unlink(socket_path)
    with unix_server(socket_path, b"HTTP/1.1 503 Service Unavailable"):
        assert pod.run_probe(parse_pod(["probe", f"unix:{socket_path}"])) == 1
    assert pod.run_probe(parse_pod(["probe", f"unix:{tmp_path / 'absent.sock'}"])) == 1


def test_probe_refuses_a_target_it_cannot_ask() -> None:
    assert pod.run_probe(parse_pod(["probe", "https://example.com/ready"])) == 2


def test_relay_serves_each_route_from_its_loopback_page_and_nothing_else() -> None:
    routes = {"/metrics": (200, b"ccr_x 1\n"), "/stats/prometheus": (200, b"envoy_y 2"), "/config_dump": (200, b"x")}
    with http_server(routes) as base:
        relayed = pod.parse_routes([f"/metrics={base}/metrics", f"/stats/prometheus={base}/stats/prometheus"])
        port = free_port()
        server = pod.serve_relay("127.0.0.1", port, relayed)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                metrics = response.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5) as response:
                stats = response.read().decode()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/config_dump", timeout=5)
        finally:
            server.shutdown()
            server.server_close()
    assert metrics.startswith("ccr_x 1\n") and "envoy_y" not in metrics
    assert f'ccr_pod_metrics_source_up{{source="{base}/metrics"}} 1' in metrics
    assert stats.startswith("envoy_y 2\n")  # a page without a final newline gets one
    assert refused.value.code == 404


def test_relay_leaves_out_a_source_that_does_not_answer_and_says_so() -> None:
    down = f"http://127.0.0.1:{free_port()}/metrics"
    page = pod.relay_page([down], timeout=0.5).decode()
    assert f'ccr_pod_metrics_source_up{{source="{down}"}} 0' in page
    assert page.startswith("# HELP ccr_pod_metrics_source_up")


@pytest.mark.parametrize("route", ["metrics=http://127.0.0.1:1/m", "/metrics", "/m=https://x/metrics"])
def test_relay_refuses_a_malformed_route(route: str) -> None:
    with pytest.raises(ValueError):
        pod.parse_routes([route])


def test_pod_is_a_ccr_gateway_command() -> None:
    args = parse_ccr(["pod", "probe", "http://127.0.0.1:9901/ready"])
    assert args.func is pod.run_probe
