"""Readiness probes of `ccr-gateway up`, none of them through the listener's decision path.

A request through the listener would be a client request to the gateway: it lands in the access log,
in ``ccr_rejected_requests_total`` (a 503 until the policy arrives) and in the usage sessions. So
readiness is the sum of what each part says about itself: Envoy's admin ``/ready``, each worker's
``GET /healthz`` on its decision hop socket (200 once it holds a policy), and a TCP connect to the
listener.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def http_status(url: str, timeout: float = 1.0) -> int:
    """The HTTP status of a GET (0 when nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def unix_http_status(path: str, target: str = "/healthz", timeout: float = 1.0) -> int:
    """The HTTP status of ``GET target`` over the Unix socket ``path`` (0 when nothing answered)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(f"GET {target} HTTP/1.1\r\nhost: ccr-up\r\nconnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                chunk = conn.recv(256)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def tcp_accepting(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
