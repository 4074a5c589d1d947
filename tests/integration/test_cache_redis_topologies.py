"""The response cache's Redis store (extproc.cache.redis_store.RedisCacheStore) while its Redis changes
under it, with several tasks putting and reading entries all along: a Sentinel master failed over,
a Cluster slot migrated between masters (ASK, then MOVED), a single Redis killed and restarted.
Every deployment is started by this module on free ports (tests/integration/redis_procs.py) and
killed after it; the machine's Redis on 6379 is not used.

What must hold throughout: no call raises; a lookup the store could not answer is a miss counted as
an error (never as a plain miss), a put it could not make is False; the outage is logged once when
it begins and once when it ends; the same client answers again afterwards. Reads only ever ask for
entries known to be there, so any None is the outage and the error counts can be checked exactly.

The Sentinel and the kill tests print the outage they measured (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot

from extproc.auth.redis_limits import connect, connect_hot
from extproc.cache.redis_store import RedisCacheStore
from tests.integration import redis_procs
from tests.integration.redis_procs import HOST, ClusterGroup, RedisProcess, SentinelGroup

pytestmark = pytest.mark.skipif(redis_procs.REDIS_SERVER is None, reason="redis-server is not installed")

LOGGER = "extproc.cache.redis_store"
OUTAGE_BEGAN = "redis unavailable for the response cache"
OUTAGE_ENDED = "redis answering the response cache again"
TTL_S = 120.0  # far longer than any test: nothing expires while one runs
OUTAGE_BOUND_S = 10.0
T = TypeVar("T")


def value_of(key: str) -> bytes:
    """Each key's one value (ASCII, so the admin clients read it as text): a wrong one is a bug."""
    return f"{key}|".encode() * 16


