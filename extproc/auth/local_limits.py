"""Limits and budgets held in this process: the embedded default (no Redis configured) and the
``local`` failure fallback (with every limit divided by the number of gateways). Synchronous and
O(number of limits) per check; the same operations as ``redis_limits.RedisLimiter``, whose Lua
does what these methods do. Not thread-safe: one per event loop.

Memory is bounded: rate states live in an LRU of ``max_scopes`` entries. An entry whose ``tat`` has
passed is equivalent to no entry, so evicting idle scopes loses nothing; only when every entry is
busy does eviction forgive the least recently used scope's debt.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from extproc.auth.limits import (
    ALLOWED,
    PARALLEL,
    TOKEN_LIMITS,
    Admission,
    AdmissionBuilder,
    Budget,
    Limit,
    budget_remaining_usd,
    gcra_adjust,
    gcra_remaining,
    gcra_step,
    period_window,
    to_micro_usd,
)

DEFAULT_RESERVATION_TTL_S = 900.0  # longer than any request; a reservation never settled then lapses
SETTLED_MEMORY_S = 86400.0  # how long a settled request id is remembered (settle is idempotent)


@dataclass(slots=True)
class _BudgetPeriodState:
    end: float
    spent_micro: int = 0
    reserved_micro: int = 0
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)  # request id -> (micro, expiry)
    settled: dict[str, float] = field(default_factory=dict)  # request id -> when settled

    def drop_expired(self, now: float) -> None:
        for request_id, (micro, expiry) in list(self.reservations.items()):
            if expiry <= now:
                del self.reservations[request_id]
                self.reserved_micro -= micro
        if len(self.settled) > 1024:
            self.settled = {rid: at for rid, at in self.settled.items() if at > now - SETTLED_MEMORY_S}


class LocalLimiter:
    def __init__(
        self,
        *,
        max_scopes: int = 100_000,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_scopes = max_scopes
        self.reservation_ttl_s = reservation_ttl_s
        self.clock = clock
        self._tats: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._leases: dict[str, dict[str, float]] = {}  # scope -> request id -> lease expiry
        self._budgets: OrderedDict[tuple[str, str, float], _BudgetPeriodState] = OrderedDict()

    # -- rate limits and parallel slots --------------------------------------------------------

    def admit(
        self, limits: Sequence[Limit], request_id: str, *, token_estimate: float = 0.0, now: float | None = None
    ) -> Admission:
        """Charge every limit or none: one request, and ``token_estimate`` tokens to tpm/tpd."""
        if not limits:
            return ALLOWED
        now = self.clock() if now is None else now
        builder = AdmissionBuilder()
        steps = []
        for limit in limits:
            if limit.name == PARALLEL:
                leases = self._live_leases(limit.scope, now)
                held = request_id in leases
                allowed = held or len(leases) < limit.limit
                in_use = len(leases) + (0 if held else 1) if allowed else len(leases)
                retry = 0.0 if allowed else min(1.0, min(leases.values()) - now)
                builder.add(limit, allowed, retry, max(0.0, limit.limit - in_use), 0.0)
                steps.append(None)
                continue
            state_key = (limit.scope, limit.name)
            step = gcra_step(
                self._tats.get(state_key, now), now, limit.interval_s, limit.capacity_s, limit.cost(token_estimate)
            )
            builder.add(limit, step.allowed, step.retry_after_s, gcra_remaining(limit, step.debt_s), step.debt_s)
            steps.append(step)
        admission = builder.build()
        if admission.allowed:
            for limit, step in zip(limits, steps, strict=True):
                if step is None:
                    self._leases.setdefault(limit.scope, {})[request_id] = now + limit.period_s
                else:
                    self._store_tat((limit.scope, limit.name), step.tat, now)
        return admission

    def release(self, limits: Sequence[Limit], request_id: str) -> None:
        """Give back the parallel slots ``request_id`` holds (idempotent)."""
        for limit in limits:
            if limit.name == PARALLEL and (leases := self._leases.get(limit.scope)) is not None:
                leases.pop(request_id, None)
                if not leases:
                    del self._leases[limit.scope]

    def reconcile_tokens(
        self, limits: Sequence[Limit], estimated: float, actual: float, *, now: float | None = None
    ) -> None:
        """Charge tpm/tpd the difference between the provider's real count and the estimate."""
        now = self.clock() if now is None else now
        for limit in limits:
            if limit.name in TOKEN_LIMITS:
                state_key = (limit.scope, limit.name)
                tat = gcra_adjust(self._tats.get(state_key, now), now, limit.interval_s, actual - estimated)
                self._store_tat(state_key, tat, now)

    def _live_leases(self, scope: str, now: float) -> dict[str, float]:
        leases = self._leases.get(scope)
        if leases is None:
            return {}
        expired = [rid for rid, expiry in leases.items() if expiry <= now]
        for rid in expired:
            del leases[rid]
        return leases

    def _store_tat(self, state_key: tuple[str, str], tat: float, now: float) -> None:
        if tat <= now:
            self._tats.pop(state_key, None)  # a limit at rest is the same as no entry
            return
        self._tats[state_key] = tat
        self._tats.move_to_end(state_key)
        # Drop a couple of idle entries from the cold end on each write (O(1)); under pressure
        # evict the coldest even if busy, forgiving its debt.
        for _ in range(2):
            coldest_key, coldest_tat = next(iter(self._tats.items()))
            if coldest_tat > now:
                break
            del self._tats[coldest_key]
        while len(self._tats) > self.max_scopes:
            self._tats.popitem(last=False)

    # -- budgets -------------------------------------------------------------------------------

    def reserve(self, budget: Budget, request_id: str, worst_case_usd: float, *, now: float | None = None) -> Admission:
        """Hold ``worst_case_usd`` of the budget's current period for ``request_id`` if spent +
        reserved + this fits; otherwise refuse until the period ends. Idempotent by request id."""
        now = self.clock() if now is None else now
        state = self._period_state(budget, now)
        state.drop_expired(now)
        micro = to_micro_usd(worst_case_usd)
        if request_id in state.reservations or request_id in state.settled:
            allowed = True
        else:
            allowed = state.spent_micro + state.reserved_micro + micro <= budget.limit_micro
            if allowed:
                state.reservations[request_id] = (micro, now + self.reservation_ttl_s)
                state.reserved_micro += micro
        builder = AdmissionBuilder()
        remaining = budget_remaining_usd(budget, state.spent_micro, state.reserved_micro)
        builder.add(budget, allowed, 0.0 if allowed else state.end - now, remaining, state.end - now)
        return builder.build()

    def settle(self, budget: Budget, request_id: str, real_usd: float, *, now: float | None = None) -> None:
        """Replace ``request_id``'s reservation by its real cost (0 to cancel). Idempotent."""
        now = self.clock() if now is None else now
        state = self._period_state(budget, now)
        if request_id in state.settled:
            return
        if (held := state.reservations.pop(request_id, None)) is not None:
            state.reserved_micro -= held[0]
        state.spent_micro += to_micro_usd(real_usd)
        state.settled[request_id] = now
        state.drop_expired(now)

    def spent_usd(self, budget: Budget, *, now: float | None = None) -> tuple[float, float]:
        """(spent, reserved) in the budget's current period."""
        state = self._period_state(budget, self.clock() if now is None else now)
        return state.spent_micro / 1e6, state.reserved_micro / 1e6

    def _period_state(self, budget: Budget, now: float) -> _BudgetPeriodState:
        start, end = period_window(budget.period, now)
        state_key = (budget.scope, budget.period, start)
        state = self._budgets.get(state_key)
        if state is None:
            state = self._budgets[state_key] = _BudgetPeriodState(end)
            while len(self._budgets) > self.max_scopes:
                self._budgets.popitem(last=False)
        self._budgets.move_to_end(state_key)
        return state
