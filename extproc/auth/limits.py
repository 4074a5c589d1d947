"""Rate limits and budgets, sans-IO: the rule and result types, the GCRA arithmetic and the budget
periods. Everything that decides whether a request may pass lives here; the limiters
(``local_limits`` in process, ``redis_limits`` cluster-wide) only store state and call these
functions, and the Lua scripts of ``limit_scripts`` mirror them operation for operation (the tests
replay one sequence through both and compare).

Rate limits use GCRA (the generic cell rate algorithm): one stored number per (scope, limit), the
theoretical arrival time ``tat``. A limit of L per period P has an emission interval T = P / L and a
capacity of ``burst`` requests (L by default). A request of cost n passes when the debt it would leave,
``max(tat, now) - now + n*T``, fits in ``burst*T``. Unlike fixed windows there is no boundary: in
any interval of length W at most ``burst + W/T`` requests pass, so never 2L around a minute's edge.
Tokens are the same arithmetic with the cost in tokens (admitted on an estimate; ``reconcile``
moves ``tat`` by the difference once the provider reports real usage).
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

RATE_PERIODS_S: dict[str, float] = {"rpm": 60.0, "rph": 3600.0, "rpd": 86400.0, "tpm": 60.0, "tpd": 86400.0}
TOKEN_LIMITS = frozenset({"tpm", "tpd"})
REQUEST_LIMITS = frozenset({"rpm", "rph", "rpd"})
PARALLEL = "parallel"
BUDGET = "budget"
LIMIT_NAMES = frozenset({*RATE_PERIODS_S, PARALLEL, BUDGET})
DEFAULT_LEASE_S = 600.0  # a parallel slot held longer than this is presumed leaked (crashed worker)

# Float slack when comparing a debt to a capacity: a rate like 7/min never sums exactly, and at
# today's epoch seconds (~1.8e9) a double's step is ~2.4e-7 s, so 50 increments can drift by ~1e-5 s
# (1e-6 let a 50/min limit admit 49). A tenth of a millisecond, but never more than a hundredth of
# one unit's interval (a token of a 10M tpm limit is 6 us), is far below any retry-after anyone
# acts on and never a unit of credit. The Lua scripts use the same rule (``slack``).
SLACK_S = 1e-4


def slack(interval_s: float) -> float:
    return min(SLACK_S, interval_s / 100)


BudgetPeriod = Literal["day", "week", "month", "never"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = ("day", "week", "month", "never")
NEVER_END = 253402300800.0  # a budget that never resets: one period, until 10000-01-01 UTC
MICRO_USD = 1_000_000  # budgets are counted in integer micro-dollars so that sums are exact


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit on one scope. ``scope`` names who is limited: ``key:k_abc``, ``tenant:acme``,
    ``model:gpt-4o``, ``key_model:k_abc:gpt-4o``. For rate limits ``period_s`` is the period
    (``Limit.of`` fills it from the name); for ``parallel`` it is the lease after which a slot
    nobody released comes back. ``burst`` is how many may pass at once (default: ``limit``)."""

    name: str
    scope: str
    limit: float
    period_s: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if self.name not in LIMIT_NAMES or self.name == BUDGET:
            raise ValueError(f"unknown limit {self.name!r} (budgets are Budget)")
        if not self.limit > 0 or not self.period_s > 0:
            raise ValueError(f"{self.name} on {self.scope}: limit and period must be > 0")
        if self.burst is not None and not self.burst > 0:
            raise ValueError(f"{self.name} on {self.scope}: burst must be > 0")
        hash_tag(self.scope)  # validates the scope's shape

    @classmethod
    def of(cls, name: str, scope: str, limit: float, *, burst: float | None = None) -> Limit:
        period = DEFAULT_LEASE_S if name == PARALLEL else RATE_PERIODS_S.get(name, 0.0)
        return cls(name, scope, limit, period, burst)

    @property
    def is_rate(self) -> bool:
        return self.name in RATE_PERIODS_S

    @property
    def interval_s(self) -> float:
        """GCRA emission interval: seconds one unit of cost occupies."""
        return self.period_s / self.limit

    @property
    def capacity_s(self) -> float:
        """GCRA tolerance: the debt, in seconds, the limit lets pile up."""
        return self.interval_s * (self.limit if self.burst is None else self.burst)

    def cost(self, token_estimate: float) -> float:
        return token_estimate if self.name in TOKEN_LIMITS else 1.0

    def divided(self, gateways: int) -> Limit:
        """This limit's share for one of ``gateways`` gateways enforcing it without shared state."""
        burst = None if self.burst is None else self.burst / gateways
        return Limit(self.name, self.scope, self.limit / gateways, self.period_s, burst)


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending cap in USD on a scope (``key:...`` or ``tenant:...``) per UTC calendar period."""

    scope: str
    limit_usd: float
    period: BudgetPeriod

    def __post_init__(self) -> None:
        if self.period not in BUDGET_PERIODS:
            raise ValueError(f"budget period must be one of {BUDGET_PERIODS}, not {self.period!r}")
        if not self.limit_usd >= 0:
            raise ValueError(f"budget on {self.scope}: limit must be >= 0")
        hash_tag(self.scope)

    @property
    def name(self) -> str:
        return BUDGET

    @property
    def limit_micro(self) -> int:
        return to_micro_usd(self.limit_usd)

    def divided(self, gateways: int) -> Budget:
        return Budget(self.scope, self.limit_usd / gateways, self.period)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to one check. ``limit`` is the rule that refused (None when allowed, or when
    refused by a failure policy with no single rule to blame); ``remaining`` and ``reset_after_s``
    hold, per limit name, the tightest scope's figures (what rate-limit headers report)."""

    allowed: bool
    limit: Limit | Budget | None = None
    retry_after_s: float = 0.0
    remaining: dict[str, float] = field(default_factory=dict)
    reset_after_s: dict[str, float] = field(default_factory=dict)
    degraded: bool = False  # decided by a failure policy, not by the shared store


