"""Limits and budgets that hold across gateways: two gateways (each its own Envoy, control plane and
workers) share one key store and one Redis (the machine's, 127.0.0.1:6379; each test's keys are new,
so their counters are too). A 10 rpm key gets exactly 10 answers whichever gateway it calls, then a
429 whose retry-after is the real wait; 50 concurrent requests against a budget that covers 10 get
10 answers; a key's parallel slots come back when its answers are done (settled from Envoy's usage log)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http

REDIS_URL = "redis://127.0.0.1:6379/0"
OUTPUT_PRICE = 100_000.0  # USD per million output tokens: 0.1 USD a token, so a request's worst case is exact
MAX_TOKENS = 8
WORST_CASE_USD = MAX_TOKENS * OUTPUT_PRICE / 1e6  # input is free in this policy


@pytest.fixture(scope="module")
def keys_db(workdir: Path) -> Path:
    return workdir / "shared-keys.db"


@pytest.fixture(scope="module")
def gateways(workdir: Path, fake: FakeProvider, keys_db: Path) -> Iterator[tuple[Gateway, Gateway]]:
    started: list[Gateway] = []
    try:
        for name, workers in (("limits-a", 2), ("limits-b", 1)):
            policy = base_policy(free_port(), fake)
            model = policy["providers"][0]["models"][0]
            model["pricing"] = {"input": 0.0, "output": OUTPUT_PRICE}
            policy["auth"] = {
                "required": True,
                "keys": {"sqlite": str(keys_db)},
                "limits": {"redis": REDIS_URL, "gateways": 2},
            }
            started.append(Gateway.start(workdir, policy, name=name, workers=workers))
        yield started[0], started[1]
    finally:
        for gateway in started:
            gateway.stop()


def create_key(keys_db: Path, **limits: object) -> str:
    async def create() -> str:
        store = SqliteKeyStore(keys_db)
        try:
            presented, record = new_key("acme", "limits-test", time.time(), **limits)
            await store.create(record)
            return presented
        finally:
            await store.close()

    presented = asyncio.run(create())
    time.sleep(1.5)  # every worker's key cache sees a new key within 1 s
    return presented


def ask(gateway: Gateway, key: str, latency_ms: int = 0) -> tuple[int, dict[str, str], dict]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
    if latency_ms:
        headers["x-fake-latency-ms"] = str(latency_ms)
    status, answer_headers, raw = http("POST", f"{gateway.url}/v1/messages", json.dumps(body).encode(), headers, 30)
    return status, {k.lower(): v for k, v in answer_headers.items()}, json.loads(raw or b"{}")


def test_a_ten_rpm_key_gets_exactly_ten_answers_across_two_gateways(gateways, keys_db) -> None:
    first, second = gateways
    key = create_key(keys_db, rpm=10)
    remaining = []
    for index in range(10):
        status, headers, body = ask((first, second)[index % 2], key)
        assert status == 200, body
        remaining.append(int(headers["anthropic-ratelimit-requests-remaining"]))
    assert remaining == list(range(9, -1, -1))  # one count, whichever gateway answered
    assert all(h == "10" for h in [ask(first, key)[1]["anthropic-ratelimit-requests-limit"]])
    refused = [ask(gateway, key) for gateway in (first, second)]
    for status, headers, body in refused:
        assert status == 429 and body["error"]["type"] == "rate_limit_error", body
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    # GCRA: one request every 6 s; the wait the gateway names is the real one.
    retry_after = int(refused[-1][1]["retry-after"])
    assert 1 <= retry_after <= 6
    time.sleep(retry_after)
    assert ask(second, key)[0] == 200


def test_fifty_concurrent_requests_against_a_budget_for_ten_get_ten_answers(gateways, keys_db) -> None:
    key = create_key(keys_db, budget_usd=10.5 * WORST_CASE_USD, budget_period="month")
    with ThreadPoolExecutor(50) as pool:
        # Slow answers: every request reserves before any is settled.
        answers = list(pool.map(lambda i: ask(gateways[i % 2], key, latency_ms=1500), range(50)))
    statuses = [status for status, _, _ in answers]
    assert 9 <= statuses.count(200) <= 10, statuses
    assert statuses.count(429) == 50 - statuses.count(200), statuses
    refusal = next(body for status, _, body in answers if status == 429)
    assert "budget" in refusal["error"]["message"]


def test_parallel_slots_come_back_when_the_answers_are_done(gateways, keys_db) -> None:
    first, second = gateways
    key = create_key(keys_db, max_parallel=2)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: ask((first, second)[i % 2], key, latency_ms=1500), range(6)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    # Released by the usage log's settlement (within its flush interval), not by the lease's expiry.
    deadline = time.monotonic() + 10
    while ask(second, key)[0] != 200:
        assert time.monotonic() < deadline, "the parallel slots never came back"
        time.sleep(0.2)
