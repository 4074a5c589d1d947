"""The fault-injecting proxy the ledger's outage tests use (tests/tcp_proxy.py)."""

from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from tests.tcp_proxy import TcpProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo_port():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def is_cut(sock: socket.socket) -> bool:
    """A reset, or an orderly close: either way nothing came back."""
    try:
        sock.sendall(b"b")
        return sock.recv(10) == b""
    except OSError:
        return True


def connect_is_cut(port: int) -> bool:
    """A new connection to a cut proxy: reset as it is accepted (the reset can even beat the end
    of the handshake on a busy machine, failing connect itself), or cut right after."""
    try:
        fresh = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionResetError:
        return True
    with fresh:
        return is_cut(fresh)


def test_bytes_pass_until_cut_and_again_after_restore(echo_port):
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert roundtrip(proxy.port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
        held.sendall(b"a")
        assert held.recv(10) == b"a"
        proxy.cut()
        assert is_cut(held)  # the open connection ...
        held.close()
        assert connect_is_cut(proxy.port)  # ... and new ones
        proxy.restore()
        assert roundtrip(proxy.port) == b"ping"


def test_a_blackhole_accepts_and_answers_nothing(echo_port):
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        proxy.cut(blackhole=True)
        with pytest.raises(TimeoutError), socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3) as sock:
            sock.sendall(b"hello")
            sock.recv(10)
