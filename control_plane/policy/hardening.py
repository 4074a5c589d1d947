"""Edge hardening knobs in the policy (``listener.hardening``). Filled in by the edge hardening work
of the security issue."""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located


@dataclass(frozen=True, slots=True)
class HardeningSpec:
    pass


def parse_hardening(check: Checker, at: Located) -> HardeningSpec:
    check.mapping(at, "listener.hardening", ())
    return HardeningSpec()
