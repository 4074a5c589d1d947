"""The policy's ``auth.limits``: where the keys' limits and budgets are counted, and what happens
when that store does not answer.

```yaml
auth:
  limits:
    redis: redis://127.0.0.1:6379/0     # or redis+sentinel://h1:26379,h2:26379/mymaster, redis+cluster://h1:7000,h2:7001
    gateways: 3                         # gateways sharing this Redis: the `local` fallback enforces limit / 3
    timeout_ms: 50                      # one round trip's budget on the request path
    on_redis_failure: {rpm: local, tpm: fail_open, parallel: local, budget: fail_closed}
    budget_alert_at: 0.8                # a warning (and ccr_auth_budget_alerts_total) once 80% of a budget is spent
```

Without ``limits.redis`` each worker counts in process (its share of every limit: limit / workers).
With it, limits hold across workers and gateways. ``on_redis_failure`` names, per limit type, what a
request gets while Redis does not answer: ``fail_closed`` (503 in the client's format), ``fail_open``
(admitted), ``local`` (counted in the worker with the limit divided by ``gateways`` x workers); the
defaults are ``local`` for rates and parallel slots, ``fail_closed`` for budgets. Read when the workers
start (changing it needs a restart); the URL may be a ``${VAR}`` reference, expanded by the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.policy.storage import _connection
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

FAILURE_POLICIES = ("fail_closed", "fail_open", "local")
LIMIT_TYPES = ("rpm", "rph", "rpd", "tpm", "tpd", "parallel", "budget")
_FIELDS = ("redis", "gateways", "timeout_ms", "on_redis_failure", "budget_alert_at")
DEFAULT_BUDGET_ALERT_AT = 0.8
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster")


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    redis: str | None = None  # as written: ${VAR} references unexpanded; None: limits in process
    gateways: int = 1
    timeout_ms: int = 50
    on_redis_failure: tuple[tuple[str, str], ...] = ()  # (limit type, policy): the policy's overrides
    budget_alert_at: float = DEFAULT_BUDGET_ALERT_AT

    def failure_argument(self) -> str:
        """``rpm=local,budget=fail_closed``: how a worker is told (extproc.auth.redis_limits.FailurePolicy)."""
        return ",".join(f"{name}={policy}" for name, policy in self.on_redis_failure)


def parse_limits(check: Checker, at: Located, path: str) -> LimitsSpec:
    fields = check.mapping(at, path, _FIELDS)
    redis = None
    if "redis" in fields:
        redis = _connection(check, fields["redis"], join(path, "redis"), REDIS_SCHEMES)
    gateways = 1
    if "gateways" in fields:
        gateways = check.integer(fields["gateways"], join(path, "gateways"), 1, 10_000) or 1
    timeout_ms = 50
    if "timeout_ms" in fields:
        timeout_ms = check.integer(fields["timeout_ms"], join(path, "timeout_ms"), 1, 5_000) or 50
    failures: list[tuple[str, str]] = []
    if "on_redis_failure" in fields:
        failure_path = join(path, "on_redis_failure")
        for name, value in check.mapping(fields["on_redis_failure"], failure_path, LIMIT_TYPES).items():
            if (policy := check.choice(value, join(failure_path, name), FAILURE_POLICIES)) is not None:
                failures.append((name, policy))
    alert_at = DEFAULT_BUDGET_ALERT_AT
    if "budget_alert_at" in fields:
        at_alert = fields["budget_alert_at"]
        value = at_alert.value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
            alert_at = float(value)
        else:
            shown = repr(value) if isinstance(value, (int, float, str)) else kind_of(value)
            check.problem(at_alert, join(path, "budget_alert_at"), f"must be a fraction in (0, 1], got {shown}")
    return LimitsSpec(redis, gateways, timeout_ms, tuple(failures), alert_at)
