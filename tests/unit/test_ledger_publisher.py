"""The publisher with no broker to talk to: put() stays cheap and never raises, held batches go to
the spool, a full spool drops and counts. (With a broker: tests/integration/test_ledger_flow.py.)"""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import REGISTRY

from ccr.v1.usage_record import UsageRecord, decode_batch, time_of
from ledger.publisher import PublisherConfig, RabbitPublisher
from ledger.spool import Spool


def records(count: int, prefix: str = "r") -> list[UsageRecord]:
    return [
        UsageRecord(
            request_id=f"{prefix}{index}",
            time=time_of(1_700_000_000 + index),
            client_api="anthropic",
            endpoint="/v1/messages",
            requested_model="m",
            status=200,
            stream=False,
            input_tokens=1,
            output_tokens=1,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            cost_usd=0.0,
            usage_source="provider",
            duration_ms=1.0,
        )
        for index in range(count)
    ]


def closed_port_url() -> str:
    """Nothing listens there: every connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:${{TEST_MQ_PASSWORD}}@127.0.0.1:{port}/"


def config(tmp_path, **overrides) -> PublisherConfig:
    base = {"connect_timeout": 0.5, "reconnect_min": 0.05, "reconnect_max": 0.2, "close_timeout": 2.0}
    return PublisherConfig(url=closed_port_url(), spool_dir=str(tmp_path / "spool"), **{**base, **overrides})


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_without_a_broker_every_batch_ends_up_in_the_spool_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQ_PASSWORD", "not-logged")
    publisher = RabbitPublisher(config(tmp_path))
    publisher.start()
    made = records(100)
    for index in range(0, 100, 10):
        publisher.put(made[index : index + 10])
        await asyncio.sleep(0.01)
    await publisher.close()
    spool = Spool(tmp_path / "spool")
    stored = [record for entry in spool.peek(100) for record in decode_batch(entry.payload)]
    assert stored == made


async def test_put_only_queues_in_memory_and_returns_at_once(tmp_path, monkeypatch):
    """The request path's share of the ledger: put() appends the batch to memory and wakes the
    sender; nothing is encoded, sent or written until the loop runs. (How cheap that is, the
    benchmark shows: a timed assert here failed on a slow CI host at 25.7 against 20 µs.)"""
    monkeypatch.setenv("TEST_MQ_PASSWORD", "x")
    publisher = RabbitPublisher(config(tmp_path))
    publisher.start()
    batch = records(1)
    count = 5_000
    for _ in range(count):
        publisher.put(batch)
    queued = publisher.held_batches  # before any await: the sender has not run
    await publisher.close()
    assert queued == count


async def test_put_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQ_PASSWORD", "x")
    publisher = RabbitPublisher(config(tmp_path))
    publisher.start()
    publisher.put([])
    publisher.put(None)  # type: ignore[arg-type]  # a caller's bug must not become a request's error
    publisher.put(["not a record"])  # type: ignore[list-item]
    await publisher.close()
    publisher.put(records(1))  # after close: dropped and counted, not raised


async def test_a_full_spool_drops_and_counts_what_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQ_PASSWORD", "x")
    dropped_before = metric("ccr_ledger_records_dropped_total")
    spooled_before = metric("ccr_ledger_records_spooled_total")
    publisher = RabbitPublisher(config(tmp_path, spool_max_bytes=20_000))
    publisher.start()
    for index in range(50):
        publisher.put(records(5, prefix=f"b{index}-"))  # ~2.3 KB a batch: about 8 fit
        await asyncio.sleep(0.005)
    await publisher.close()
    spooled = metric("ccr_ledger_records_spooled_total") - spooled_before
    dropped = metric("ccr_ledger_records_dropped_total") - dropped_before
    assert spooled + dropped == 250
    assert 0 < spooled < 250
    assert Spool(tmp_path / "spool").records == spooled


async def test_a_missing_password_variable_is_logged_by_name_and_the_batches_are_kept(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TEST_MQ_PASSWORD", raising=False)
    publisher = RabbitPublisher(config(tmp_path))
    publisher.start()
    publisher.put(records(3))
    await asyncio.sleep(0.2)
    await publisher.close()
    assert "TEST_MQ_PASSWORD is not set" in caplog.text
    assert Spool(tmp_path / "spool").records == 3
