"""What a keyed request may spend, the check against its limits, and what it holds until its usage
arrives. Sans-IO: the limiters are passed in (``local_limits.LocalLimiter`` in process, or anything
with ``redis_limits.GuardedLimiter``'s async methods), time is theirs.

A routed request of a key with limits becomes a ``Charge``: the key's rate limits (rpm, tpm,
max_parallel as a parallel slot) and its budget, with the worst case it may cost. Admission reserves
the worst case of the budget first, then takes the rate limits; when a limit refuses, the
reservation is cancelled, so a refused request holds nothing. An admitted charge is ``held`` by the
worker that admitted it until the request's usage record (Envoy's access log, which reaches every
worker for keyed requests) settles it: tpm/tpd move by the real tokens minus the estimate, the
parallel slot is given back, the budget is charged the real cost in place of the reservation.
Charges whose record never comes (an Envoy crash) are dropped after ``HELD_FOR_S``; the limiters'
own leases and reservation TTLs give their share back on their own.

The worst case of a request: its estimated input at the input price plus ``max_tokens`` (or, when
the client set none, ``DEFAULT_MAX_OUTPUT_TOKENS``) at the output price, for the dearest provider
a fallback chain may reach.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ccr.v1.pricing import Prices, cost_usd
from extproc.auth.keys import VirtualKey
from extproc.auth.limits import ALLOWED, PARALLEL, Admission, Budget, Limit
from extproc.auth.local_limits import LocalLimiter
from extproc.plan import Chain, Forward

DEFAULT_MAX_OUTPUT_TOKENS = 4096  # the worst case of a request that sets no max_tokens
HELD_FOR_S = 900.0  # as long as the limiters' reservation TTL: a record later than this finds nothing
_MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class SharedLimiter(Protocol):
    """The cluster-wide limiter (``redis_limits.GuardedLimiter``): its failure policy inside."""

    async def admit(self, limits: Sequence[Limit], request_id: str, *, token_estimate: float = 0.0) -> Admission: ...

    async def release(self, limits: Sequence[Limit], request_id: str) -> None: ...

    async def reconcile_tokens(self, limits: Sequence[Limit], estimated: float, actual: float) -> None: ...

    async def reserve(self, budget: Budget, request_id: str, worst_case_usd: float) -> Admission: ...

    async def settle(self, budget: Budget, request_id: str, real_usd: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Charge:
    """What one routed request of ``key`` is checked against and, once admitted, holds: the rate
    limits of every scope it counts in (the key, its tenant, the key on the model, the model) and
    the budgets it draws on (the key's, its tenant's)."""

    key: VirtualKey
    request_id: str
    limits: tuple[Limit, ...]
    budgets: tuple[Budget, ...]
    estimate: int  # input tokens charged to tpm/tpd on admission
    worst_case_usd: float  # reserved from each budget on admission

    @property
    def budget(self) -> Budget | None:
        """The key's own budget (the first), for the headers and alerts."""
        return self.budgets[0] if self.budgets else None


def limits_of(key: VirtualKey, workers: int = 1) -> tuple[Limit, ...]:
    """``key``'s rate limits and parallel slots; each divided by ``workers`` when they share no state."""
    values = (
        ("rpm", key.rpm),
        ("rph", key.rph),
        ("rpd", key.rpd),
        ("tpm", key.tpm),
        ("tpd", key.tpd),
        (PARALLEL, key.max_parallel),
    )
    return scoped_limits(f"key:{key.key_id}", [(n, v) for n, v in values if v is not None], workers)


def scoped_limits(scope: str, values: Iterable[tuple[str, float]], workers: int = 1) -> tuple[Limit, ...]:
    """Limits of one scope (``tenant:acme``, ``model:openai/gpt-4o``, ``key_model:k:gpt-4o``) from
    (name, value) pairs, each divided by ``workers`` when they share no state."""
    return tuple(Limit.of(name, scope, value).divided(workers) for name, value in values)


def budget_of(key: VirtualKey, workers: int = 1) -> Budget | None:
    """``key``'s budget, or None. With no period it never resets."""
    if key.budget_usd is None:
        return None
    return scoped_budget(f"key:{key.key_id}", key.budget_usd, key.budget_period or "never", workers)


def scoped_budget(scope: str, usd: float, period: str, workers: int = 1) -> Budget:
    budget = Budget(scope, usd, period)  # type: ignore[arg-type]
    return budget.divided(workers) if workers > 1 else budget


