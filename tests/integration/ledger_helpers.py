"""Records, counts and waits shared by the ledger's integration tests (and usable from the
gateway's acceptance tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
from prometheus_client import REGISTRY

from ccr.v1.usage_record import UsageRecord, time_of


def make_records(count: int, prefix: str = "req", *, start: float | None = None) -> list[UsageRecord]:
    start = time.time() if start is None else start
    return [
        UsageRecord(
            request_id=f"{prefix}-{index}",
            time=time_of(start + index / 1000),
            client_api="anthropic",
            endpoint="/v1/messages",
            requested_model="claude-sonnet",
            status=200,
            stream=index % 2 == 0,
            input_tokens=100 + index % 7,
            output_tokens=20,
            cache_read_tokens=index % 3,
            cache_creation_tokens=0,
            cost_usd=0.0015,
            usage_source="provider",
            duration_ms=120.5,
            tenant=f"tenant-{index % 3}",
            key_id="key-1",
            provider="fake",
            model="fake-model",
            attempts=1,
        )
        for index in range(count)
    ]


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


async def count_rows(database: asyncpg.Connection, prefix: str) -> int:
    return await database.fetchval("SELECT count(*) FROM usage_records WHERE request_id LIKE $1", f"{prefix}-%")


async def rollup_requests(database: asyncpg.Connection) -> int:
    return await database.fetchval("SELECT coalesce(sum(requests), 0) FROM usage_daily")
