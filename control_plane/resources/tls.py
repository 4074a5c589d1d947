"""Envoy's half of the listener's TLS (SDS secrets, the downstream TLS context). Filled in by the
TLS work of the security issue."""

from __future__ import annotations

from typing import Any

from control_plane.policy.tls import TlsSpec


def listener_transport_socket(spec: TlsSpec | None) -> dict[str, Any] | None:
    """The filter chain's ``transport_socket``; None: plain HTTP."""
    return None
