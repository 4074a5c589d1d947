"""Limits the policy itself sets, beside each virtual key's own: per tenant, per model, and per key
on a model. Enforced where a key's are (extproc.auth.admission), in the same store.

```yaml
tenants:
  - name: acme                                   # the tenant of virtual keys (`keys create --tenant acme`)
    limits: {rpm: 600, rpd: 100000, tpm: 2000000, max_parallel: 50}   # shared by all acme's keys
    budget: {usd: 1000, period: month}           # day | week | month | never
    models: [claude-sonnet-4-5, gpt-4o]          # what acme's keys may use (default any)
    key_model_limits:                            # each acme key, on one model
      gpt-4o: {rpm: 20, tpm: 100000}
providers:
  - name: openai
    models:
      - {name: gpt-4o, limits: {rpm: 5000, tpm: 2000000}}   # the model, across every caller
```
"""

from __future__ import annotations

from dataclasses import dataclass

from ccr.v1 import policy_pb2
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

RATE_FIELDS = ("rpm", "rph", "rpd", "tpm", "tpd", "max_parallel")
BUDGET_PERIODS = ("day", "week", "month", "never")
_MAX = 10**12


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """(limit name, value) for each limit set; empty: none."""

    values: tuple[tuple[str, int], ...] = ()

    def to_proto(self) -> policy_pb2.RateLimits:
        return policy_pb2.RateLimits(**dict(self.values))

    def __bool__(self) -> bool:
        return bool(self.values)


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    usd: float
    period: str

    def to_proto(self) -> policy_pb2.Budget:
        return policy_pb2.Budget(usd=self.usd, period=self.period)


def parse_rate_limits(check: Checker, at: Located, path: str) -> RateLimitSpec:
    fields = check.mapping(at, path, RATE_FIELDS)
    values = []
    for name in RATE_FIELDS:
        if name in fields:
            value = check.integer(fields[name], join(path, name), 1, _MAX)
            if value is not None:
                values.append((name, value))
    if not values and isinstance(at.value, dict) and not at.value:
        check.problem(at, path, f"sets no limit: name one of {', '.join(RATE_FIELDS)}")
    return RateLimitSpec(tuple(values))


def parse_budget(check: Checker, at: Located, path: str) -> BudgetSpec | None:
    fields = check.mapping(at, path, ("usd", "period"), required=("usd",))
    usd = None
    if "usd" in fields:
        value = fields["usd"].value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            usd = float(value)
        else:
            check.problem(fields["usd"], join(path, "usd"), f"must be a number of USD >= 0, got {kind_of(value)}")
    period = "month"
    if "period" in fields:
        period = check.choice(fields["period"], join(path, "period"), BUDGET_PERIODS) or period
    return BudgetSpec(usd, period) if usd is not None else None
