"""Issue 20's acceptance: 1,000-request batches through the gateway with the official SDKs, run by
`ccr-gateway batch-worker` processes on RabbitMQ and PostgreSQL, while a worker is SIGKILLed and
the broker is restarted; every result once, each the answer to its own request.

Everything is real but the provider (the fake, which echoes the prompt: each item's prompt is its
custom_id): a gateway that requires virtual keys (`up`, Envoy + ext_proc) with ``batches:`` naming
the batch API and the workers' key, `ccr-gateway batch-api` on a throwaway PostgreSQL database,
two workers on a RabbitMQ node of the test's own (the machine's broker is shared, so it is never
the one restarted). The Anthropic batch goes to gpt-4o (an OpenAI-format provider), the OpenAI
batch to claude-sonnet-4-5 (an Anthropic-format one): every item is translated both ways.

The workers send each item for the batch's owner (extproc.auth.batch_caller): its usage records
carry the owner's tenant and key and the batch's id, and the owner's revoked key stops its batch.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from batches.pg_store import PostgresBatchStore
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.batch_support import RabbitNode, throwaway_database
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until

ITEMS = 1000
WORKERS = 2
CONCURRENCY = 8
PREFIX = "ccr.acceptance."


class Setup:
    def __init__(self, directory: Path, gateway: Gateway, broker: RabbitNode, dsn: str, keys: dict) -> None:
        self.directory, self.gateway, self.broker, self.dsn, self.keys = directory, gateway, broker, dsn, keys
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "ccr_gateway.cli", "--log-level", "info", "batch-worker", "--postgres", self.dsn,
            "--amqp", self.broker.url, "--amqp-prefix", PREFIX, "--gateway", self.gateway.url,
            "--concurrency", str(CONCURRENCY),
        ]  # fmt: skip
        environment = {**os.environ, "CCR_BATCH_API_KEY": self.keys["worker"][0]}
        log = open(self.directory / "batch-worker.log", "ab")  # noqa: SIM115 (the child keeps it)
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        self.workers.append(worker)
        return worker

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [worker for worker in self.workers if worker.poll() is None]

    def stop_workers(self) -> None:
        for worker in self.running():
            worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)

    def worker_log(self) -> str:
        return (self.directory / "batch-worker.log").read_text(errors="replace")[-6000:]

    def claude(self, who: str = "acme") -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=self.keys[who][0], max_retries=0, timeout=120)

    def gpt(self, who: str = "acme") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=self.keys[who][0], max_retries=0, timeout=120)

    def counts(self, batch_id: str):
        return self._read(lambda store: store.counts(batch_id))

    def has_ended(self, batch_id: str) -> bool:
        batch = self._read(lambda store: store.get_batch(batch_id))
        return batch is not None and batch.ended_at is not None

    def _read(self, read: Callable[[PostgresBatchStore], Any]) -> Any:
        async def run():
            store = PostgresBatchStore(self.dsn)
            try:
                return await read(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def drive(self, batch_id: str, chaos: bool, timeout: float = 240) -> list[str]:
        """Wait for the batch to end; with ``chaos``, SIGKILL a worker (and start another) once a
        quarter of the items finished, and restart the broker at half. Returns what was done."""
        done: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts(batch_id)
            finished = counts.succeeded + counts.errored + counts.canceled + counts.expired
            # The batch ends in a write of its own just after its last item's (batches/pg_store.py):
            # wait for that too, or a retrieve right after may still say in_progress / canceling.
            if counts.queued == 0 and counts.sent == 0 and self.has_ended(batch_id):
                return done
            assert time.monotonic() < deadline, f"batch not ended in {timeout} s: {counts}\n{self.worker_log()}"
            assert self.running(), f"every worker exited:\n{self.worker_log()}"
            if chaos and not done and finished >= ITEMS // 4:
                victim = self.running()[0]
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                self.start_worker()
                done.append(f"worker killed at {finished}")
            elif chaos and len(done) == 1 and finished >= ITEMS // 2:
                self.broker.restart()
                done.append(f"broker restarted at {finished}")
            time.sleep(0.1)


async def _create_keys(path: Path) -> dict[str, tuple[str, str]]:
    """tenant -> (the presented key, its id): two tenants and the workers' key."""
    store = SqliteKeyStore(path)
    made: dict[str, tuple[str, str]] = {}
    try:
        for who, tenant in (("acme", "acme"), ("globex", "globex"), ("worker", "ops")):
            presented, record = new_key(tenant, who, time.time())
            await store.create(record)
            made[who] = (presented, record.key.key_id)
    finally:
        await store.close()
    return made


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("batch-acceptance")
    broker = RabbitNode.start_new(directory / "rabbitmq")
    api = gateway = None
    try:
        with throwaway_database("ccr_batch_acceptance") as dsn:
            keys = asyncio.run(_create_keys(directory / "keys.db"))
            api_port = free_port()
            api = subprocess.Popen(
                [sys.executable, "-m", "ccr_gateway", "batch-api", "--listen", f"127.0.0.1:{api_port}",
                 "--postgres", dsn, "--require-tenant"],
                stdout=open(directory / "batch-api.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_until(lambda: _healthy(api_port), 30, "ccr-gateway batch-api")
            policy = base_policy(free_port(), fake)
            policy["auth"] = {"required": True, "keys": {"sqlite": str(directory / "keys.db")}}
            policy["batches"] = {"api": f"127.0.0.1:{api_port}", "workers": [keys["worker"][1]]}
            gateway = Gateway.start(directory, policy, name="batch-acceptance", args=["--no-batch-services"])
            ready = Setup(directory, gateway, broker, dsn, keys)
            for _ in range(WORKERS):
                ready.start_worker()
            try:
                yield ready
            finally:
                ready.stop_workers()
                gateway.stop()
                api.send_signal(signal.SIGTERM)
                api.wait(15)
    finally:
        if api is not None and api.poll() is None:
            api.kill()
        broker.stop()


def _healthy(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def _upstream_requests(gateway: Gateway, provider: str) -> int:
    clusters = [name for name in gateway.dynamic_clusters() if provider in name and "chain" not in name]
    assert len(clusters) == 1, clusters
    return gateway.envoy_stat(f"cluster.{clusters[0]}.upstream_rq_total")


def _ledger_records(batch_id: str) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "1h"]
    lines = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    return [record for record in map(json.loads, lines) if record.get("batch_id") == batch_id]


def _prompts(n: int) -> list[str]:
    return [f"item-{i:04d}" for i in range(n)]


def _assert_each_answered_once(answers: dict[str, str], expected: list[str]) -> None:
    assert sorted(answers) == expected  # every custom_id once (a dict: a repeat would overwrite, so count too)
    wrong = {custom_id: text for custom_id, text in answers.items() if not text.endswith(custom_id)}
    assert not wrong, list(wrong.items())[:5]  # each result is the answer to its own request


def _chaos_report(what: str, done: list[str], sent: int, seconds: float) -> None:
    print(f"\n{what}: {ITEMS} items in {seconds:.1f} s ({ITEMS / seconds:.0f}/s); {'; '.join(done)}; "
          f"provider requests {sent} ({sent - ITEMS} sent again after the kill/restart)")  # fmt: skip


def test_an_anthropic_sdk_batch_of_1000_for_an_openai_model_survives_a_worker_kill_and_a_broker_restart(
    setup: Setup, fake: FakeProvider
):
    fake.configure(latency_ms=30)  # a few seconds of work: time to kill a worker and restart the broker
    try:
        claude = setup.claude()
        before = _upstream_requests(setup.gateway, "fake-openai")
        started = time.monotonic()
        batch = claude.messages.batches.create(
            requests=[
                {"custom_id": prompt, "params": {"model": "gpt-4o", "max_tokens": 32,
                                                 "messages": [{"role": "user", "content": prompt}]}}
                for prompt in _prompts(ITEMS)
            ]
        )  # fmt: skip
        done = setup.drive(batch.id, chaos=True)
        seconds = time.monotonic() - started
    finally:
        fake.configure(latency_ms=0)
    assert len(done) == 2, f"the batch ended before the chaos: {done}"

    ended = claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.succeeded == ITEMS, ended.request_counts
    answers: dict[str, str] = {}
    results = list(claude.messages.batches.results(batch.id))
    assert len(results) == ITEMS
    for result in results:
        assert result.result.type == "succeeded", result
        answers[result.custom_id] = result.result.message.content[0].text
    _assert_each_answered_once(answers, _prompts(ITEMS))

    sent = _upstream_requests(setup.gateway, "fake-openai") - before
    _chaos_report("anthropic batch", done, sent, seconds)
    # Items in the killed worker's hands, and those whose ack the broker restart lost before their
    # result was stored, reach the provider again; their first stored result stands. The restart
    # hands every worker's unacked messages (its lanes' prefetch windows, 20 + 5, beside the items
    # in flight) out again, and a redelivered item still marked sent counts as a lost send: at
    # most that many repeats per worker, for the restart and for the kill.
    assert ITEMS <= sent <= ITEMS + 2 * WORKERS * (20 + 5 + CONCURRENCY), sent

    # Sent for the batch's owner: its tenant and key, under its limits, recorded with the batch.
    records: list[dict[str, Any]] = []

    def recorded() -> bool:
        records[:] = _ledger_records(batch.id)
        # Every item's answered record, not just as many records: the killed worker's in-flight
        # requests are recorded too (status 0), and the last answered ones may still be on the way.
        return sum(r["status"] == 200 for r in records) >= ITEMS

    wait_until(recorded, 60, "the batch's usage records in the ledger", interval=1)
    assert {(r["tenant"], r["key_id"]) for r in records} == {("acme", setup.keys["acme"][1])}
    assert {r["provider"] for r in records} == {"fake-openai"}
    # 0: a request whose client went away before its answer (the killed worker's, in flight)
    assert {r["status"] for r in records} <= {0, 200} and sum(r["status"] == 200 for r in records) >= ITEMS


def test_an_openai_sdk_batch_of_1000_for_an_anthropic_model_survives_a_worker_kill_and_a_broker_restart(
    setup: Setup, fake: FakeProvider
):
    gpt = setup.gpt("globex")
    lines = [
        orjson.dumps({"custom_id": prompt, "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "claude-sonnet-4-5", "max_tokens": 32,
                               "messages": [{"role": "user", "content": prompt}]}})
        for prompt in _prompts(ITEMS)
    ]  # fmt: skip
    fake.configure(latency_ms=30)
    try:
        started = time.monotonic()
        upload = gpt.files.create(file=("input.jsonl", io.BytesIO(b"\n".join(lines))), purpose="batch")
        batch = gpt.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = setup.drive(batch.id, chaos=True)
        seconds = time.monotonic() - started
    finally:
        fake.configure(latency_ms=0)
    assert len(done) == 2, f"the batch ended before the chaos: {done}"

    ended = gpt.batches.retrieve(batch.id)
    assert ended.status == "completed", ended
    assert (ended.request_counts.completed, ended.request_counts.failed) == (ITEMS, 0)
    assert ended.error_file_id is None or gpt.files.content(ended.error_file_id).text == ""
    answers: dict[str, str] = {}
    output = gpt.files.content(ended.output_file_id).text.splitlines()
    assert len(output) == ITEMS
    for line in map(json.loads, output):
        assert line["error"] is None and line["response"]["status_code"] == 200, line
        answers[line["custom_id"]] = line["response"]["body"]["choices"][0]["message"]["content"]
    _assert_each_answered_once(answers, _prompts(ITEMS))
    _chaos_report("openai batch", done, ITEMS, seconds)

    records: list[dict[str, Any]] = []

    def recorded() -> bool:
        records[:] = _ledger_records(batch.id)
        return len(records) >= ITEMS

    wait_until(recorded, 60, "the batch's usage records in the ledger", interval=1)
    assert {(r["tenant"], r["key_id"], r["client_api"]) for r in records} == {
        ("globex", setup.keys["globex"][1], "openai")
    }


def test_a_batch_canceled_midway_sends_nothing_more_and_ends_with_its_unsent_items_canceled(
    setup: Setup, fake: FakeProvider
):
    claude = setup.claude()
    fake.configure(latency_ms=200)  # 16 in flight at 200 ms: 80 a second, the cancel lands early
    try:
        batch = claude.messages.batches.create(requests=_anthropic_requests(400))
        wait_until(lambda: setup.counts(batch.id).succeeded >= 20, 60, "the first results", interval=0.1)
        before = setup.counts(batch.id).succeeded
        canceling = claude.messages.batches.cancel(batch.id)
        assert canceling.processing_status in ("canceling", "ended")
        setup.drive(batch.id, chaos=False, timeout=60)
    finally:
        fake.configure(latency_ms=0)
    ended = claude.messages.batches.retrieve(batch.id)
    counts = ended.request_counts
    assert ended.processing_status == "ended" and counts.canceled > 0, counts
    assert counts.succeeded + counts.canceled == 400 and counts.errored == counts.expired == 0, counts
    # Only the items in flight when the cancel came finished (the workers' hands, and what ended
    # during the cancel's own round trip, at about 80 a second); the queued ones were never sent.
    assert counts.succeeded <= before + WORKERS * CONCURRENCY + 16, (before, counts)
    kinds = [result.result.type for result in claude.messages.batches.results(batch.id)]
    assert kinds.count("canceled") == counts.canceled and kinds.count("succeeded") == counts.succeeded


def test_a_batch_whose_owner_key_is_revoked_ends_errored_not_sent_for_anyone_else(
    setup: Setup, fake: FakeProvider, tmp_path: Path
):
    claude = setup.claude("globex")
    fake.configure(latency_ms=500)  # 16 in flight at 500 ms: 32 a second, 6 s in all; the cache sees a revoke in 0.5 s
    try:
        batch = claude.messages.batches.create(requests=_anthropic_requests(200))
        wait_until(lambda: setup.counts(batch.id).succeeded >= 5, 60, "the first results", interval=0.1)
        _revoke(setup.directory / "keys.db", setup.keys["globex"][1])
        setup.drive(batch.id, chaos=False, timeout=90)
    finally:
        fake.configure(latency_ms=0)
        _recreate_globex(setup)
    counts = setup.counts(batch.id)
    assert counts.errored > 0 and counts.succeeded + counts.errored == 200, counts
    errors = [r.result.error for r in _results(claude, batch.id, setup) if r.result.type == "errored"]
    assert errors and all(e.error.type == "authentication_error" for e in errors), errors[:3]
    assert all("created this batch" in e.error.message for e in errors), errors[:3]


def test_an_interactive_lane_batch_overtakes_a_running_batch_lane_batch(setup: Setup, fake: FakeProvider):
    claude = setup.claude()
    fake.configure(latency_ms=200)  # 16 in flight at 200 ms: 80 a second, 5 s for the big batch
    try:
        big = claude.messages.batches.create(requests=_anthropic_requests(400))
        wait_until(lambda: setup.counts(big.id).succeeded >= 40, 60, "the big batch under way", interval=0.1)
        urgent = claude.messages.batches.with_raw_response.create(
            requests=_anthropic_requests(20), extra_headers={"x-batch-lane": "interactive"}
        ).parse()
        wait_until(lambda: _unfinished(setup, urgent.id) == 0, 60, "the interactive batch", interval=0.05)
        left = _unfinished(setup, big.id)
        setup.drive(big.id, chaos=False)
    finally:
        fake.configure(latency_ms=0)
    # 20 interactive items went ahead of the batch lane's window (200 published messages and more
    # queued): the big batch was still far from done when they were.
    assert left >= 150, left
    assert setup.counts(urgent.id).succeeded == 20 and setup.counts(big.id).succeeded == 400


def test_a_small_tenant_is_not_starved_by_another_tenants_huge_batch(setup: Setup, fake: FakeProvider):
    fake.configure(latency_ms=100)  # 160 a second: the huge batch takes about 4 s
    try:
        huge = setup.claude().messages.batches.create(requests=_anthropic_requests(600))
        wait_until(lambda: setup.counts(huge.id).succeeded >= 20, 60, "the huge batch under way", interval=0.1)
        small = setup.claude("globex").messages.batches.create(requests=_anthropic_requests(20))
        wait_until(lambda: _unfinished(setup, small.id) == 0, 60, "the small batch", interval=0.05)
        left = _unfinished(setup, huge.id)
        setup.drive(huge.id, chaos=False)
    finally:
        fake.configure(latency_ms=0)
    # The small tenant waits for what the batch lane already holds (a window of the huge batch),
    # then takes turns with the huge one: it is done while most of the huge batch is still to run.
    assert left >= 150, left
    assert setup.counts(small.id).succeeded == 20 and setup.counts(huge.id).succeeded == 600


def _unfinished(setup: Setup, batch_id: str) -> int:
    counts = setup.counts(batch_id)
    return counts.queued + counts.sent


def _anthropic_requests(n: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": prompt, "params": {"model": "gpt-4o", "max_tokens": 16,
                                         "messages": [{"role": "user", "content": prompt}]}}
        for prompt in _prompts(n)
    ]  # fmt: skip


