"""The response cache through the real gateway: two workers sharing the machine's Redis, reached
through a proxy the last test cuts, with keys of two tenants. The same deterministic request twice
reaches the provider once; the second answer (JSON or stream, in each client's format) is the first
one's, with `x-ccr-cache: hit` and the original usage; tenants never share an entry; Redis going
away costs no request. (Each test's conversation is new, so entries of earlier runs never match.)"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import openai
import pytest

from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until
from tests.e2e.test_local_ledger import _exported as exported_records
from tests.tcp_proxy import TcpProxy

ZERO = {"temperature": 0}  # deterministic (this SDK's create() has no temperature argument)


def _keys(path: Path) -> dict[str, str]:
    async def create() -> dict[str, str]:
        store = SqliteKeyStore(path)
        try:
            made = {}
            for tenant in ("acme", "beta"):
                presented, record = new_key(tenant, "cache-test", time.time())
                await store.create(record)
                made[tenant] = presented
            return made
        finally:
            await store.close()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def keys(workdir: Path) -> dict[str, str]:
    return _keys(workdir / "cache-keys.db")


@pytest.fixture(scope="module")
def redis_proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 6379) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def cached(workdir: Path, fake: FakeProvider, keys: dict[str, str], redis_proxy: TcpProxy) -> Iterator[Gateway]:
    policy = base_policy(free_port(), fake)
    policy["cache"] = {
        "ttl": "10m",
        "when": "deterministic",
        "redis": f"redis://127.0.0.1:{redis_proxy.port}/0",
        "redis_timeout": "1s",  # a busy test machine is not a Redis outage (the claims of 20 requests; 250 ms was not enough on a slow CI host)
    }
    sonnet = policy["providers"][0]["models"][0]
    sonnet["pricing"] = {"input": 3.0, "output": 15.0}  # the ledger prices what a hit avoided
    policy["auth"] = {"keys": {"sqlite": str(workdir / "cache-keys.db")}}  # keys optional: anonymous too
    gateway = Gateway.start(workdir, policy, name="cache", workers=2)
    yield gateway
    gateway.stop()


def unique(text: str = "") -> list[dict]:
    """A conversation no other test sends (the fake provider's answers depend on it)."""
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex}"}]


def provider_calls(fake: FakeProvider, marker: str) -> int:
    return sum(marker in json.dumps(request) for request in fake.requests())


def test_the_same_deterministic_request_twice_reaches_the_provider_once(cached, fake) -> None:
    client = anthropic.Anthropic(base_url=cached.url, api_key="sk-ant-anything", max_retries=0)
    messages = unique("json")
    first = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO
    )
    second = wait_until(
        lambda: (
            answer
            if (
                answer := client.messages.with_raw_response.create(
                    model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO
                )
            ).headers.get("x-ccr-cache")
            == "hit"
            else None
        ),
        10,
        "a cache hit (the first answer is stored asynchronously)",
        interval=0.2,
    )
    assert first.headers["x-ccr-cache"] == "miss"
    assert second.http_response.content == first.http_response.content  # byte for byte
    assert second.parse().usage.output_tokens == first.parse().usage.output_tokens > 0
    assert provider_calls(fake, messages[0]["content"]) == 1


def test_the_ledger_records_a_hit_as_nothing_spent_and_the_cost_it_avoided(cached, fake) -> None:
    client = anthropic.Anthropic(base_url=cached.url, api_key="sk-ant-anything", max_retries=0)
    messages = unique("ledger")

    def ask():
        return client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO
        )

    miss = ask()
    hit = wait_until(lambda: raw if (raw := ask()).headers["x-ccr-cache"] == "hit" else None, 10, "a hit", 0.2)
    ids = {miss.headers["request-id"], hit.headers["request-id"]}
    wait_until(lambda: ids <= set(exported_records()), 15, "both records in the ledger")
    records = exported_records()
    paid, saved = records[miss.headers["request-id"]], records[hit.headers["request-id"]]
    assert paid["cache"] == "miss" and paid["cost_usd"] > 0 and paid["output_tokens"] > 0
    assert saved["cache"] == "hit" and saved["attempts"] == 0
    assert (saved["input_tokens"], saved["output_tokens"], saved["cost_usd"]) == (0, 0, 0)
    assert saved["cost_avoided_usd"] == paid["cost_usd"]


def test_a_stream_is_stored_and_replayed_as_a_stream_and_as_json(cached, fake) -> None:
    client = anthropic.Anthropic(base_url=cached.url, api_key="sk-ant-anything", max_retries=0)
    messages = unique("stream")
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO) as live:
        original = live.get_final_message()

    def replayed() -> anthropic.types.Message | None:
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO
        ) as raw:
            hit = raw.response.headers.get("x-ccr-cache") == "hit"
            message = raw.get_final_message()  # the SDK's own accumulation of the replayed events
        return message if hit else None

    message = wait_until(replayed, 10, "a replayed stream", interval=0.2)
    assert message.content[0].text == original.content[0].text
    assert (message.stop_reason, message.usage.output_tokens) == (original.stop_reason, original.usage.output_tokens)
    as_json = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO)
    assert as_json.content[0].text == original.content[0].text  # the stream's answer, as JSON
    assert provider_calls(fake, messages[0]["content"]) == 1


