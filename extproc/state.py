"""What every request of one ext_proc worker reads, whichever transport brought it."""

from __future__ import annotations

from extproc.routing_table import RoutingTable
from extproc.tokens import SessionUsage


class GatewayState:
    """What every request reads: the routing table currently in force (None until the first policy)."""

    def __init__(self) -> None:
        self.table: RoutingTable | None = None
        self.sessions = SessionUsage()  # last real input tokens per session (long-context routing)
