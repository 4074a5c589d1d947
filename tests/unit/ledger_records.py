"""For the ledger's tests: a record with every field set, a hypothesis strategy of records, and a
throwaway PostgreSQL database (CCR_TEST_POSTGRES, default the local one with trust auth)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from hypothesis import strategies as st

from ccr.v1.usage_record import UsageRecord, time_of

T = TypeVar("T")
BASE_SECONDS = 1_796_600_000.0  # 2026-12-05T...Z: every test record is near this


def make_record(index: int = 0, **changes: object) -> UsageRecord:
    fields: dict[str, object] = dict(
        request_id=f"req-{index:06d}",
        time=time_of(BASE_SECONDS + index * 0.001),
        client_api="anthropic",
        endpoint="/v1/messages",
        requested_model="claude-sonnet-4-5",
        status=200,
        stream=True,
        input_tokens=1200,
        output_tokens=80,
        cache_read_tokens=10,
        cache_creation_tokens=5,
        cost_usd=0.0048,
        usage_source="provider",
        duration_ms=812.5,
        tenant="acme",
        key_id="key-1",
        scenario="default",
        provider="anthropic",
        model="claude-sonnet-4-5-20250929",
        attempts=1,
        error_type=None,
        ttfb_ms=120.25,
        session_id="s-1",
        cache=None,
        cost_avoided_usd=0.0,
    )
    return UsageRecord(**{**fields, **changes})


_names = st.sampled_from(["acme", "globex", "initech"]) | st.none()
_tokens = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def usage_records(draw: st.DrawFn, index: int | None = None) -> UsageRecord:
    """Any valid record within 60 days of BASE_SECONDS (so periods split), tenants and models
    from small sets (so groups repeat), costs with up to 9 decimals; a cache hit's cost avoided too."""
    seconds = BASE_SECONDS + draw(st.integers(min_value=-30 * 86_400_000_000, max_value=30 * 86_400_000_000)) / 1e6
    status = draw(st.sampled_from([200, 200, 200, 400, 429, 500, 529]))
    cache = draw(st.sampled_from(["hit", "miss"]) | st.none())
    costs = st.integers(min_value=0, max_value=50_000_000_000).map(lambda nanos: nanos / 1e9)
    return UsageRecord(
        request_id=draw(st.uuids()).hex if index is None else f"r{index}",
        time=time_of(seconds),
        client_api=draw(st.sampled_from(["anthropic", "openai"])),
        endpoint=draw(st.sampled_from(["/v1/messages", "/v1/chat/completions"])),
        requested_model=draw(st.sampled_from(["sonnet", "gpt-4o", "haiku"])),
        status=status,
        stream=draw(st.booleans()),
        input_tokens=draw(_tokens),
        output_tokens=draw(_tokens),
        cache_read_tokens=draw(_tokens),
        cache_creation_tokens=draw(_tokens),
        cost_usd=draw(costs),
        usage_source=draw(st.sampled_from(["provider", "estimated"])),
        duration_ms=draw(st.floats(min_value=0, max_value=1e6, allow_nan=False)),
        tenant=draw(_names),
        key_id=draw(st.sampled_from(["k1", "k2"]) | st.none()),
        scenario=draw(st.sampled_from(["default", "think", "background"]) | st.none()),
        provider=draw(st.sampled_from(["anthropic", "openai", "gemini"]) | st.none()),
        model=draw(st.sampled_from(["m1", "m2"]) | st.none()),
        attempts=draw(st.integers(min_value=0, max_value=3)),
        error_type=None if status < 400 and draw(st.booleans()) else draw(st.sampled_from(["overloaded", "api_error"])),
        ttfb_ms=draw(st.floats(min_value=0, max_value=1e5, allow_nan=False) | st.none()),
        session_id=draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=8) | st.none()),
        cache=cache,
        cost_avoided_usd=draw(costs) if cache == "hit" else 0.0,
    )


# --- a throwaway PostgreSQL database ----------------------------------------------------------

POSTGRES_URL = os.environ.get("CCR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _run_aside(coroutine: Coroutine[Any, Any, T]) -> T:
    """On a loop of its own, on another thread: a sync fixture must not touch the loop the async
    tests share."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


@contextmanager
def throwaway_postgres(prefix: str) -> Iterator[str]:
    """A new database ``<prefix>_<random>`` with the ledger's schema (ledger.pg_schema.migrate),
    dropped after; skips the test when PostgreSQL is not there."""
    import asyncpg

    from ledger import pg_schema

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        connection = await asyncio.wait_for(asyncpg.connect(f"{POSTGRES_URL}/postgres"), 5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def migrate() -> None:
        connection = await asyncpg.connect(f"{POSTGRES_URL}/{name}")
        try:
            await pg_schema.migrate(connection, use_timescaledb=False)
        finally:
            await connection.close()

    try:
        _run_aside(admin(f"CREATE DATABASE {name}"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    try:
        _run_aside(migrate())
        yield f"{POSTGRES_URL}/{name}"
    finally:
        _run_aside(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
