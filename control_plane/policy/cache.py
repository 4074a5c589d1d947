"""The response cache in the policy: a default, and each model's and each tenant's override.

```yaml
cache: {ttl: 1h, max_entry_bytes: 1MiB, when: deterministic}   # the default (none: off)
providers:
  - name: anthropic
    models:
      - {name: claude-sonnet-4-5, cache: {ttl: 10m}}           # when and size from the default
      - {name: claude-opus-4-1, cache: false}                  # never cached
tenants:
  - name: acme
    cache: {when: always}                                      # acme's requests, on every model
  - name: audit
    cache: false                                               # never cached for audit
```

Each level is ``false`` (off), ``true`` (on, everything inherited) or a mapping of the fields it
sets: ``ttl`` (``90s``, ``30m``, ``1h``, ``1d``, or a number of seconds; a request's
``x-ccr-cache-ttl`` may shorten it, never lengthen it), ``max_entry_bytes`` (``262144``,
``256KiB``, ``1MiB``: larger answers are not stored) and ``when`` (``deterministic``: only
requests at temperature 0; ``always``). The nearest level that is written decides whether caching
is on (a tenant's over a model's over the default), and each field comes from the nearest level
that sets it, else from ext_proc's defaults (1h, 1MiB, deterministic). ext_proc resolves the levels
per request (extproc.cache.rules.resolve); the control plane only checks and carries them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from ccr.v1 import policy_pb2
from control_plane.policy.auth_limits import REDIS_SCHEMES
from control_plane.policy.storage import _connection, _size
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

WHEN = ("deterministic", "always")  # extproc.cache.rules.WHEN: the two processes share only the proto
_FIELDS = ("ttl", "max_entry_bytes", "when", "dedup_wait")
# Top level only, read when the workers start: where entries are kept.
_STORE_FIELDS = ("redis", "memory", "redis_timeout")
DEFAULT_DEDUP_WAIT_S = 30.0  # extproc.cache.rules.DEFAULT_DEDUP_WAIT_S
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
DEFAULT_REDIS_TIMEOUT_S = 0.05  # a cache answer is worth tens of milliseconds, not more  # each worker's in-process store when no Redis is named
_DAY_S = 86_400
_MAX_TTL_S = 30 * _DAY_S
# A waiting request holds its decision call open: Envoy's Lua filter allows the hop this much more
# (control_plane.resources.decision_hop.decide_timeout_ms).
_MAX_DEDUP_WAIT_S = 600
_MIN_ENTRY_BYTES = 1024
_MAX_ENTRY_BYTES = 512 * 1024 * 1024  # Redis's largest string
_TTL = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": _DAY_S}


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """One level's ``cache:``: off, or on with the fields it sets (None: inherited)."""

    off: bool = False
    ttl_s: float | None = None
    max_entry_bytes: int | None = None
    when: str | None = None
    dedup_wait_s: float | None = None  # 0: identical requests never wait for one in flight
    # The top level's store (read when the workers start; never sent to them in the policy):
    redis: str | None = None  # as written, ${VAR}s unexpanded; None: each worker's memory
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    # How long a lookup, store or claim waits for Redis before the cache is bypassed for it.
    redis_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S

    def to_proto(self) -> policy_pb2.CacheRules:
        """Unset fields travel as 0 and "" (proto3 has no "unset"): neither is a valid value."""
        rules = policy_pb2.CacheRules(
            ttl_s=self.ttl_s or 0.0, max_entry_bytes=self.max_entry_bytes or 0, when=self.when or "", off=self.off
        )
        if self.dedup_wait_s is not None:  # optional in the proto: 0 means "never wait", not unset
            rules.dedup_wait_s = self.dedup_wait_s
        return rules


def cache_proto(spec: CacheSpec | None) -> policy_pb2.CacheRules | None:
    return spec.to_proto() if spec is not None else None


