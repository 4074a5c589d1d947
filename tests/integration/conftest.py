"""Tests against the real services of this machine: RabbitMQ (amqp://guest:guest@127.0.0.1:5672/)
and PostgreSQL (postgresql://postgres@127.0.0.1:5432, trust auth). Override with CCR_TEST_AMQP and
CCR_TEST_POSTGRES. Each session gets its own database (created in ``postgres``, dropped after) and
each test its own queue names, so runs never see each other's rows or messages. Skipped, with the
reason, when a service is not there.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aio_pika
import asyncpg
import pytest

from ledger.topology import QueueNames

AMQP_URL = os.environ.get("CCR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("CCR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
T = TypeVar("T")


def run_aside(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own, on another thread: sync fixtures must
    not touch the event loop the async tests share."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def _reachable(coroutine_factory: Callable[[], Coroutine[Any, Any, None]]) -> str | None:
    async def probe() -> None:
        await asyncio.wait_for(coroutine_factory(), 5)

    try:
        run_aside(probe())
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


@pytest.fixture(scope="session")
def amqp_url() -> str:
    async def connect() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        await connection.close()

    error = _reachable(connect)
    if error:
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {error}")
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh database for the session: ccr_ledger_test_<random>."""
    name = f"ccr_ledger_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    error = _reachable(lambda: admin(f"CREATE DATABASE {name}"))
    if error:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {error}")
    yield f"{POSTGRES_URL}/{name}"
    run_aside(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def queue_names(amqp_url: str) -> Iterator[QueueNames]:
    """Queue, exchange and dead-letter names of this test alone, deleted after it."""
    names = QueueNames.for_queue(f"ccr.test.{uuid.uuid4().hex[:10]}")
    yield names

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for queue in (names.queue, names.dead_letter_queue):
                await channel.queue_delete(queue)
            for exchange in (names.exchange, names.dead_letter_exchange):
                await channel.exchange_delete(exchange)

    run_aside(delete())


@pytest.fixture
async def database(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session's database, the ledger tables emptied for this test."""
    from ledger import pg_schema

    connection = await asyncpg.connect(postgres_dsn)
    await pg_schema.migrate(connection)
    await connection.execute("TRUNCATE usage_records, usage_daily")
    yield connection
    await connection.close()
