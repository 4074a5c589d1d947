"""The dead-letter queue: what the writer could not store, and the way back.

``list_dead_letters`` takes every message without acking and closes the channel, which returns
them all to the queue unchanged (a classic queue: looking does not count as a delivery).
``replay`` moves messages back to the ledger's exchange, each acked on the dead-letter queue only
after the broker confirmed its copy on the main one; at most the number that were there when it
started, so a batch that fails again is not replayed in a loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import aio_pika
import orjson

from ledger.env import expand_env
from ledger.topology import REASON_HEADER, QueueNames, declare

REPLAYED_HEADER = "x-ccr-replayed"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    records: int | None  # None: not even a list of records could be read
    size: int
    replayed: int  # times it was replayed before


def describe(body: bytes, headers: dict) -> DeadLetter:
    """What a dead message is, for ``dlq list`` (pure)."""
    reason = headers.get(REASON_HEADER)
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    if not reason:
        deaths = headers.get("x-death") or []
        first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
        reason = f"{first.get('reason', 'unknown')} (by the broker; no reason from the writer)"
    records: int | None = None
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
        listed = orjson.loads(body).get("records")
        records = len(listed) if isinstance(listed, list) else None
    replayed = headers.get(REPLAYED_HEADER, 0)
    return DeadLetter(str(reason), records, len(body), replayed if isinstance(replayed, int) else 0)


async def list_dead_letters(url: str, names: QueueNames, limit: int = 1000) -> tuple[list[DeadLetter], int]:
    """(the first ``limit`` dead messages, how many there are)."""
    connection = await aio_pika.connect(expand_env(url), timeout=10)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel, names)
        total = topology.dead_letter_queue.declaration_result.message_count or 0
        seen = []
        for _ in range(min(total, limit)):
            message = await topology.dead_letter_queue.get(no_ack=False, fail=False)
            if message is None:
                break
            seen.append(describe(message.body, dict(message.headers or {})))
        # closing the channel returns every unacked message to the queue, in order
    return seen, total


async def replay(url: str, names: QueueNames, limit: int | None = None) -> int:
    """Move dead messages back to the ledger queue; returns how many."""
    connection = await aio_pika.connect(expand_env(url), timeout=10)
    moved = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = await declare(channel, names)
        total = topology.dead_letter_queue.declaration_result.message_count or 0
        for _ in range(total if limit is None else min(total, limit)):
            message = await topology.dead_letter_queue.get(no_ack=False, fail=False)
            if message is None:
                break
            headers = {k: v for k, v in (message.headers or {}).items() if k not in (REASON_HEADER, "x-death")}
            previous = headers.get(REPLAYED_HEADER, 0)
            headers[REPLAYED_HEADER] = (previous if isinstance(previous, int) else 0) + 1
            await topology.exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                names.queue,
                mandatory=True,
                timeout=10,
            )
            await message.ack()  # only now: a crash before this leaves a copy in each queue, never none
            moved += 1
    return moved
