"""Where policies come from: a local file (the embedded default) or Consul KV.

Both implement ``PolicySource``; the control plane knows nothing else of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from control_plane.policy import GatewayPolicy, PolicyError


class PolicySource(Protocol):
    async def load_once(self) -> GatewayPolicy | None:
        """One read: the policy when it changed since the last read, None when not; raises
        PolicyError when it is invalid (the first read must succeed: there is no last good one)."""
        ...

    async def watch(self, on_policy: Callable[[GatewayPolicy], None], on_error: Callable[[PolicyError], None]) -> None:
        """Run until cancelled, calling ``on_policy`` for each valid change, ``on_error`` otherwise."""
        ...

    async def close(self) -> None: ...
