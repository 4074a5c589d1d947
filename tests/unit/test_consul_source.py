"""control_plane.consul.kv: the policy in Consul KV, against the local Consul double."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import consul
import pytest
from prometheus_client import REGISTRY

from control_plane.consul.client import Backoff, LoopSettings, TokenBucket, next_index, parse_address, parse_duration
from control_plane.consul.kv import AssembledPolicyError, ConsulPolicySource, assemble, normalize_prefix
from control_plane.policy import GatewayPolicy, PolicyError
from tests.consul_double import ConsulDouble, running_double
from tests.unit.cp_helpers import EXAMPLE_POLICY

VALID = EXAMPLE_POLICY.read_text()
OTHER = VALID.replace("port: 8080", "port: 8081")
INVALID = "providers:\n  - name: a\n    api: nope\n    base_url: http://h\n    models: [m]\n"
PREFIX = "ccr-gateway/"
KEY = PREFIX + "policy"
FAST = 2.0  # generous bound for "picked up at once"; measured latencies are milliseconds

PROVIDER_A = "api: anthropic\nbase_url: http://127.0.0.1:9100\nmodels:\n  - claude-a\n"
PROVIDER_B = "api: openai\nbase_url: http://127.0.0.1:9100/v1\nmodels: [gpt-b]\n"
ROUTER = "default: a,claude-a\nbackground: b,gpt-b\n"


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with running_double() as running:
        yield running


class Recorder:
    """on_policy / on_error for a watch, as queues."""

    def __init__(self) -> None:
        self.policies: asyncio.Queue[GatewayPolicy] = asyncio.Queue()
        self.errors: asyncio.Queue[PolicyError] = asyncio.Queue()

    async def policy(self, timeout: float = FAST) -> GatewayPolicy:
        return await asyncio.wait_for(self.policies.get(), timeout)

    async def error(self, timeout: float = FAST) -> PolicyError:
        return await asyncio.wait_for(self.errors.get(), timeout)


@pytest.fixture
async def watching(double: ConsulDouble) -> AsyncIterator[tuple[ConsulPolicySource, Recorder]]:
    double.put(KEY, VALID)
    source = ConsulPolicySource(double.url, PREFIX)
    recorder = Recorder()
    task = asyncio.create_task(source.watch(recorder.policies.put_nowait, recorder.errors.put_nowait))
    first = await recorder.policy()
    assert first.listener_port == 8080
    await asyncio.sleep(0.05)  # let the wake-up caused by our own status write settle
    yield source, recorder
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the loop rules, pure ---------------------------------------------------------------------------


def test_next_index_resets_when_the_index_goes_backwards_and_never_sends_less_than_one():
    assert next_index(0, 17) == 17
    assert next_index(17, 17) == 17  # a return without a change
    assert next_index(17, 20) == 20
    assert next_index(20, 5) == 0  # backwards: read afresh
    assert next_index(0, 0) == 1  # 0 would make the next query non-blocking
    assert next_index(5, 0) == 0  # backwards first, then 1 on the next round
    assert next_index(0, -3) == 1  # never negative either


def test_token_bucket_allows_a_burst_then_paces_at_the_rate():
    now = [100.0]
    bucket = TokenBucket(rate=5.0, burst=5, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    assert bucket.reserve() == pytest.approx(0.2)
    assert bucket.reserve() == pytest.approx(0.4)
    now[0] += 10.0  # refills to the burst, not beyond
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    assert bucket.reserve() > 0


def test_backoff_doubles_from_the_minimum_to_the_maximum_with_jitter_and_resets():
    high = Backoff(0.1, 30.0, rng=lambda: 1.0)
    assert [round(high.next(), 3) for _ in range(11)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    high.reset()
    assert high.next() == pytest.approx(0.1)
    high.failures = 5000  # hours of outage later
    assert high.next() == 30.0
    low = Backoff(0.1, 30.0, rng=lambda: 0.0)
    assert [round(low.next(), 3) for _ in range(3)] == [0.05, 0.1, 0.2]


def test_durations_and_addresses_parse_like_consul_takes_them():
    assert parse_duration("5m") == 300
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration("0") == 0
    for bad in ("", "5", "5x", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_address("http://10.0.0.1:8501") == ("http", "10.0.0.1", 8501)
    assert parse_address("127.0.0.1:8500") == ("http", "127.0.0.1", 8500)
    assert parse_address("https://consul.internal") == ("https", "consul.internal", 443)
    with pytest.raises(ValueError):
        parse_address("ftp://x")
    assert normalize_prefix("/ccr-gateway") == "ccr-gateway/"
    assert normalize_prefix("a/b/") == "a/b/"


# --- assembling the document, pure -----------------------------------------------------------------


def entries(**keys: str | None) -> dict[str, bytes | None]:
    return {PREFIX + k.replace("__", "/"): (v.encode() if v is not None else None) for k, v in keys.items()}


def test_the_single_policy_key_wins_over_split_keys():
    document = assemble(entries(policy=VALID, router=ROUTER, status="{}"), PREFIX)
    assert document is not None
    assert document.text == VALID
    assert document.source == f"consul:{KEY}"
    assert document.shadowed == (PREFIX + "router",)
    assert document.load().listener_port == 8080


def test_nothing_under_the_prefix_is_no_policy():
    assert assemble({}, PREFIX) is None
    assert assemble(entries(status="{}"), PREFIX) is None


def test_split_keys_assemble_into_one_policy_with_provider_names_from_their_keys():
    document = assemble(
        entries(providers__a=PROVIDER_A, providers__b=PROVIDER_B, router=ROUTER, listener="port: 9090\n"), PREFIX
    )
    assert document is not None
    policy = document.load()
    assert [p.name for p in policy.providers] == ["a", "b"]
    assert policy.listener_port == 9090
    assert policy.source == f"consul:{PREFIX}"
    assert str(policy.routing.router.default[0][0]) == "a,claude-a"


def test_errors_in_split_keys_name_the_key_and_its_own_line_and_column():
    router = "default: a,claude-a\n\n# the second scenario\nbackground: nobody,gpt-b\n"
    provider_b = "api: openai\nbase_url: http://127.0.0.1:9100/v1\nmodels: [gpt-b]\nheaders: 7\n"
    document = assemble(
        entries(providers__a=PROVIDER_A, providers__b=provider_b, router=router, limits="max_request_bytes: 1\n"),
        PREFIX,
    )
    assert document is not None
    with pytest.raises(PolicyError) as caught:
        document.load()
    lines = str(caught.value).splitlines()
    assert lines == [
        f"consul:{PREFIX}limits:1:20: limits.max_request_bytes: must be between 1024 and 1073741824, got 1",
        f"consul:{PREFIX}providers/b:4:10: providers[1].headers: must be a mapping, got an integer",
        f"consul:{PREFIX}router:4:13: router.background: unknown provider 'nobody' in 'nobody,gpt-b'",
    ]
    assert isinstance(caught.value, AssembledPolicyError)


def test_yaml_syntax_errors_in_a_split_key_point_into_that_key():
    document = assemble(entries(providers__a=PROVIDER_A, router="default: [a,claude-a\n"), PREFIX)
    assert document is not None
    with pytest.raises(PolicyError) as caught:
        document.load()
    (problem,) = caught.value.problems
    assert problem.source == f"consul:{PREFIX}router"
    assert "invalid YAML" in problem.message


def test_problems_with_a_whole_key_or_the_whole_document_name_the_key_or_the_prefix():
    document = assemble(entries(router=None, routr="x: 1\n", providers__a__b="x: 1\n"), PREFIX)
    assert document is not None
    with pytest.raises(PolicyError) as caught:
        document.load()
    text = str(caught.value)
    assert f"consul:{PREFIX}routr: unknown policy key (did you mean '{PREFIX}router'?)" in text
    assert f"consul:{PREFIX}providers/a/b: provider keys are providers/<name>" in text
    assert f"consul:{PREFIX}router: router: must be a mapping" in text
    assert f"consul:{PREFIX}: providers: is required" in text


def test_a_provider_key_and_the_name_inside_it_must_agree():
    document = assemble(entries(providers__a="name: z\n" + PROVIDER_A), PREFIX)
    assert document is not None
    with pytest.raises(PolicyError) as caught:
        document.load()
    assert f"consul:{PREFIX}providers/a:1:7: name: names provider 'z'" in str(caught.value)


def test_a_value_that_is_not_utf8_is_reported_not_raised():
    document = assemble({KEY: b"\xff\xfe"}, PREFIX)
    assert document is not None
    with pytest.raises(PolicyError, match="not UTF-8"):
        document.load()


# --- against the double -------------------------------------------------------------------------------


async def test_load_once_reads_the_policy_then_reports_no_change(double: ConsulDouble):
    double.put(KEY, VALID)
    source = ConsulPolicySource(double.url, PREFIX)
    policy = await source.load_once()
    assert policy is not None and policy.source == f"consul:{KEY}"
    assert [p.name for p in policy.providers] == ["fake-anthropic", "fake-openai"]
    assert await source.load_once() is None
    await source.close()


async def test_load_once_without_any_policy_says_how_to_push_one(double: ConsulDouble):
    source = ConsulPolicySource(double.url, "empty/")
    with pytest.raises(PolicyError, match="policy push"):
        await source.load_once()
    await source.close()


async def test_an_edit_is_picked_up_at_once(double: ConsulDouble, watching):
    _, recorder = watching
    started = time.monotonic()
    double.put(KEY, OTHER)
    policy = await recorder.policy()
    assert policy.listener_port == 8081
    assert time.monotonic() - started < 0.5


async def test_an_idle_watch_blocks_instead_of_polling(double: ConsulDouble, watching):
    since = time.monotonic()
    await asyncio.sleep(0.6)
    assert double.count("GET", "/v1/kv/", since) <= 1  # at most the one query that is blocking now
    assert double.requests[-1][3].find("index=") >= 0 and "wait=5m" in double.requests[-1][3]


async def test_unchanged_text_is_not_published_again(double: ConsulDouble, watching):
    source, recorder = watching
    before = source.index
    double.put(KEY, VALID)  # same bytes: a new ModifyIndex, nothing new to apply
    double.put(PREFIX + "unrelated/thing", "x")
    await asyncio.sleep(0.2)
    assert source.index > before
    assert recorder.policies.empty() and recorder.errors.empty()


async def test_a_snapshot_restore_moves_the_index_back_and_the_old_policy_returns(double: ConsulDouble, watching):
    source, recorder = watching
    snapshot = double.snapshot()
    for _ in range(5):
        double.put("elsewhere/noise", "x")
    double.put(KEY, OTHER)
    assert (await recorder.policy()).listener_port == 8081
    high = source.index
    await asyncio.sleep(0.05)  # the next blocking query is in flight: a restore makes it return
    double.restore(snapshot)  # the index goes back below what the watch holds
    policy = await recorder.policy()
    assert policy.listener_port == 8080
    assert source.index < high
    double.put(KEY, OTHER)  # and it keeps following changes from the restored index on
    assert (await recorder.policy()).listener_port == 8081


async def test_a_restore_between_two_queries_is_noticed_when_the_wait_ends(double: ConsulDouble):
    """The query sent after a restore carries an index the server has not reached: it blocks for the
    whole wait, and the lower index it comes back with resets the loop (it never catches up alone)."""
    double.put(KEY, VALID)
    snapshot = double.snapshot()
    double.put(KEY, OTHER)
    source = ConsulPolicySource(double.url, PREFIX, settings=LoopSettings(wait="500ms"), write_status=False)
    assert (await source.load_once()).listener_port == 8081
    double.restore(snapshot)  # before the watch sends its first blocking query
    recorder = Recorder()
    task = asyncio.create_task(source.watch(recorder.policies.put_nowait, recorder.errors.put_nowait))
    assert (await recorder.policy()).listener_port == 8080
    double.put(KEY, OTHER)
    assert (await recorder.policy()).listener_port == 8081
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_index_below_one_is_sent_as_one_so_the_loop_does_not_spin(double: ConsulDouble):
    double.put(KEY, VALID)
    double.force_index(0)
    source = ConsulPolicySource(double.url, PREFIX, write_status=False)
    recorder = Recorder()
    task = asyncio.create_task(source.watch(recorder.policies.put_nowait, recorder.errors.put_nowait))
    await recorder.policy()
    since = time.monotonic()
    await asyncio.sleep(0.6)
    assert double.count("GET", "/v1/kv/", since) <= 1
    assert "index=1" in double.requests[-1][3]
    double.force_index(None)
    double.put(KEY, OTHER)
    assert (await recorder.policy()).listener_port == 8081
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_server_errors_back_off_and_the_watch_recovers(double: ConsulDouble):
    double.put(KEY, VALID)
    double.fail_next(4, status=500, path="/v1/kv/")
    errors_before = metric("ccr_consul_errors_total", watch=f"kv:{PREFIX}")
    source = ConsulPolicySource(double.url, PREFIX, settings=LoopSettings(backoff_min=0.05))
    recorder = Recorder()
    started = time.monotonic()
    task = asyncio.create_task(source.watch(recorder.policies.put_nowait, recorder.errors.put_nowait))
    policy = await recorder.policy()
    elapsed = time.monotonic() - started
    assert policy.listener_port == 8080
    # four failures wait at least half of 0.05 + 0.1 + 0.2 + 0.4 between them
    assert elapsed >= 0.37
    assert metric("ccr_consul_errors_total", watch=f"kv:{PREFIX}") - errors_before == 4
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_dropped_connections_are_retried(double: ConsulDouble, watching):
    _, recorder = watching
    double.drop_next(3, path="/v1/kv/")
    double.put("elsewhere/wake", "x")  # nothing under the prefix: the blocking query goes on
    double.put(KEY, OTHER)  # the blocking query returns, the next ones are dropped
    assert (await recorder.policy(timeout=5)).listener_port == 8081


async def test_a_proxy_that_ignores_index_is_paced_by_the_token_bucket(double: ConsulDouble, watching):
    double.ignore_index = True
    since = time.monotonic()
    await asyncio.sleep(0.8)
    double.ignore_index = False
    assert double.count("GET", "/v1/kv/", since) <= 5 + 4 + 1  # the burst, then 0.8 s at 5/s


async def test_an_invalid_policy_is_rejected_with_status_written_and_the_last_good_kept(double: ConsulDouble, watching):
    source, recorder = watching
    good = json.loads(double.get(PREFIX + "status") or b"{}")
    assert good["accepted"] is True and good["error"] is None and good["source"] == f"consul:{KEY}"
    rejected_before = metric("ccr_consul_policy_rejected_total")
    double.put(KEY, INVALID)
    error = await recorder.error()
    assert f"consul:{KEY}:3:10: providers[0].api" in str(error)
    await asyncio.sleep(0.05)
    status = json.loads(double.get(PREFIX + "status") or b"{}")
    assert status["accepted"] is False
    assert status["version"] == good["version"]  # the policy in force is still the last good one
    assert "providers[0].api" in status["error"]
    assert status["time"].endswith("Z")
    assert metric("ccr_consul_policy_rejected_total") - rejected_before == 1
    assert recorder.policies.empty()
    double.put(PREFIX + "elsewhere", "x")  # wake-ups with the same invalid text are not reported again
    await asyncio.sleep(0.1)
    assert recorder.errors.empty()
    double.put(KEY, OTHER)
    assert (await recorder.policy()).listener_port == 8081
    await asyncio.sleep(0.05)
    assert json.loads(double.get(PREFIX + "status") or b"{}")["accepted"] is True
    assert metric("ccr_consul_index", watch=f"kv:{PREFIX}") == source.index


async def test_split_keys_are_watched_as_one_policy(double: ConsulDouble):
    double.put(PREFIX + "providers/a", PROVIDER_A)
    double.put(PREFIX + "providers/b", PROVIDER_B)
    double.put(PREFIX + "router", ROUTER)
    source = ConsulPolicySource(double.url, PREFIX)
    recorder = Recorder()
    task = asyncio.create_task(source.watch(recorder.policies.put_nowait, recorder.errors.put_nowait))
    policy = await recorder.policy()
    assert [p.name for p in policy.providers] == ["a", "b"]
    double.put(PREFIX + "router", "default: a,claude-a\nthink: b,nope\n")
    error = await recorder.error()
    assert str(error).startswith(f"consul:{PREFIX}router:2:8: router.think:")
    status = json.loads(double.get(PREFIX + "status") or b"{}")
    assert status["source"] == f"consul:{PREFIX}" and status["accepted"] is False
    double.put(PREFIX + "providers/c", "api: gemini\nbase_url: http://127.0.0.1:9100\nmodels: [g]\n")
    double.put(PREFIX + "router", ROUTER)
    policy = await recorder.policy()
    assert [p.name for p in policy.providers] == ["a", "b", "c"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_acl_token_is_sent():
    async with running_double(acl_token="s3cret") as guarded:
        guarded.put(KEY, VALID)
        allowed = ConsulPolicySource(guarded.url, PREFIX, token="s3cret")
        denied = ConsulPolicySource(guarded.url, PREFIX, token="wrong")
        try:
            assert (await allowed.load_once()) is not None
            with pytest.raises(consul.ACLPermissionDenied):
                await denied.load_once()
        finally:
            await allowed.close()
            await denied.close()