def _revoke(path: Path, key_id: str) -> None:
    async def revoke() -> None:
        store = SqliteKeyStore(path)
        try:
            await store.revoke(key_id)
        finally:
            await store.close()

    asyncio.run(revoke())


def _recreate_globex(setup: Setup) -> None:
    """A new globex key for the tests after this one (its old one is revoked)."""

    async def create() -> None:
        store = SqliteKeyStore(setup.directory / "keys.db")
        try:
            presented, record = new_key("globex", "globex", time.time())
            await store.create(record)
            setup.keys["globex"] = (presented, record.key.key_id)
        finally:
            await store.close()

    asyncio.run(create())


def _results(claude: anthropic.Anthropic, batch_id: str, setup: Setup) -> list:
    # The owner's key is revoked, so the owner cannot read the results any more: the operator can
    # (the store). Read through a fresh globex key of the same tenant instead.
    wait_until(_key_loaded(setup), 30, "the new globex key in the gateway's key cache", interval=0.5)
    return list(setup.claude("globex").messages.batches.results(batch_id))


def _key_loaded(setup: Setup) -> Callable[[], bool]:
    """Every ext_proc worker has the new key (each its own cache, polled every 0.5 s): ten answers
    in a row, which Envoy spreads over the workers."""

    def check() -> bool:
        try:
            for _ in range(10):
                setup.claude("globex").messages.batches.list(limit=1)
        except anthropic.AuthenticationError:
            return False
        return True

    return check
