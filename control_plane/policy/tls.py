"""TLS on the listener in the policy (``listener.tls``): the certificate Envoy serves, and the
client certificates it asks for (mTLS). Filled in by the TLS work of the security issue."""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located


@dataclass(frozen=True, slots=True)
class TlsSpec:
    cert_file: str
    key_file: str


def parse_listener_tls(check: Checker, at: Located) -> TlsSpec | None:
    check.problem(at, "listener.tls", "is not supported yet")
    return None
