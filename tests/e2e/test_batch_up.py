"""`ccr-gateway up` with ``batches: {api: 127.0.0.1:PORT}`` runs the batch API and a batch worker
itself (local SQLite store, in-process lanes): an Anthropic batch for an OpenAI-format model,
created with the official SDK against the gateway, is translated item by item through the gateway's
own listener and ends with every result, each once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, wait_until

ITEMS = 20


@pytest.fixture(scope="module")
def gateway(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    policy = {**base_policy(free_port(), fake), "batches": {"api": f"127.0.0.1:{free_port()}"}}
    started = Gateway.start(workdir, policy, name="batches-up", workers=1)
    yield started
    started.stop()
    assert started.process.returncode == 0, started.log()[-3000:]


def test_up_serves_a_batch_end_to_end(gateway: Gateway) -> None:
    assert "batch API on 127.0.0.1:" in gateway.log()
    client = anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0)
    requests = [
        {
            "custom_id": f"item-{index}",
            "params": {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": f"n{index}"}]},
        }
        for index in range(ITEMS)
    ]
    batch = client.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress"

    def ended() -> bool:
        return client.messages.batches.retrieve(batch.id).processing_status == "ended"

    started = time.monotonic()
    wait_until(ended, 60, "the batch to end")
    done = client.messages.batches.retrieve(batch.id)
    assert done.request_counts.succeeded == ITEMS, done.request_counts
    results = list(client.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == [f"item-{index}" for index in range(ITEMS)]
    assert {r.result.type for r in results} == {"succeeded"}
    assert all(r.result.message.type == "message" for r in results)  # translated back from OpenAI's format
    print(f"\n{ITEMS} batch items through `up`'s own worker in {time.monotonic() - started:.2f} s")