def counted(name: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(name, {"store": "redis", "outcome": outcome}) or 0.0


def store_counts() -> dict[str, float]:
    return {
        "lookup_errors": counted("ccr_cache_lookups_total", "error"),
        "misses": counted("ccr_cache_lookups_total", "miss"),
        "hits": counted("ccr_cache_lookups_total", "hit"),
        "put_errors": counted("ccr_cache_stores_total", "error"),
    }


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {name: value - before[name] for name, value in store_counts().items()}


def store_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


async def in_batches(calls: Sequence[Awaitable[T]], at_once: int = 50) -> list[T]:
    """Every call's result, ``at_once`` calls in flight: redis-py holds a connection per command
    in flight, at most 100 (more is a MaxConnectionsError, which the store answers as a failure)."""
    results: list[T] = []
    for start in range(0, len(calls), at_once):
        results += await asyncio.gather(*calls[start : start + at_once])
    return results


async def put_all(store: RedisCacheStore, keys: Sequence[str]) -> bool:
    return all(await in_batches([store.put(key, value_of(key), TTL_S) for key in keys]))


async def read_all(store: RedisCacheStore, keys: Sequence[str], rounds: int = 5) -> list[bytes | None]:
    """Every key's value. The store answers None for a miss and for a call that failed alike (a
    CPU-starved machine can let a batch of gets overrun the 0.25 s timeout), so a None is asked
    again a few times: a key that is really gone stays None."""
    results: list[bytes | None] = await in_batches([store.get(key) for key in keys])
    for _ in range(rounds - 1):
        missing = [index for index, value in enumerate(results) if value is None]
        if not missing:
            break
        await asyncio.sleep(0.2)
        for index, value in zip(missing, await in_batches([store.get(keys[i]) for i in missing]), strict=True):
            results[index] = value
    return results


def digest(index: int) -> str:
    """A key shaped like the cache's own (a hex digest of the request)."""
    return hashlib.sha256(str(index).encode()).hexdigest()


@dataclass(frozen=True)
class Call:
    op: str  # get | put
    started: float  # time.monotonic()
    finished: float
    answered: bool  # get: the entry came back; put: it was stored


class Load:
    """``tasks`` loops on one store, a few milliseconds apart: each puts entries of its own
    (``write_key(task, index)`` names them) and reads back one of ``readable``, entries known to be
    in Redis all along, so a None can only be the store failing. Every call is recorded; a wrong
    value fails its loop at once, and anything a call raises ends the load with it."""

    def __init__(
        self,
        store: RedisCacheStore,
        readable: Sequence[str],
        write_key: Callable[[int, int], str],
        *,
        tasks: int = 4,
        pause_s: float = 0.003,
    ) -> None:
        self.store = store
        self.readable = list(readable)
        self.write_key = write_key
        self.tasks = tasks
        self.pause_s = pause_s
        self.calls: list[Call] = []
        self.stored: set[str] = set()  # the load's own keys a put answered True for
        self._stop = asyncio.Event()
        self._loops: asyncio.Future[Any] | None = None

    async def _loop(self, task: int) -> None:
        choose = random.Random(task).choice
        for index in itertools.count():
            if self._stop.is_set():
                return
            key = self.write_key(task, index)
            started = time.monotonic()
            stored = await self.store.put(key, value_of(key), ttl_s=TTL_S)
            self.calls.append(Call("put", started, time.monotonic(), stored))
            if stored:
                self.stored.add(key)
            wanted = choose(self.readable)
            started = time.monotonic()
            found = await self.store.get(wanted)
            self.calls.append(Call("get", started, time.monotonic(), found is not None))
            assert found is None or found == value_of(wanted), (wanted, found)
            await asyncio.sleep(self.pause_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        self._loops = asyncio.gather(*(self._loop(task) for task in range(self.tasks)))
        try:
            yield self
        finally:
            self._stop.set()
            await self._loops  # a loop that raised raises here

    async def until(self, condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self._loops is not None
            if self._loops.done():
                await self._loops  # raises what ended a loop
                raise AssertionError(f"the load stopped before {what}")
            assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
            await asyncio.sleep(0.01)

    async def for_calls(self, count: int) -> None:
        target = len(self.calls) + count
        await self.until(lambda: len(self.calls) >= target, f"{count} more calls")

    def failed(self, op: str | None = None) -> list[Call]:
        return [call for call in self.calls if not call.answered and op in (None, call.op)]

    def recovered(self, since: float, calls: int = 100) -> bool:
        """Failures seen after ``since``, and the ``calls`` last calls all answered."""
        latest = self.calls[-calls:]
        return (
            any(call.finished >= since for call in self.failed())
            and len(latest) == calls
            and all(call.answered for call in latest)
        )


@dataclass(frozen=True)
class Outage:
    """What the load saw of an outage, in seconds after ``began`` (the kill)."""

    first_failure: float
    last_failure: float
    answered_again: float  # the first call started after the last failure, finished
    failed_gets: int
    failed_puts: int

    @classmethod
    def seen_by(cls, load: Load, began: float) -> Outage:
        failed = load.failed()
        assert failed, "the load saw no outage"
        last = max(call.finished for call in failed)
        back = min(call.finished for call in load.calls if call.started > last)
        return cls(
            failed[0].finished - began,
            last - began,
            back - began,
            len(load.failed("get")),
            len(load.failed("put")),
        )

    def __str__(self) -> str:
        return (
            f"calls failed from {self.first_failure:.3f} s to {self.last_failure:.3f} s after the kill"
            f" ({self.failed_gets} lookups, {self.failed_puts} puts), answered again"
            f" {self.answered_again:.3f} s after it"
        )


def assert_counted_exactly(load: Load, counts: dict[str, float]) -> None:
    """Every lookup that failed was counted as an error (not a miss), every failed put as one."""
    gets = [call for call in load.calls if call.op == "get"]
    assert counts["hits"] == len(gets) - len(load.failed("get")), counts
    assert counts["lookup_errors"] == len(load.failed("get")), counts
    assert counts["put_errors"] == len(load.failed("put")), counts
    assert counts["misses"] == 0, counts


def assert_logged_per_outage(caplog: pytest.LogCaptureFixture, at_most: int = 1) -> None:
    lines = store_lines(caplog)
    began = [line for line in lines if line.startswith(OUTAGE_BEGAN)]
    ended = [line for line in lines if line == OUTAGE_ENDED]
    assert 1 <= len(began) == len(ended) <= at_most, lines
    assert lines[-1] == OUTAGE_ENDED, lines


# -- Sentinel ------------------------------------------------------------------------------------


@pytest.fixture
def sentinel() -> Iterator[SentinelGroup]:
    """A group of the test's own: it kills the master."""
    with redis_procs.sentinel_group() as group:
        yield group


def wait_replicated(group: SentinelGroup) -> None:
    """Everything the master has written so far is on the replica (replication is asynchronous:
    without this an entry acknowledged just before a kill may be lost with the master)."""

    def offset(node: RedisProcess, field: str) -> int:
        with node.client() as client:
            return int(client.info("replication")[field])

    written = offset(group.master, "master_repl_offset")
    redis_procs.wait_until(lambda: offset(group.replica, "slave_repl_offset") >= written, "the replica to catch up")


async def test_a_sentinel_failover_under_load_is_a_bounded_run_of_counted_misses_then_the_cache_again(
    sentinel: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL the master while four tasks put and read entries; the sentinels promote the
    replica and the same client finds it. A dead master refuses and resets connections (no
    timeouts), so the window is the sentinels': down-after 1 s, then the election and promotion."""
    store = RedisCacheStore(connect(sentinel.url, timeout_s=0.25), prefix=f"ccrtest:cache:{uuid.uuid4().hex[:8]}:")
    before_failover = [digest(index) for index in range(200)]
    try:
        assert await put_all(store, before_failover)
        await asyncio.to_thread(wait_replicated, sentinel)
        load = Load(store, before_failover, lambda task, index: f"load-{task}-{index}")
        counts_before = store_counts()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with load.running():
                await load.for_calls(200)
                killed = time.monotonic()
                sentinel.master.kill()
                await load.until(lambda: load.recovered(since=killed), "recovery after the failover")
        counts = counted_since(counts_before)
        master = store.client.connection_pool.master_address
        assert master == (HOST, sentinel.replica.port)

        outage = Outage.seen_by(load, killed)
        print(f"\nSentinel failover of the cache's Redis: {outage}")
        assert outage.answered_again < OUTAGE_BOUND_S
        assert all(call.finished >= killed for call in load.failed())  # nothing failed before the kill
        assert outage.failed_gets > 0 and outage.failed_puts > 0
        assert_counted_exactly(load, counts)
        # A discovery answered just before the promotion can send one connection to the dead master
        # after another has found the new one: a second, short outage, logged as such.
        assert_logged_per_outage(caplog, at_most=2)

        # Written before the failover (and replicated): all on the new master, through the same client
        assert await read_all(store, before_failover) == [value_of(key) for key in before_failover]
        assert await store.put("after-failover", b"new", TTL_S) and await store.get("after-failover") == b"new"
    finally:
        await store.aclose()


# -- Cluster -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterGroup]:
    with redis_procs.redis_cluster() as group:
        yield group


@pytest.fixture
def prefix() -> str:
    return f"ccrtest:cache:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def cluster_store(cluster: ClusterGroup, prefix: str) -> AsyncIterator[RedisCacheStore]:
    store = RedisCacheStore(connect(cluster.url, timeout_s=1.0), prefix=prefix)  # a busy machine is no outage
    yield store
    await store.aclose()


def record_commands(client: Any) -> list[tuple[Any, ...]]:
    """The arguments of every command the cluster client is asked to send."""
    sent: list[tuple[Any, ...]] = []
    send = client.execute_command

    async def recording(*args: Any, **options: Any) -> Any:
        sent.append(args)
        return await send(*args, **options)

    client.execute_command = recording
    return sent


def assert_one_slot_per_command(store: RedisCacheStore, sent: list[tuple[Any, ...]]) -> None:
    """Each command is GET <key> or SET <key> <value> PX <ms>: one key, the store's own, whose slot
    is its hash tag's, the cache key's."""
    assert sent
    for name, key, *rest in sent:
        shape = (name, len(rest), rest[1].upper() if rest else None)
        assert shape in (("GET", 0, None), ("SET", 3, "PX")), (name, key, rest)
        cache_key = key.removeprefix(store.prefix)[1:-1]
        assert store.redis_key(cache_key) == key
        assert key_slot(key.encode()) == key_slot(cache_key.encode())


def keys_of_slot_on(node: RedisProcess, slot: int, prefix: str) -> set[str]:
    return {key for key in node.admin("CLUSTER", "GETKEYSINSLOT", slot, 10_000) if key.startswith(prefix)}  # type: ignore[attr-defined]


def redirects_answered(node: RedisProcess) -> dict[str, int]:
    with node.client() as client:
        stats = client.info("errorstats")
    return {kind: stats.get(f"errorstat_{kind}", {}).get("count", 0) for kind in ("ASK", "MOVED", "CROSSSLOT")}


def keys_on(node: RedisProcess, prefix: str) -> set[str]:
    return set(node.admin("KEYS", f"{prefix}*"))  # type: ignore[call-overload]


def keys_of_slot(slot: int, count: int) -> list[str]:
    """``count`` cache keys whose hash tag falls in ``slot`` (one in 16384 does: a few 100k tries)."""
    found = (key for key in map(digest, itertools.count(10_000_000)) if key_slot(key.encode()) == slot)
    return list(itertools.islice(found, count))


async def test_entries_spread_over_the_three_masters_each_whole_on_its_slot_owner(
    cluster: ClusterGroup, cluster_store: RedisCacheStore, prefix: str
) -> None:
    sent = record_commands(cluster_store.client)
    keys = [digest(index) for index in range(300)]
    assert await put_all(cluster_store, keys)
    assert await read_all(cluster_store, keys) == [value_of(key) for key in keys]
    owners = {key: cluster.owner(key_slot(key.encode())) for key in keys}
    for node in cluster.nodes:
        expected = {cluster_store.redis_key(key) for key, owner in owners.items() if owner is node}
        assert len(expected) > 50  # ~100 of the 300 on each
        assert keys_on(node, prefix) == expected
        assert all(node.admin("GET", name) == value_of(name[len(prefix) + 1 : -1]).decode() for name in expected)
    assert_one_slot_per_command(cluster_store, sent)


async def test_a_slot_migrated_under_load_is_followed_through_ask_then_moved_and_every_entry_kept(
    cluster: ClusterGroup, cluster_store: RedisCacheStore, prefix: str
) -> None:
    """Four tasks read entries of every master, ten of them in the slot that moves, and write
    entries of their own, half of them in that slot (new ones go to the target by ASK while the
    slot migrates). The keys are moved, then the slot given to the target (MOVED from then on).
    While the slot migrates, a call redirected by ASK may fail (redis-py may send ASKING on another
    connection than the command: see the next test): a counted miss, never an exception."""
    store = cluster_store
    sent = record_commands(store.client)
    slot = key_slot(digest(0).encode())
    in_the_slot = keys_of_slot(slot, 20)
    moving, arriving = in_the_slot[:10], in_the_slot[10:]
    staying = [digest(index) for index in range(1, 200)]
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)
    assert {cluster.owner(key_slot(key.encode())).port for key in staying} == {node.port for node in cluster.nodes}
    assert await put_all(store, [*moving, *staying])
    redirects_before = {node.port: redirects_answered(node) for node in cluster.nodes}

    def write_key(task: int, index: int) -> str:
        return arriving[(task + index) % len(arriving)] if index % 2 else f"load-{task}-{index}"

    load = Load(store, [*moving, *staying], write_key)
    counts_before = store_counts()
    async with load.running():
        await load.for_calls(100)
        migrating = time.monotonic()
        await asyncio.to_thread(cluster.begin_migration, slot, source, target)
        await load.for_calls(100)
        moved = await asyncio.to_thread(cluster.move_keys, slot, source, target)
        await load.for_calls(200)  # the moved entries read through ASK
        await asyncio.to_thread(cluster.end_migration, slot, target)
        migrated = time.monotonic()
        await load.for_calls(200)  # and through MOVED, then the refreshed slot map
    counts = counted_since(counts_before)
    redirected = {
        kind: redirects_answered(source)[kind] - redirects_before[source.port][kind] for kind in ("ASK", "MOVED")
    }
    print(
        f"\nCluster slot {slot} moved under load: {len(load.calls)} calls, {moved} keys migrated, {redirected};"
        f" {len(load.failed('get'))} lookups and {len(load.failed('put'))} puts failed"
    )
    assert redirected["ASK"] > 0 and redirected["MOVED"] > 0
    assert cluster.owner(slot) is target
    # None raised (the load would have); what failed, failed while the slot moved and was counted
    assert all(migrating <= call.started <= migrated for call in load.failed())
    assert_counted_exactly(load, counts)

    # Every entry of the moved slot is on the target alone, and readable through the same client
    in_slot = sorted({*moving, *(key for key in load.stored if key_slot(key.encode()) == slot)})
    assert set(arriving) <= set(in_slot)
    assert await read_all(store, in_slot) == [value_of(key) for key in in_slot]
    assert keys_of_slot_on(target, slot, prefix) == {store.redis_key(key) for key in in_slot}
    assert source.admin("CLUSTER", "COUNTKEYSINSLOT", slot) == 0

    # One key per command, in its own slot: nothing a node could refuse as CROSSSLOT was sent
    assert_one_slot_per_command(store, sent)
    for node in cluster.nodes:
        assert redirects_answered(node)["CROSSSLOT"] == redirects_before[node.port]["CROSSSLOT"] == 0


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="redis-py (8.2) sends ASKING as a command of its own, on the first idle connection to the"
    " target, then the redirected command on the next: with two idle, ASKING is lost, the target"
    " answers MOVED back to the source, which answers ASK again, until 'TTL exhausted' (ClusterError)",
)
async def test_an_entry_read_through_ask_is_found_while_the_client_holds_idle_connections_to_the_target(
    cluster: ClusterGroup, cluster_store: RedisCacheStore
) -> None:
    """What a busy gateway meets in every slot migration: its pool to the target node holds several
    idle connections. Today the lookup misses (counted as an error) until the migration ends."""
    store = cluster_store
    key = digest(-1)
    slot = key_slot(key.encode())
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)
    on_target = next(
        other for other in map(digest, itertools.count()) if cluster.owner(key_slot(other.encode())) is target
    )
    assert await store.put(key, b"entry", TTL_S) and await store.put(on_target, b"other", TTL_S)
    assert await asyncio.gather(store.get(on_target), store.get(on_target)) == [b"other"] * 2  # two connections
    cluster.begin_migration(slot, source, target)
    try:
        assert cluster.move_keys(slot, source, target) == 1
        errors = counted("ccr_cache_lookups_total", "error")
        found = await store.get(key)
        assert counted("ccr_cache_lookups_total", "error") - errors == int(found is None)
    finally:
        cluster.end_migration(slot, target)
    assert await store.get(key) == b"entry"  # MOVED alone is followed
    assert found == b"entry"


# -- a single Redis killed -----------------------------------------------------------------------

# An append-only file, so that what was stored before the kill is there after the restart: then a
# read of an entry stored before can miss only because Redis is down, and the error counts are
# exact. (A cache's Redis would not keep one; the store behaves the same without it.) ``always``:
# every acknowledged write is in the file, also when a background fsync is late.
PERSISTENT = ["appendonly yes", "appendfsync always"]


@pytest.mark.parametrize("kind", ["resp", "redis-py"])
async def test_a_redis_killed_under_load_and_restarted_is_counted_misses_then_the_cache_again(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL a single Redis while four tasks use it (``connect_hot``'s lean client, or
    ``connect``'s redis-py), leave it down half a second, start it again on the same port: the
    store's client reconnects by itself."""
    with contextlib.ExitStack() as processes:
        server = redis_procs.start_redis(processes, tmp_path, "redis", PERSISTENT)
        url = f"redis://{HOST}:{server.port}/0"
        client = connect_hot(url, timeout_s=0.25) if kind == "resp" else connect(url, timeout_s=0.25)
        store = RedisCacheStore(client, prefix="ccrtest:cache:")
        before_kill = [digest(index) for index in range(100)]
        try:
            assert await put_all(store, before_kill)
            load = Load(store, before_kill, lambda task, index: f"load-{task}-{index}")
            counts_before = store_counts()
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                async with load.running():
                    await load.for_calls(200)
                    killed = time.monotonic()
                    server.kill()
                    await load.until(lambda: len(load.failed("get")) >= 20 and len(load.failed("put")) >= 20, "misses")
                    await asyncio.sleep(0.5)
                    restarting = time.monotonic()
                    again = [*PERSISTENT, f"dir {server.directory}"]  # the same append-only file
                    await asyncio.to_thread(
                        redis_procs.start_redis, processes, tmp_path, "restarted", again, port=server.port
                    )
                    ready = time.monotonic()
                    await load.until(lambda: load.recovered(since=killed), "recovery after the restart")
            counts = counted_since(counts_before)
            outage = Outage.seen_by(load, killed)
            print(
                f"\nRedis killed under load ({kind}): {outage}; restarted {restarting - killed:.3f} s after the"
                f" kill, answering PING {ready - killed:.3f} s after it"
            )
            # Failures only while it was down, or while a call that began then finished
            assert all(killed <= call.finished and call.started <= ready for call in load.failed())
            assert outage.answered_again - (ready - killed) < 1.0
            assert_counted_exactly(load, counts)
            assert_logged_per_outage(caplog)

            assert await store.put("after-restart", b"new", TTL_S) and await store.get("after-restart") == b"new"
            stored = sorted(load.stored)
            assert await read_all(store, stored) == [value_of(key) for key in stored]
        finally:
            await store.aclose()
