"""Checks `ccr-gateway up` makes before it starts anything.

A port in use is found here, named with what it is for, instead of 30 s later as a readiness
timeout or as a child's traceback.
"""

from __future__ import annotations

import argparse
import socket

DEFAULT_METRICS_PORT = 9464  # Prometheus' registry entry for its own client libraries' exporters
METRICS_HELP = (
    "Prometheus metrics of every Python process of the gateway (control plane, ext_proc workers, ledger "
    "writer, `up` itself), summed, at http://127.0.0.1:PORT/metrics (default %(default)s; 0: no metrics). "
    "Envoy's are at its admin port's /stats/prometheus"
)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_HANDED_OUT: set[int] = set()  # the ports free_port gave this process


def free_port() -> int:
    """A local port nothing listens on now, never one this process was given before: the kernel
    may offer a port it has just offered again, and a process that asks twice before binding the
    first (xDS and metrics in `up`; two gateways side by side in the bench) must get two."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free local port that was not handed out already")


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def first_busy_port(wanted: list[tuple[str, int, str]]) -> str | None:
    """``wanted``: (address, port, what it is for). The problem with the first port in use, else None."""
    seen: dict[int, str] = {}
    for address, port, what in wanted:
        if port in seen:
            return f"port {port} is wanted twice: for {seen[port]} and for {what}"
        seen[port] = what
        if not port_free(address, port):
            return f"{address}:{port} is already in use: it is {what}"
    return None