def test_a_translated_answer_is_cached_in_the_clients_format(cached, fake) -> None:
    client = openai.OpenAI(base_url=f"{cached.url}/v1", api_key="sk-anything", max_retries=0)
    messages = unique("openai-to-anthropic")
    first = client.chat.completions.create(model="claude-sonnet-4-5", temperature=0, messages=messages)
    second = wait_until(
        lambda: (
            raw
            if (
                raw := client.chat.completions.with_raw_response.create(
                    model="claude-sonnet-4-5", temperature=0, messages=messages
                )
            ).headers.get("x-ccr-cache")
            == "hit"
            else None
        ),
        10,
        "a cache hit",
        interval=0.2,
    ).parse()
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.completion_tokens == first.usage.completion_tokens
    assert provider_calls(fake, messages[0]["content"]) == 1


def test_a_request_that_is_not_deterministic_bypasses_the_cache(cached, fake) -> None:
    client = anthropic.Anthropic(base_url=cached.url, api_key="sk-ant-anything", max_retries=0)
    messages = unique("warm")
    for _ in range(2):
        raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=16, messages=messages)
        assert raw.headers["x-ccr-cache"] == "bypass"
    assert provider_calls(fake, messages[0]["content"]) == 2
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=16,
        extra_body=ZERO,
        messages=messages,
        extra_headers={"cache-control": "no-store"},
    )
    assert raw.headers["x-ccr-cache"] == "bypass"


def test_two_tenants_never_share_an_entry(cached, fake, keys) -> None:
    messages = unique("tenants")
    for tenant in ("acme", "beta"):
        client = anthropic.Anthropic(base_url=cached.url, api_key=keys[tenant], max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=messages, extra_body=ZERO
        )
        assert raw.headers["x-ccr-cache"] == "miss", tenant
        time.sleep(0.5)  # the first tenant's answer is stored by now
    assert provider_calls(fake, messages[0]["content"]) == 2


def test_twenty_identical_requests_in_flight_reach_the_provider_once(cached, fake) -> None:
    """Across both workers: the first leads (the provider takes 1.5 s), the others wait for its
    answer in Redis and are answered from it, streams replayed as streams."""
    client = anthropic.Anthropic(base_url=cached.url, api_key="sk-ant-anything", max_retries=0)
    messages = unique("in flight")
    slow = {"x-fake-latency-ms": "1500"}

    def ask(index: int) -> tuple[str, str]:
        if index % 2:
            with client.messages.stream(
                model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO, extra_headers=slow
            ) as stream:
                return stream.response.headers["x-ccr-cache"], stream.get_final_message().content[0].text
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=messages, extra_body=ZERO, extra_headers=slow
        )
        return raw.headers["x-ccr-cache"], raw.parse().content[0].text

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert provider_calls(fake, messages[0]["content"]) == 1
    assert sorted(header for header, _ in answers) == ["hit"] * 19 + ["miss"]
    assert len({text for _, text in answers}) == 1


def test_requests_waiting_for_a_failed_one_go_upstream_at_once(cached, fake) -> None:
    """The leader's error is not stored, and its followers stop waiting when it comes back (not
    after the policy's 30 s dedup_wait)."""
    client = anthropic.Anthropic(base_url=cached.url, api_key="sk-ant-anything", max_retries=0)
    messages = unique("failed leader")

    def ask(headers: dict[str, str]) -> int:
        try:
            client.messages.create(
                model="claude-sonnet-4-5", max_tokens=16, messages=messages, extra_body=ZERO, extra_headers=headers
            )
        except anthropic.APIStatusError as error:
            return error.status_code
        return 200

    with ThreadPoolExecutor(6) as pool:
        leader = pool.submit(ask, {"x-fake-latency-ms": "1000", "x-fake-status": "400"})
        time.sleep(0.4)  # the leader is in flight
        started = time.monotonic()
        followers = list(pool.map(ask, [{}] * 5))
        waited = time.monotonic() - started
    assert leader.result() == 400 and followers == [200] * 5
    assert waited < 10


def test_redis_going_away_mid_load_fails_no_request(cached, fake, redis_proxy) -> None:
    messages = unique("redis")
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "temperature": 0, "messages": messages}).encode()
    headers = {"content-type": "application/json", "x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"}
    url = f"{cached.url}/v1/messages"
    assert http("POST", url, body, headers)[0] == 200
    wait_until(lambda: http("POST", url, body, headers)[1].get("x-ccr-cache") == "hit", 10, "a hit from Redis", 0.2)

    def ask(index: int) -> int:
        if index == 50:
            redis_proxy.cut(blackhole=True)  # mid-load: open connections reset, new ones hang
        return http("POST", url, body, headers, timeout=30)[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(ask, range(200)))
    redis_proxy.restore()
    assert statuses == [200] * 200
