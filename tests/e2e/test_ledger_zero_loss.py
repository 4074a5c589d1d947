"""The ledger loses nothing and counts nothing twice: mixed requests through the real gateway while
RabbitMQ, then PostgreSQL, are unreachable (each behind a TCP proxy that cuts every connection and
refuses new ones), then `usage export` lists every request the clients got an answer for, once.

10,000 requests by default over ~140 s: the broker down for 60 s, then the database for 60 s.
CCR_TEST_LEDGER_REQUESTS / CCR_TEST_OUTAGE_SECONDS shrink it for a quick local run.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from tests.e2e.gateway import wait_until
from tests.e2e.supervision import start_up
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

AMQP = ("127.0.0.1", 5672)
POSTGRES = ("127.0.0.1", 5432)
REQUESTS = int(os.environ.get("CCR_TEST_LEDGER_REQUESTS", "10000"))
OUTAGE = float(os.environ.get("CCR_TEST_OUTAGE_SECONDS", "60"))
THREADS = 4
# Paced so that the load outlasts both outages, one after the other.
RATE = REQUESTS / (2 * OUTAGE + 15)

MESSAGES = [{"role": "user", "content": "What does a ledger need to be exact?"}]
# (path, body, extra headers): stream and not, passthrough and translated, a fallback chain's
# primary failing (the chain answers from its fallback), an OpenAI client.
KINDS = [
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": MESSAGES}, {}),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": MESSAGES, "stream": True}, {}),
    ("/v1/messages", {"model": "gpt-4o", "max_tokens": 64, "messages": MESSAGES}, {}),
    ("/v1/messages", {"model": "gpt-4o", "max_tokens": 64, "messages": MESSAGES, "stream": True}, {}),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}, {}),
    (
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        {},
    ),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": MESSAGES}, {"x-fake-status": "529"}),
]


@dataclass
class Answers:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0


def client(port: int, first: int, answers: Answers, stop_at: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    interval = THREADS / RATE
    next_send = time.monotonic()
    for number in range(first, stop_at, THREADS):
        next_send += interval
        path, body, headers = KINDS[number % len(KINDS)]
        try:
            connection.request("POST", path, json.dumps(body), {"content-type": "application/json", **headers})
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with answers.lock:
                answers.unanswered += 1
            continue
        request_id = response.getheader("request-id")
        with answers.lock:
            answers.ids.append(request_id or "")
            answers.statuses[request_id or ""] = response.status
            answers.kinds[request_id or ""] = number % len(KINDS)
        time.sleep(max(0.0, next_send - time.monotonic()))


async def _admin(database: str, *statements: str) -> None:
    connection = await asyncpg.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", database="postgres")
    try:
        for statement in statements:
            await connection.execute(statement.format(database=database))
    finally:
        await connection.close()


async def _delete_queues(queue: str) -> None:
    connection = await aio_pika.connect(f"amqp://guest:guest@{AMQP[0]}:{AMQP[1]}/")
    async with connection:
        channel = await connection.channel()
        for name in (queue, f"{queue}.dlq"):
            await channel.queue_delete(name)
        for name in (queue, f"{queue}.dlx"):
            await channel.exchange_delete(name)


def _export(dsn: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "2h", "--postgres", dsn],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_every_answered_request_is_recorded_once_through_a_broker_and_a_database_outage(tmp_path: Path):
    database = f"ccr_zero_loss_{uuid.uuid4().hex[:8]}"
    queue = f"ccr.test.zero_loss.{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(database, 'CREATE DATABASE "{database}"'))
    broker, postgres = TcpProxy(*AMQP).start(), TcpProxy(*POSTGRES).start()
    storage = (
        "\nstorage:\n"
        f'  postgres: {{dsn: "postgresql://postgres@127.0.0.1:{postgres.port}/{database}"}}\n'
        f'  rabbitmq: {{url: "amqp://guest:guest@127.0.0.1:{broker.port}/", queue: "{queue}"}}\n'
        f"  spool: {{dir: {tmp_path / 'spool'}}}\n"
    )
    direct_dsn = f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{database}"
    up = start_up(tmp_path, append=storage, priced=True)
    try:
        up.wait_ready()
        answers = Answers()
        threads = [
            threading.Thread(target=client, args=(up.listener, first, answers, REQUESTS), daemon=True)
            for first in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(5)
        broker.cut()
        time.sleep(OUTAGE)
        broker.restore()
        time.sleep(5)
        postgres.cut()
        time.sleep(OUTAGE)
        postgres.restore()
        for thread in threads:
            thread.join(timeout=300)
        assert answers.unanswered == 0
        assert len(answers.ids) == REQUESTS

        async def stored() -> int:
            connection = await asyncpg.connect(direct_dsn)
            try:
                return await connection.fetchval("SELECT count(*) FROM usage_records")
            finally:
                await connection.close()

        wait_until(lambda: asyncio.run(stored()) >= REQUESTS, 120, "every record in PostgreSQL", interval=1)
        records = _export(direct_dsn)
    finally:
        up.stop()
        broker.stop()
        postgres.stop()
    try:
        exported = [record["request_id"] for record in records]
        assert len(exported) == len(set(exported)), "a request recorded twice"
        assert sorted(exported) == sorted(answers.ids), "records and answered requests differ"
        by_id = {record["request_id"]: record for record in records}
        for request_id, status in answers.statuses.items():
            record = by_id[request_id]
            assert record["status"] == status
            if status == 200:
                assert record["usage_source"] == "provider" and record["input_tokens"] > 0, record
                assert record["cost_usd"] > 0, record
        streamed = [by_id[i] for i, kind in answers.kinds.items() if KINDS[kind][1].get("stream")]
        translated = [by_id[i] for i, kind in answers.kinds.items() if kind in (2, 3)]
        assert all(r["cost_usd"] > 0 for r in streamed + translated if r["status"] == 200)
    finally:
        asyncio.run(_delete_queues(queue))
        asyncio.run(_admin(database, 'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