def parse_cache(check: Checker, at: Located, path: str, top_level: bool = False) -> CacheSpec | None:
    """A level's ``cache:``; None when it has problems (recorded in ``check``). The top level also
    names the store: ``redis`` (a URL, as ``auth.limits.redis``) or ``memory`` (each worker's
    in-process store, default 64MiB)."""
    if isinstance(at.value, bool):
        return CacheSpec(off=not at.value)
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be false, true or a mapping of {', '.join(_FIELDS)}, got {kind_of(at.value)}")
        return None
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS + _STORE_FIELDS if top_level else _FIELDS)
    ttl_s = _ttl(check, fields["ttl"], join(path, "ttl")) if "ttl" in fields else None
    size = (
        _size(check, fields["max_entry_bytes"], join(path, "max_entry_bytes"), _MIN_ENTRY_BYTES, _MAX_ENTRY_BYTES)
        if "max_entry_bytes" in fields
        else None
    )
    when = check.choice(fields["when"], join(path, "when"), WHEN) if "when" in fields else None
    dedup_wait_s = None
    if "dedup_wait" in fields:
        dedup_wait_s = _duration(check, fields["dedup_wait"], join(path, "dedup_wait"), 0, _MAX_DEDUP_WAIT_S)
    redis = None
    if "redis" in fields:
        redis = _connection(check, fields["redis"], join(path, "redis"), REDIS_SCHEMES)
    memory = DEFAULT_MEMORY_BYTES
    if "memory" in fields:
        memory = _size(check, fields["memory"], join(path, "memory")) or DEFAULT_MEMORY_BYTES
    redis_timeout_s = DEFAULT_REDIS_TIMEOUT_S
    if "redis_timeout" in fields:
        redis_timeout_s = _milliseconds(check, fields["redis_timeout"], join(path, "redis_timeout"))
    if len(check.problems) > before:
        return None
    return CacheSpec(False, ttl_s, size, when, dedup_wait_s, redis, memory, redis_timeout_s)


def _milliseconds(check: Checker, at: Located, path: str) -> float:
    """``50ms``, ``0.5s`` or a number of milliseconds, 1 ms to 10 s."""
    value = at.value
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$", str(value)) if not isinstance(value, bool) else None
    if match is None:
        check.problem(at, path, f"must be a duration like 50ms or 0.5s, got {value!r}")
        return DEFAULT_REDIS_TIMEOUT_S
    seconds = float(match[1]) / (1 if match[2] == "s" else 1000)
    if not 0.001 <= seconds <= 10:
        check.problem(at, path, f"must be between 1ms and 10s, got {value}")
    return seconds


def _ttl(check: Checker, at: Located, path: str) -> float | None:
    return _duration(check, at, path, 1, _MAX_TTL_S)


def _duration(check: Checker, at: Located, path: str, least_s: int, most_s: int) -> float | None:
    """``90s``, ``30m``, ``1h``, ``1d`` (decimals allowed: ``1.5h``), or a number of seconds."""
    value = at.value
    seconds: Decimal | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = Decimal(value)  # YAML's .nan and .inf too: refused below
    elif isinstance(value, str) and (match := _TTL.match(value.strip())):
        seconds = Decimal(match[1]) * _UNIT_S[match[2]]
    if seconds is None or not seconds.is_finite():
        shown = repr(value) if isinstance(value, str) else kind_of(value)
        check.problem(at, path, f"must be a duration like 90s, 30m, 1h or 1d, or a number of seconds, got {shown}")
        return None
    if not least_s <= seconds <= most_s:
        check.problem(at, path, f"must be between {_shown(least_s)} and {_shown(most_s)}, got {value}")
        return None
    return float(seconds)


def _shown(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"


def longest_dedup_wait_s(specs: list[CacheSpec | None]) -> float:
    """The longest a request may wait for an identical one in flight under these levels (the
    default extproc.cache.rules.DEFAULT_DEDUP_WAIT_S where caching is on and no level says)."""
    longest = 0.0
    for spec in specs:
        if spec is not None and not spec.off:
            longest = max(longest, spec.dedup_wait_s if spec.dedup_wait_s is not None else DEFAULT_DEDUP_WAIT_S)
    return longest
