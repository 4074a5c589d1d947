"""The batch worker's decisions, with a scripted gateway (no HTTP), a MemoryStore and the
in-process lanes, fed by the real feeder: what is sent where, what ends how, what is retried and
when, and what is acked without a send."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping

import orjson
import pytest

from batches.feeder import DeadLetterSweeper, Feeder, FeederConfig
from batches.lanes import BATCH, INTERACTIVE, DeadReason, ItemMessage, RetryPolicy
from batches.local_lanes import LocalLanes
from batches.model import Api, ItemState, new_batch
from batches.store import MemoryStore
from batches.worker import BATCH_ITEM_HEADER, Answer, BatchWorker, SendError, WorkerConfig

QUICK = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)


class ScriptedGateway:
    """Answers each POST with ``script(call number of this item, path, body)``; keeps every call."""

    def __init__(self, script: Callable[[int, str, dict], Answer] | None = None) -> None:
        self.calls: list[tuple[float, str, dict, Mapping[str, str]]] = []
        self.script = script or (lambda n, path, body: ok(body))

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        parsed = orjson.loads(body)
        key = headers[BATCH_ITEM_HEADER]
        n = sum(1 for _, _, _, h in self.calls if h[BATCH_ITEM_HEADER] == key)
        self.calls.append((time.monotonic(), path, parsed, dict(headers)))
        await asyncio.sleep(0)
        return self.script(n, path, parsed)

    def sends(self, key: str) -> list[float]:
        return [at for at, _, _, headers in self.calls if headers[BATCH_ITEM_HEADER] == key]


def ok(body: dict) -> Answer:
    text = body["messages"][0]["content"]
    message = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}]}
    return Answer(200, {"request-id": "req_1"}, orjson.dumps(message))


def error(status: int, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, dict(headers or {}), orjson.dumps({"type": "error", "error": {"type": f"http_{status}"}}))


async def add(store: MemoryStore, n: int, *, api: Api = Api.ANTHROPIC, endpoint: str = "/v1/messages"):
    requests = [
        (f"item-{i}", {"model": "gpt-4o", "messages": [{"role": "user", "content": f"item-{i}"}]}) for i in range(n)
    ]
    batch, items = new_batch(
        f"b-{api}-{n}", tenant="acme", api=api, endpoint=endpoint, requests=requests, now=time.time()
    )
    await store.create_batch(batch, items)
    return batch


def worker(store: MemoryStore, gateway: ScriptedGateway, feeder: Feeder, policy: RetryPolicy = QUICK) -> BatchWorker:
    return BatchWorker(
        store, gateway, lambda message, delay: feeder.put_back(message, delay=delay), WorkerConfig("sk-batch", policy)
    )


async def run_until_ended(store: MemoryStore, batch_id: str, gateway: ScriptedGateway, **kwargs) -> None:
    """Feeder, consumers and the dead-letter sweeper in process until the batch has ended."""
    lanes = LocalLanes()
    feeder = Feeder(store, lanes, FeederConfig(interval=0.01, skip_published=False))
    handler = worker(store, gateway, feeder, **kwargs)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(feeder.run(stop)),
        asyncio.create_task(lanes.consume([INTERACTIVE, BATCH], handler, stop, concurrency=4)),
        asyncio.create_task(lanes.consume_dead_letters(DeadLetterSweeper(store, feeder), stop)),
    ]
    try:
        async with asyncio.timeout(10):
            while (await store.get_batch(batch_id)).ended_at is None:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_every_item_is_sent_through_the_gateway_and_ends_succeeded_with_its_answer():
    store, gateway = MemoryStore(), ScriptedGateway()
    batch = await add(store, 12)
    await run_until_ended(store, batch.id, gateway)
    assert len(gateway.calls) == 12
    for _, path, body, headers in gateway.calls:
        assert path == "/v1/messages" and body["stream"] is False
        assert headers["x-api-key"] == "sk-batch" and headers["anthropic-version"] == "2023-06-01"
        assert headers[BATCH_ITEM_HEADER] == f"{batch.id}:{body['messages'][0]['content'].removeprefix('item-')}"
    async for item in store.results(batch.id):
        assert item.state is ItemState.SUCCEEDED and item.attempts == 1
        assert item.outcome.body["content"][0]["text"] == item.custom_id and item.outcome.request_id == "req_1"


async def test_an_openai_batch_goes_to_its_endpoint_with_a_bearer_key():
    store, gateway = MemoryStore(), ScriptedGateway()
    batch = await add(store, 2, api=Api.OPENAI, endpoint="/v1/chat/completions")
    await run_until_ended(store, batch.id, gateway)
    assert {path for _, path, _, _ in gateway.calls} == {"/v1/chat/completions"}
    assert {headers["authorization"] for *_, headers in gateway.calls} == {"Bearer sk-batch"}
    assert all("x-api-key" not in headers for *_, headers in gateway.calls)
    assert all(body["stream"] is False for _, _, body, _ in gateway.calls)


def test_an_embeddings_item_is_sent_without_a_stream_parameter():
    batch, items = new_batch(
        "b-emb", tenant="acme", api=Api.OPENAI, endpoint="/v1/embeddings",
        requests=[("e0", {"model": "text-embedding-3-small", "input": "hi"})], now=0.0,
    )  # fmt: skip
    handler = BatchWorker(MemoryStore(), ScriptedGateway(), lambda message, delay: None)
    path, body, _ = handler.request(batch, items[0], ItemMessage("acme", "b-emb", 0))
    assert path == "/v1/embeddings" and orjson.loads(body) == {"model": "text-embedding-3-small", "input": "hi"}


async def test_a_400_ends_the_item_errored_at_once_with_the_gateways_answer():
    store = MemoryStore()
    gateway = ScriptedGateway(
        lambda n, path, body: error(400) if body["messages"][0]["content"] == "item-1" else ok(body)
    )
    batch = await add(store, 3)
    await run_until_ended(store, batch.id, gateway)
    assert len(gateway.sends(f"{batch.id}:1")) == 1
    item = await store.get_item(batch.id, 1)
    assert item.state is ItemState.ERRORED and item.outcome.status_code == 400
    assert item.outcome.body["error"]["type"] == "http_400"
    assert (await store.counts(batch.id)).succeeded == 2


async def test_a_429_backs_off_as_long_as_the_gateway_asks_then_succeeds_without_using_the_budget():
    store = MemoryStore()
    gateway = ScriptedGateway(lambda n, path, body: error(429, {"retry-after-ms": "300"}) if n < 2 else ok(body))
    batch = await add(store, 1)
    await run_until_ended(store, batch.id, gateway, policy=RetryPolicy(max_attempts=1))
    sends = gateway.sends(f"{batch.id}:0")
    assert len(sends) == 3
    assert all(later - earlier >= 0.3 for earlier, later in itertools.pairwise(sends))
    item = await store.get_item(batch.id, 0)
    assert item.state is ItemState.SUCCEEDED and (item.attempts, item.throttles) == (3, 2)


async def test_5xx_and_connection_errors_are_retried_then_the_item_ends_errored_after_max_attempts():
    def script(n: int, path: str, body: dict) -> Answer:
        if n == 1:
            raise SendError("ClientConnectorError: connection refused")
        return error(503)

    store, gateway = MemoryStore(), ScriptedGateway(script)
    batch = await add(store, 1)
    await run_until_ended(store, batch.id, gateway)
    assert len(gateway.sends(f"{batch.id}:0")) == QUICK.max_attempts
    item = await store.get_item(batch.id, 0)
    assert item.state is ItemState.ERRORED and item.outcome.status_code == 503 and item.attempts == 3


async def test_a_canceled_batchs_message_is_acked_without_a_send():
    store, gateway = MemoryStore(), ScriptedGateway()
    batch = await add(store, 2)
    await store.request_cancel(batch.id, now=time.time())
    handler = worker(store, gateway, Feeder(store, LocalLanes()))
    assert await handler(ItemMessage("acme", batch.id, 0), False) is None
    assert gateway.calls == [] and (await store.get_item(batch.id, 0)).state is ItemState.CANCELED


async def test_a_redelivered_message_of_a_recorded_item_is_acked_without_a_second_send():
    store, gateway = MemoryStore(), ScriptedGateway()
    batch = await add(store, 1)
    handler = worker(store, gateway, Feeder(store, LocalLanes()))
    message = ItemMessage("acme", batch.id, 0)
    assert await handler(message, False) is None
    recorded = await store.get_item(batch.id, 0)
    assert await handler(message, True) is None
    assert len(gateway.calls) == 1 and await store.get_item(batch.id, 0) == recorded


async def test_a_redelivered_item_that_used_up_its_attempts_is_dead_lettered_not_sent():
    store, gateway = MemoryStore(), ScriptedGateway()
    batch = await add(store, 1)
    for _ in range(QUICK.max_attempts):  # its workers died on it after each send
        await store.send_item(batch.id, 0, now=time.time())
    handler = worker(store, gateway, Feeder(store, LocalLanes()))
    assert await handler(ItemMessage("acme", batch.id, 0), True) is DeadReason.TOO_MANY_ATTEMPTS
    assert gateway.calls == []


async def test_the_message_is_acked_only_after_the_result_is_stored():
    class FailingOnce(MemoryStore):
        failed = False

        async def record_item(self, batch_id, index, outcome, *, now):
            if not self.failed:
                self.failed = True
                raise ConnectionError("database away")
            return await super().record_item(batch_id, index, outcome, now=now)

    store, gateway = FailingOnce(), ScriptedGateway()
    batch = await add(store, 1)
    handler = worker(store, gateway, Feeder(store, LocalLanes()))
    with pytest.raises(ConnectionError):  # the lanes put the message back (nack)
        await handler(ItemMessage("acme", batch.id, 0), False)
    assert (await store.get_item(batch.id, 0)).state is ItemState.SENT
    assert await handler(ItemMessage("acme", batch.id, 0), True) is None  # the redelivery
    item = await store.get_item(batch.id, 0)
    assert item.state is ItemState.SUCCEEDED and len(gateway.calls) == 2


async def test_a_message_for_a_deleted_batch_is_dropped():
    store, gateway = MemoryStore(), ScriptedGateway()
    handler = worker(store, gateway, Feeder(store, LocalLanes()))
    assert await handler(ItemMessage("acme", "b-gone", 0), False) is None and gateway.calls == []
