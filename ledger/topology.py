"""The RabbitMQ objects the ledger uses, declared the same way by the publisher, the writer and the
``dlq`` commands (a queue declared twice with different arguments is an error, so there is one
place that says what they are).

  exchange (direct, durable) --routing key = queue name--> queue (quorum, durable)
      queue --rejected / unreadable--> dead-letter exchange (fanout) --> dead-letter queue

The queue is a quorum queue: replicated, and a message is confirmed to the publisher only once a
majority stored it. Dead-lettering is at-least-once (a quorum feature that needs overflow
reject-publish), so an unreadable batch is not lost on its way to the dead-letter queue either.
The dead-letter queue is a classic durable queue: ``dlq list`` reads it by taking messages and
giving them back, and a quorum queue would count each look toward its delivery limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

REASON_HEADER = "x-ccr-dead-letter-reason"


@dataclass(frozen=True, slots=True)
class QueueNames:
    queue: str = "ccr.usage"
    exchange: str = "ccr.usage"
    dead_letter_exchange: str = "ccr.usage.dlx"
    dead_letter_queue: str = "ccr.usage.dlq"

    @classmethod
    def for_queue(cls, queue: str) -> QueueNames:
        """Every name derived from the queue's (tests and side-by-side deployments use their own)."""
        return cls(queue=queue, exchange=queue, dead_letter_exchange=f"{queue}.dlx", dead_letter_queue=f"{queue}.dlq")


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_exchange: AbstractExchange
    dead_letter_queue: AbstractQueue


async def declare(channel: AbstractChannel, names: QueueNames) -> Topology:
    """Declare (idempotently) the exchanges, queues and bindings."""
    dead_letter_exchange = await channel.declare_exchange(
        names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        names.dead_letter_queue, durable=True, arguments={"x-queue-type": "classic"}
    )
    await dead_letter_queue.bind(dead_letter_exchange, routing_key="")
    exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    queue = await channel.declare_queue(
        names.queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": names.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    await queue.bind(exchange, routing_key=names.queue)
    return Topology(exchange, queue, dead_letter_exchange, dead_letter_queue)
