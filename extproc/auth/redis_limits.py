"""Cluster-wide limits and budgets in Redis (redis.asyncio), and the failure policy around them.

``RedisLimiter`` does what ``local_limits.LocalLimiter`` does, with the state in Redis and every
decision inside one Lua script (``limit_scripts``): one EVALSHA per hash slot touched. A check's
limits are grouped by owner (``limits.hash_tag``): a key's limits, including (key, model), share a
slot and go in one script; tenant and model limits live in their own slots. Several groups go out
in one pipeline (one round trip on a single Redis); if one group refuses, the groups that admitted
are refunded in a second call, so a refused request is charged nowhere.

``GuardedLimiter`` puts a ``FailurePolicy`` per limit type around it: when Redis times out or is
unreachable, fail_closed refuses, fail_open admits, local decides with a per-process limiter whose
limits are divided by the number of gateways. Every such decision is counted and the first of an
outage is logged. The client must have hot-path timeouts (``connect``): redis-py's default is
to wait forever.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from extproc.auth.limit_scripts import ADJUST, ADMIT, RESERVE, SETTLE, Script
from extproc.auth.limits import (
    ALLOWED,
    BUDGET,
    PARALLEL,
    TOKEN_LIMITS,
    Admission,
    AdmissionBuilder,
    Budget,
    Limit,
    budget_remaining_usd,
    gcra_remaining,
    hash_tag,
    period_window,
    redis_key,
    to_micro_usd,
)
from extproc.auth.local_limits import DEFAULT_RESERVATION_TTL_S, SETTLED_MEMORY_S, LocalLimiter
from extproc.auth.redis_topology import Topology, parse_redis_url
from extproc.auth.resp_client import RespClient

log = logging.getLogger(__name__)

REDIS_ERRORS = Counter(
    "ccr_auth_redis_errors_total",
    "Limit or budget operations Redis could not answer, by the failure policy applied",
    ["policy"],
)
REDIS_SECONDS = Histogram(
    "ccr_auth_redis_seconds",
    "Round trip of one limit or budget operation to Redis",
    ["op"],
    buckets=(0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)

_ADMIT_SECONDS = REDIS_SECONDS.labels("admit")  # the labelled child once: labels() costs a lock and a dict
_MEMO_SIZE = 10_000  # limit sets remembered (a key's, with its tenant's and its model's)

# What "Redis is not answering" looks like; anything else (a script error) is a bug and raises.
# During a failover: Sentinel's MasterNotFoundError and its "previous master is now a slave" are
# ConnectionErrors; a plain URL to a demoted master answers READONLY; a cluster answers
# CLUSTERDOWN/MASTERDOWN (ClusterError), TRYAGAIN while a slot's keys are split mid-migration, or
# has no node for a slot, or none reachable.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    ReadOnlyError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
    OSError,
    asyncio.TimeoutError,
)

RedisClient = aioredis.Redis | RedisCluster
# Commands one redis-py client may have in flight at once (one connection each; a cluster client:
# per node). Redis accepts 10,000 clients by default.
MAX_CONNECTIONS = 1000


def connect(url: str, *, timeout_s: float = 0.05, **options: Any) -> RedisClient:
    """A client fit for the hot path, for any of ``redis_topology``'s URLs: connect and read
    timeouts in tens of milliseconds, no retries (the failure policy decides what a timeout means,
    at once). Behind Sentinel, every new connection asks the sentinels (same timeouts) where the
    master is, so a failover needs no restart; a cluster client follows MOVED and ASK itself."""
    target = parse_redis_url(url)

    def hot() -> dict[str, Any]:  # a Retry apiece: clients may adjust theirs
        return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)}

    # redis-py takes one connection per command in flight and, past its pool's cap (100 by
    # default), fails the next command at once: a burst of requests would read as an outage.
    options.setdefault("max_connections", MAX_CONNECTIONS)

    credentials = {"username": target.username, "password": target.password}
    if target.topology is Topology.SENTINEL:
        sentinels = _Sentinels(target.nodes, sentinel_kwargs=hot())
        return sentinels.master_for(
            target.service, redis_class=_SentinelMaster, db=target.db, **hot(), **credentials, **options
        )
    if target.topology is Topology.CLUSTER:
        # Not require_full_coverage: a slot without a node is that slot's outage, not the client's.
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        return RedisCluster(startup_nodes=nodes, require_full_coverage=False, **hot(), **credentials, **options)
    return aioredis.Redis.from_url(url, retry_on_timeout=False, **hot(), **options)


def connect_hot(url: str, *, timeout_s: float = 0.05) -> RedisClient | RespClient:
    """The request path's client: for a single Redis (``redis://``) the lean pipelined one
    (extproc.auth.resp_client: a few tens of microseconds a check instead of redis-py's ~150+);
    for Sentinel, Cluster, TLS or a Unix socket, ``connect``'s."""
    target = parse_redis_url(url)
    parts = urlsplit(url)
    if target.topology is not Topology.SINGLE or parts.scheme != "redis" or not parts.hostname:
        return connect(url, timeout_s=timeout_s)
    path = parts.path.strip("/")
    return RespClient(
        parts.hostname,
        parts.port or 6379,
        db=int(path) if path.isdigit() else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        timeout_s=timeout_s,
    )


class _Sentinels(Sentinel):
    """Master discovery run once at a time, its answer shared by every connection asking meanwhile.
    redis-py moves the sentinel that answered to the front of its list by an index read before an
    await, so concurrent discoveries (each connection of a busy gateway reconnecting during a
    failover) left one sentinel twice in the list and another out of it, never asked or closed
    again. Sharing also spares the sentinels one query per reconnecting request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._discoveries: dict[str, asyncio.Future[Any]] = {}

    async def discover_master(self, service_name: str) -> Any:
        discovery = self._discoveries.get(service_name)
        if discovery is None or discovery.done():
            discovery = asyncio.ensure_future(super().discover_master(service_name))
            discovery.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
            self._discoveries[service_name] = discovery
        return await asyncio.shield(discovery)  # a caller's timeout must not cancel the others' answer


class _SentinelMaster(aioredis.Redis):
    """The master behind Sentinel; closing it closes the connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


class RedisLimiter:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "",
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not hold braces (they pick the hash slot)")
        self.client = client
        self.prefix = prefix
        self.reservation_ttl_s = reservation_ttl_s
        self.clock = clock
        # The per-request work that depends only on the limits: their slot groups and key names.
        self._slot_groups: dict[tuple[Limit, ...], list[tuple[Limit, ...]]] = {}
        self._key_names: dict[tuple[Limit, ...], list[str]] = {}

    # -- rate limits and parallel slots --------------------------------------------------------

    async def admit(
        self, limits: Sequence[Limit], request_id: str, *, token_estimate: float = 0.0, now: float | None = None
    ) -> Admission:
        """Charge every limit or none: one request, and ``token_estimate`` tokens to tpm/tpd."""
        if not limits:
            return ALLOWED
        now = self.clock() if now is None else now
        groups = self._groups(limits)
        calls = [
            (ADMIT, self._keys(group), self._admit_args(group, request_id, now, token_estimate)) for group in groups
        ]
        started = time.perf_counter()
        replies = await self._run_all(calls)
        _ADMIT_SECONDS.observe(time.perf_counter() - started)
        builder = AdmissionBuilder()
        admitted_groups = []
        for group, raw_reply in zip(groups, replies, strict=True):
            reply = raw_reply.split()
            if int(reply[0]) == 1:
                admitted_groups.append(group)
            for index, limit in enumerate(group):
                allowed, retry, figure = (
                    int(reply[1 + 3 * index]),
                    float(reply[2 + 3 * index]),
                    float(reply[3 + 3 * index]),
                )
                if limit.name == PARALLEL:
                    builder.add(limit, bool(allowed), retry, max(0.0, limit.limit - figure), 0.0)
                else:
                    builder.add(limit, bool(allowed), retry, gcra_remaining(limit, figure), figure)
        admission = builder.build()
        if not admission.allowed and admitted_groups:
            await self._refund(admitted_groups, request_id, token_estimate, now)
        return admission

    async def release(self, limits: Sequence[Limit], request_id: str) -> None:
        """Give back the parallel slots ``request_id`` holds (idempotent)."""
        parallel = [limit for limit in limits if limit.name == PARALLEL]
        if parallel:
            await self._adjust(parallel, request_id, self.clock(), lambda _limit: 0.0, "release")

    async def reconcile_tokens(
        self, limits: Sequence[Limit], estimated: float, actual: float, *, now: float | None = None
    ) -> None:
        """Charge tpm/tpd the difference between the provider's real count and the estimate
        (negative: give back what the estimate overcharged)."""
        tokens = [limit for limit in limits if limit.name in TOKEN_LIMITS]
        if tokens and actual != estimated:
            now = self.clock() if now is None else now
            await self._adjust(tokens, "", now, lambda _limit: actual - estimated, "reconcile")

    async def _refund(self, groups: list[list[Limit]], request_id: str, token_estimate: float, now: float) -> None:
        limits = [limit for group in groups for limit in group]
        await self._adjust(limits, request_id, now, lambda limit: -limit.cost(token_estimate), "refund")

    async def _adjust(
        self, limits: Sequence[Limit], request_id: str, now: float, delta: Callable[[Limit], float], op: str
    ) -> None:
        calls = []
        for group in _group_by_slot(limits):
            args: list[str] = [repr(now), request_id]
            for limit in group:
                args += ["p" if limit.name == PARALLEL else "g", repr(limit.interval_s), repr(delta(limit))]
            calls.append((ADJUST, self._keys(group), args))
        with REDIS_SECONDS.labels(op).time():
            await self._run_all(calls)

    def _keys(self, group: Sequence[Limit]) -> list[str]:
        group = group if isinstance(group, tuple) else tuple(group)
        keys = self._key_names.get(group)
        if keys is None:
            keys = [redis_key(self.prefix, limit.scope, limit.name) for limit in group]
            if len(self._key_names) > _MEMO_SIZE:
                self._key_names.clear()
            self._key_names[group] = keys
        return keys

    def _groups(self, limits: Sequence[Limit]) -> list[tuple[Limit, ...]]:
        """``limits`` by hash slot, remembered per set of limits (the same few per key, per request)."""
        limits = limits if isinstance(limits, tuple) else tuple(limits)
        groups = self._slot_groups.get(limits)
        if groups is None:
            groups = [tuple(group) for group in _group_by_slot(limits)]
            if len(self._slot_groups) > _MEMO_SIZE:
                self._slot_groups.clear()
            self._slot_groups[limits] = groups
        return groups

    @staticmethod
    def _admit_args(group: Sequence[Limit], request_id: str, now: float, token_estimate: float) -> list[str]:
        spec = []
        for limit in group:
            if limit.name == PARALLEL:
                spec.append(f"p {limit.limit!r} {limit.period_s!r} 0")
            else:
                spec.append(f"g {limit.interval_s!r} {limit.capacity_s!r} {limit.cost(token_estimate)!r}")
        return [repr(now), request_id, " ".join(spec)]

    # -- budgets -------------------------------------------------------------------------------

    async def reserve(
        self, budget: Budget, request_id: str, worst_case_usd: float, *, now: float | None = None
    ) -> Admission:
        """Hold ``worst_case_usd`` of the budget's current period for ``request_id`` if spent +
        reserved + this fits; otherwise refuse until the period ends. Idempotent by request id."""
        now = self.clock() if now is None else now
        start, end = period_window(budget.period, now)
        args = [
            repr(now),
            request_id,
            str(to_micro_usd(worst_case_usd)),
            str(budget.limit_micro),
            repr(now + self.reservation_ttl_s),
            str(_budget_ttl_ms(now, end)),
        ]
        with REDIS_SECONDS.labels("reserve").time():
            allowed, spent, reserved = await self._run(RESERVE, self._budget_keys(budget, start), args)
        builder = AdmissionBuilder()
        remaining = budget_remaining_usd(budget, int(spent), int(reserved))
        builder.add(budget, bool(int(allowed)), 0.0 if int(allowed) else end - now, remaining, end - now)
        return builder.build()

    async def settle(self, budget: Budget, request_id: str, real_usd: float, *, now: float | None = None) -> bool:
        """Replace ``request_id``'s reservation by its real cost (0 to cancel). Idempotent: returns
        False when the request was already settled."""
        now = self.clock() if now is None else now
        start, end = period_window(budget.period, now)
        args = [
            repr(now),
            request_id,
            str(to_micro_usd(real_usd)),
            str(_budget_ttl_ms(now, end)),
            repr(SETTLED_MEMORY_S),
        ]
        with REDIS_SECONDS.labels("settle").time():
            return bool(int(await self._run(SETTLE, self._budget_keys(budget, start), args)))

    async def spent_usd(self, budget: Budget, *, now: float | None = None) -> tuple[float, float]:
        """(spent, reserved) in the budget's current period, as stored (expired reservations are
        only dropped by the next reserve or settle)."""
        start, _end = period_window(budget.period, self.clock() if now is None else now)
        spent, reserved = await self.client.hmget(self._budget_keys(budget, start)[0], ["spent", "reserved"])
        return int(spent or 0) / 1e6, int(reserved or 0) / 1e6

    def _budget_keys(self, budget: Budget, period_start: float) -> list[str]:
        period = f"{budget.period}:{int(period_start)}"
        return [
            redis_key(self.prefix, budget.scope, BUDGET, period, part)
            for part in ("totals", "expiry", "held", "settled")
        ]

    # -- running scripts -----------------------------------------------------------------------

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or flushed its script cache: load, then once more
            await self.client.script_load(script.source)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def _run_all(self, calls: Sequence[tuple[Script, list[str], list[str]]]) -> list[Any]:
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [await self._run(script, keys, args)]
        if isinstance(self.client, (RedisCluster, RespClient)):
            # The slots may live on several nodes: one call each, at once, so the check still
            # waits one round trip, and each follows its own MOVED/ASK and NOSCRIPT. Every call
            # settles before an error is raised (as the pipeline's raise_on_error=False below).
            replies = await asyncio.gather(*(self._run(*call) for call in calls), return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return list(replies)
        pipe = self.client.pipeline(transaction=False)  # one slot per call: no MULTI across slots
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = list(await pipe.execute(raise_on_error=False))
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # this call did not run: safe to run it again
                replies[index] = await self._run(*calls[index])
            elif isinstance(reply, Exception):
                raise reply
        return replies


def _group_by_slot(limits: Sequence[Limit]) -> list[list[Limit]]:
    groups: dict[str, list[Limit]] = {}
    for limit in limits:
        groups.setdefault(hash_tag(limit.scope), []).append(limit)
    return list(groups.values())


def _budget_ttl_ms(now: float, period_end: float) -> int:
    """Budget state outlives its period by a day, for late settles and reports."""
    return math.ceil((period_end - now + 86400) * 1000)


# -- failure policy ------------------------------------------------------------------------------


class FailurePolicy(enum.StrEnum):
    FAIL_CLOSED = "fail_closed"  # refuse: the limit is a hard guarantee (budgets, usually)
    FAIL_OPEN = "fail_open"  # admit: availability matters more than the limit
    LOCAL = "local"  # decide in this process with limit / number of gateways


DEFAULT_POLICIES: Mapping[str, FailurePolicy] = {
    **{name: FailurePolicy.LOCAL for name in ("rpm", "rph", "rpd", "tpm", "tpd", PARALLEL)},
    BUDGET: FailurePolicy.FAIL_CLOSED,
}
FAIL_CLOSED_RETRY_S = 1.0


class GuardedLimiter:
    """``RedisLimiter``'s operations with a failure policy per limit name when Redis is down."""

    def __init__(
        self,
        primary: RedisLimiter,
        *,
        policies: Mapping[str, FailurePolicy] = DEFAULT_POLICIES,
        gateways: int = 1,
        fallback: LocalLimiter | None = None,
    ) -> None:
        self.primary = primary
        self.policies = {**DEFAULT_POLICIES, **policies}
        self.gateways = max(1, gateways)
        self.fallback = fallback or LocalLimiter(clock=primary.clock)
        self._in_outage = False

    async def admit(
        self, limits: Sequence[Limit], request_id: str, *, token_estimate: float = 0.0, now: float | None = None
    ) -> Admission:
        try:
            admission = await self.primary.admit(limits, request_id, token_estimate=token_estimate, now=now)
        except UNAVAILABLE as error:
            return self._degraded_admit(limits, request_id, token_estimate, now, error)
        self._recovered()
        return admission

    async def release(self, limits: Sequence[Limit], request_id: str) -> None:
        self.fallback.release([limit.divided(self.gateways) for limit in limits], request_id)
        try:
            await self.primary.release(limits, request_id)
        except UNAVAILABLE as error:
            self._failed("release", self._policies_of(limits), error)  # the lease expires on its own
        else:
            self._recovered()

    async def reconcile_tokens(
        self, limits: Sequence[Limit], estimated: float, actual: float, *, now: float | None = None
    ) -> None:
        try:
            await self.primary.reconcile_tokens(limits, estimated, actual, now=now)
        except UNAVAILABLE as error:
            local = self._with_policy(limits, FailurePolicy.LOCAL)
            self.fallback.reconcile_tokens(local, estimated, actual, now=now)
            self._failed("reconcile", self._policies_of(limits), error)
        else:
            self._recovered()

    async def reserve(
        self, budget: Budget, request_id: str, worst_case_usd: float, *, now: float | None = None
    ) -> Admission:
        try:
            admission = await self.primary.reserve(budget, request_id, worst_case_usd, now=now)
        except UNAVAILABLE as error:
            policy = self.policies[BUDGET]
            self._failed("reserve", {policy}, error)
            if policy is FailurePolicy.FAIL_CLOSED:
                return Admission(False, budget, FAIL_CLOSED_RETRY_S, degraded=True)
            if policy is FailurePolicy.LOCAL:
                local = self.fallback.reserve(budget.divided(self.gateways), request_id, worst_case_usd, now=now)
                return Admission(
                    local.allowed, local.limit, local.retry_after_s, local.remaining, local.reset_after_s, True
                )
            return Admission(True, degraded=True)
        self._recovered()
        return admission

    async def settle(self, budget: Budget, request_id: str, real_usd: float, *, now: float | None = None) -> None:
        try:
            await self.primary.settle(budget, request_id, real_usd, now=now)
        except UNAVAILABLE as error:
            # The spend is not in Redis; the ledger still has it. The reservation lapses by itself.
            if self.policies[BUDGET] is FailurePolicy.LOCAL:
                self.fallback.settle(budget.divided(self.gateways), request_id, real_usd, now=now)
            self._failed("settle", {self.policies[BUDGET]}, error)
        else:
            self._recovered()

    def _degraded_admit(
        self, limits: Sequence[Limit], request_id: str, token_estimate: float, now: float | None, error: BaseException
    ) -> Admission:
        policies = self._policies_of(limits)
        self._failed("admit", policies, error)
        closed = self._with_policy(limits, FailurePolicy.FAIL_CLOSED)
        if closed:
            return Admission(False, closed[0], FAIL_CLOSED_RETRY_S, degraded=True)
        local = [limit.divided(self.gateways) for limit in self._with_policy(limits, FailurePolicy.LOCAL)]
        decided = self.fallback.admit(local, request_id, token_estimate=token_estimate, now=now)
        return Admission(
            decided.allowed, decided.limit, decided.retry_after_s, decided.remaining, decided.reset_after_s, True
        )

    def _policies_of(self, limits: Sequence[Limit]) -> set[FailurePolicy]:
        return {self.policies[limit.name] for limit in limits}

    def _with_policy(self, limits: Sequence[Limit], policy: FailurePolicy) -> list[Limit]:
        return [limit for limit in limits if self.policies[limit.name] is policy]

    def _failed(self, op: str, policies: set[FailurePolicy], error: BaseException) -> None:
        for policy in policies:
            REDIS_ERRORS.labels(policy.value).inc()
        if not self._in_outage:
            self._in_outage = True
            applied = ", ".join(sorted(policy.value for policy in policies)) or "none"
            log.warning("redis unavailable for limits (%s: %r); applying failure policy: %s", op, error, applied)

    def _recovered(self) -> None:
        if self._in_outage:
            self._in_outage = False
            log.warning("redis reachable again for limits; shared limits enforced again")
