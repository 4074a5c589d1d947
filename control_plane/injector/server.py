"""The webhook's HTTPS endpoint: POST /mutate (pods labelled for injection), POST /mutate-namespace
(pods of a labelled namespace), GET /healthz. Moves bytes to patch.decide and back, nothing else.

The standard library's threading HTTP server: the API server calls a webhook a few times per pod
created, so a thread per connection is plenty, and it parses HTTP/1.1 (keep-alive included) for
us. TLS is mandatory for an admission webhook; the certificate and key are read again when they
change on disk (cert-manager renews them in the mounted Secret), checked at most once a second
when a connection arrives, so a renewal needs no restart.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from control_plane.injector.config import InjectorConfig
from control_plane.injector.patch import Decision, decide

log = logging.getLogger("ccr.control_plane.injector")

MAX_BODY = 8 * 1024 * 1024  # a pod is at most ~1.5 MB in etcd; a review carries it once or twice
PATHS = {"/mutate": False, "/mutate-namespace": True}  # path -> namespace_opted_in
_LOG_LEVEL = {"injected": logging.INFO, "skipped": logging.DEBUG, "refused": logging.WARNING}


class TlsFiles:
    """A server SSLContext for a certificate and key on disk, rebuilt when either file changes
    (stat: mtime, size, inode). A pair that does not load (a key written before its certificate)
    leaves the previous context in place until the files settle."""

    def __init__(self, cert: str, key: str, check_every: float = 1.0, clock: Callable[[], float] | None = None) -> None:
        import time

        self.cert, self.key = cert, key
        self.check_every = check_every
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._seen = self._stat()
        self._context = self._load()  # the first load's errors are the caller's: bad files, no start
        self._checked = self._clock()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stats = (os.stat(path) for path in (self.cert, self.key))
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(self.cert, self.key)
        return context

    def context(self) -> ssl.SSLContext:
        with self._lock:
            now = self._clock()
            if now - self._checked >= self.check_every:
                self._checked = now
                self._reload_if_changed()
            return self._context

    def _reload_if_changed(self) -> None:
        try:
            seen = self._stat()
            if seen == self._seen:
                return
            self._context = self._load()
        except (OSError, ssl.SSLError) as exc:
            log.warning("webhook certificate not reloaded, serving the previous one: %s", exc)
            return
        self._seen = seen
        log.info("webhook certificate reloaded from %s", self.cert)


class InjectorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: InjectorConfig, tls: TlsFiles | None) -> None:
        self.config = config
        self.tls = tls  # None only in tests of the HTTP side: the API server calls webhooks over HTTPS
        self.counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        conn, peer = self.socket.accept()
        if self.tls is None:
            return conn, peer
        # The handshake runs in the connection's own thread (_Handler.setup), not in the accept loop.
        return self.tls.context().wrap_socket(conn, server_side=True, do_handshake_on_connect=False), peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def count(self, outcome: str) -> None:
        with self._counts_lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1


class _Handler(BaseHTTPRequestHandler):
    server: InjectorServer
    protocol_version = "HTTP/1.1"  # keep-alive: the API server reuses its connections
    timeout = 15  # seconds a connection may sit idle or half-sent

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in PATHS:
            self._send(404, b"not found: POST /mutate or /mutate-namespace\n", "text/plain")
            return
        length = self.headers.get("content-length", "")
        if not length.isdigit():
            self._send(411, b"a Content-Length is required\n", "text/plain")
            return
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._send(413, b"the review is too large\n", "text/plain")
            return
        decision = decide(self.rfile.read(int(length)), self.server.config, namespace_opted_in=PATHS[path])
        self._log_decision(decision)
        self._send(decision.http_status, decision.encode(), "application/json")

    def _log_decision(self, decision: Decision) -> None:
        self.server.count(decision.outcome)
        log.log(_LOG_LEVEL.get(decision.outcome, logging.WARNING), "%s: %s", decision.outcome, decision.detail)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (all addresses); ValueError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {listen!r}: host:port or :port")
    return host.strip("[]") or "0.0.0.0", int(port)


def start(listen: str, config: InjectorConfig, tls: TlsFiles | None) -> tuple[InjectorServer, threading.Thread]:
    """The server, serving in a thread of its own; ``server.shutdown()`` stops it."""
    server = InjectorServer(parse_listen(listen), config, tls)
    thread = threading.Thread(target=server.serve_forever, name="injector", daemon=True)
    thread.start()
    return server, thread
