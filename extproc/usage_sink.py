"""Where the decision service hands the usage records it makes (extproc.usage_log): an interface, so
that ext_proc knows no broker or database. The composition root (ccr_gateway) picks the
implementation (the ledger package's RabbitMQ publisher or local SQLite ledger); without one,
records are dropped (NullSink).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ccr.v1.usage_record import UsageRecord


class UsageSink(Protocol):
    def put(self, records: Sequence[UsageRecord]) -> None:
        """Take the records; never blocks the caller (the request path's event loop) and never
        raises: delivery, retries and spooling are the sink's own business from here on."""
        ...

    async def close(self) -> None:
        """Deliver or persist what is still held (called once, at shutdown)."""
        ...


class NullSink:
    """No ledger configured: records go nowhere."""

    def put(self, records: Sequence[UsageRecord]) -> None:
        pass

    async def close(self) -> None:
        pass


class MemorySink:
    """Keeps every record in a list, in arrival order: for tests, and for looking at what a
    worker would have sent. Unbounded: never in a gateway that runs for long."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.puts = 0  # how many put() calls brought them
        self.closed = False

    def put(self, records: Sequence[UsageRecord]) -> None:
        self.records.extend(records)
        self.puts += 1

    async def close(self) -> None:
        self.closed = True
