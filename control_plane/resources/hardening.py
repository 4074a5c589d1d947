"""Envoy's half of the edge hardening knobs (HttpConnectionManager fields). Filled in by the edge
hardening work of the security issue."""

from __future__ import annotations

from typing import Any

from control_plane.policy.hardening import HardeningSpec


def connection_manager_fields(spec: HardeningSpec) -> dict[str, Any]:
    return {}