ALLOWED = Admission(True)


# -- GCRA ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GcraStep:
    allowed: bool
    tat: float  # the theoretical arrival time to store (the old one when refused)
    retry_after_s: float  # 0 when allowed
    debt_s: float  # max(tat, now) - now after the step: the time until the limit is whole again


def gcra_step(tat: float, now: float, interval_s: float, capacity_s: float, cost: float) -> GcraStep:
    """Charge ``cost`` units at ``now`` if the limit has room. A cost larger than the whole
    capacity (a token estimate above the tpm limit) passes only when the limit is untouched, and
    then blocks what follows until it is paid off, instead of never passing."""
    base = max(tat, now)
    debt = base - now
    increment = cost * interval_s
    after = debt + increment
    if after - capacity_s <= slack(interval_s) or (debt <= 0 and increment > capacity_s):
        return GcraStep(True, base + increment, 0.0, after)
    retry = debt if increment > capacity_s else after - capacity_s
    return GcraStep(False, tat, retry, debt)


def gcra_adjust(tat: float, now: float, interval_s: float, delta: float) -> float:
    """Move ``tat`` by ``delta`` units (real tokens minus the estimate, or minus a refund); never
    below ``now``, which would bank credit beyond the capacity."""
    return max(max(tat, now) + delta * interval_s, now)


def gcra_remaining(limit: Limit, debt_s: float) -> float:
    """Whole units of cost still available after a step that left ``debt_s``."""
    return max(0.0, math.floor((limit.capacity_s - debt_s + slack(limit.interval_s)) / limit.interval_s))


@dataclass(slots=True)
class AdmissionBuilder:
    """Folds per-limit outcomes into one Admission: the refusal with the longest wait wins (no
    point retrying before every limit has room), headers report the tightest scope per name."""

    refused_by: Limit | Budget | None = None
    retry_after_s: float = 0.0
    remaining: dict[str, float] = field(default_factory=dict)
    reset_after_s: dict[str, float] = field(default_factory=dict)

    def add(self, limit: Limit | Budget, allowed: bool, retry_after_s: float, remaining: float, reset_s: float) -> None:
        if not allowed and (self.refused_by is None or retry_after_s > self.retry_after_s):
            self.refused_by, self.retry_after_s = limit, retry_after_s
        name = limit.name
        if name not in self.remaining or remaining < self.remaining[name]:
            self.remaining[name] = remaining
            self.reset_after_s[name] = reset_s

    def build(self) -> Admission:
        allowed = self.refused_by is None
        return Admission(allowed, self.refused_by, self.retry_after_s, self.remaining, self.reset_after_s)


# -- scopes and Redis key layout -----------------------------------------------------------------


def hash_tag(scope: str) -> str:
    """The owner of a scope, which decides the Redis Cluster hash slot: ``key_model:k_abc:gpt-4o``
    belongs with ``key:k_abc`` so that one script sees every limit of a key in one slot."""
    kind, sep, rest = scope.partition(":")
    if not sep or not rest or not kind or "{" in scope or "}" in scope:
        raise ValueError(f"scope must look like kind:id (no braces), got {scope!r}")
    owner_kind = kind.split("_", 1)[0]
    owner_id = rest.split(":", 1)[0] if "_" in kind else rest
    return f"ccr:{owner_kind}:{owner_id}"


def redis_key(prefix: str, scope: str, *parts: str) -> str:
    """``<prefix>{ccr:key:k_abc}:key_model:k_abc:gpt-4o:rpm``: the braces make Redis Cluster hash
    only the owner, so a check's keys share one slot."""
    return ":".join([f"{prefix}{{{hash_tag(scope)}}}", scope, *parts])


# -- budget periods ------------------------------------------------------------------------------


def period_window(period: BudgetPeriod, now: float) -> tuple[float, float]:
    """The UTC calendar period holding ``now``: (start, end) in epoch seconds, start <= now < end.
    Weeks are ISO weeks (Monday 00:00 UTC); ``never`` is one period from the epoch on."""
    if period == "never":
        return 0.0, NEVER_END
    # Whole seconds: fromtimestamp rounds, and 23:59:59.9999996 must stay in its own day.
    moment = datetime.fromtimestamp(math.floor(now), UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = midnight, midnight + timedelta(days=1)
    elif period == "week":
        start = midnight - timedelta(days=moment.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = midnight.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp(), end.timestamp()


def to_micro_usd(usd: float) -> int:
    return round(usd * MICRO_USD)


def budget_remaining_usd(budget: Budget, spent_micro: int, reserved_micro: int) -> float:
    return max(0, budget.limit_micro - spent_micro - reserved_micro) / MICRO_USD