def worst_case_usd(outcome: Forward | Chain, body: Mapping[str, object]) -> float:
    """The most this request can cost: its estimated input plus its output cap, at the prices of
    the dearest route it may take."""
    estimate = outcome.context.estimate
    output = next((v for f in _MAX_TOKENS_FIELDS if isinstance(v := body.get(f), int) and v > 0), None)
    output_cap = output if output is not None else DEFAULT_MAX_OUTPUT_TOKENS
    routes = outcome.decision.chain if isinstance(outcome, Chain) else (outcome.route,)
    return max((_cost(route.prices, estimate, output_cap) for route in routes), default=0.0)


def _cost(prices: Prices | None, input_tokens: int, output_tokens: int) -> float:
    return cost_usd(prices, input_tokens, output_tokens, 0, 0)


def admit_local(limiter: LocalLimiter, charge: Charge) -> Admission:
    """The check in this process: each budget's worst case reserved, then the rate limits taken;
    a refusal of any leaves nothing held."""
    reserved: list[Admission] = []
    for index, budget in enumerate(charge.budgets):
        admission = limiter.reserve(budget, charge.request_id, charge.worst_case_usd)
        if not admission.allowed:
            for taken in charge.budgets[:index]:
                limiter.settle(taken, charge.request_id, 0.0)
            return admission
        reserved.append(admission)
    admission = (
        limiter.admit(charge.limits, charge.request_id, token_estimate=charge.estimate) if charge.limits else ALLOWED
    )
    if not admission.allowed:
        for taken in charge.budgets:
            limiter.settle(taken, charge.request_id, 0.0)
    return _merged(reserved, admission)


async def admit_shared(limiter: SharedLimiter, charge: Charge) -> Admission:
    """The same check against the cluster-wide limiter."""
    reserved: list[Admission] = []
    for index, budget in enumerate(charge.budgets):
        admission = await limiter.reserve(budget, charge.request_id, charge.worst_case_usd)
        if not admission.allowed:
            for taken in charge.budgets[:index]:
                await limiter.settle(taken, charge.request_id, 0.0)
            return admission
        reserved.append(admission)
    admission = ALLOWED
    if charge.limits:
        admission = await limiter.admit(charge.limits, charge.request_id, token_estimate=charge.estimate)
    if not admission.allowed:
        for taken in charge.budgets:
            await limiter.settle(taken, charge.request_id, 0.0)
    return _merged(reserved, admission)


def _merged(reserved: Sequence[Admission], admission: Admission) -> Admission:
    """One admission for the headers: the rate limits' figures and the key's budget's (the first)."""
    if not admission.allowed or not reserved:
        return admission
    budget = reserved[0]
    return Admission(
        True,
        remaining={**budget.remaining, **admission.remaining},
        reset_after_s={**budget.reset_after_s, **admission.reset_after_s},
        degraded=any(r.degraded for r in reserved) or admission.degraded,
    )


@dataclass(frozen=True, slots=True)
class Spent:
    """What a finished request used, from its usage record."""

    tokens: int  # input (cached included) + output, as tpm counts them
    cost_usd: float


def settle_local(limiter: LocalLimiter, charge: Charge, spent: Spent) -> None:
    limiter.reconcile_tokens(charge.limits, charge.estimate, spent.tokens)
    limiter.release(charge.limits, charge.request_id)
    for budget in charge.budgets:
        limiter.settle(budget, charge.request_id, spent.cost_usd)


async def settle_shared(limiter: SharedLimiter, finished: Sequence[tuple[Charge, Spent]]) -> None:
    """Settle a batch: each set of limits gets one token correction (the sum of its requests'; GCRA
    moves by the total either way), each parallel slot and budget reservation is its request's."""
    corrections: dict[tuple[Limit, ...], float] = {}
    for charge, spent in finished:
        corrections[charge.limits] = corrections.get(charge.limits, 0.0) + spent.tokens - charge.estimate
    for limits, delta in corrections.items():
        if delta:
            await limiter.reconcile_tokens(limits, 0.0, delta)
    for charge, spent in finished:
        if any(limit.name == PARALLEL for limit in charge.limits):
            await limiter.release(charge.limits, charge.request_id)
        for budget in charge.budgets:
            await limiter.settle(budget, charge.request_id, spent.cost_usd)


class HeldCharges:
    """The admitted charges of this worker, by request id, until their usage settles them; the
    oldest dropped once older than ``held_for_s`` (their record is not coming)."""

    def __init__(self, held_for_s: float = HELD_FOR_S) -> None:
        self.held_for_s = held_for_s
        self._charges: OrderedDict[str, tuple[Charge, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._charges)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._charges

    def hold(self, charge: Charge, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._charges[charge.request_id] = (charge, now)
        while self._charges:
            _, (_, since) = next(iter(self._charges.items()))
            if since > now - self.held_for_s:
                break
            self._charges.popitem(last=False)

    def take(self, request_id: str) -> Charge | None:
        held = self._charges.pop(request_id, None)
        return held[0] if held is not None else None
