"""Which providers' API key variables are unset in an environment.

ext_proc reads each provider's key from its own environment when a policy arrives
(extproc/routing_table.py); an unset or empty variable makes every request to that provider a 503.
Saying so before the first request (in `validate`, `doctor` and at `up`) is the point. A warning,
not an error: a policy may name keys that only the gateway's host has.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from control_plane.policy.model import GatewayPolicy
from control_plane.policy.yaml_check import Problem


def unset_key_warnings(policy: GatewayPolicy, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """One warning per provider whose ``api_key_env`` is unset or empty in ``environ`` (default:
    this process's environment). Never looks at a value beyond whether it is empty."""
    env = os.environ if environ is None else environ
    return [
        Problem(
            policy.source,
            0,
            0,
            f"providers[{index}].api_key_env",
            f"{provider.api_key_env} is not set in this environment: requests to provider "
            f"{provider.name!r} will be answered 503 until the gateway runs with it",
            warning=True,
        )
        for index, provider in enumerate(policy.providers)
        if provider.api_key_env and not env.get(provider.api_key_env)
    ]
