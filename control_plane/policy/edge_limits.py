"""The policy's optional per-client-IP limits (``listener.per_ip_limits``), enforced by Envoy.

```yaml
listener:
  per_ip_limits: true        # on, with the defaults below
  # or, each bucket on its own (a bucket written false, or left out, is not enforced):
  per_ip_limits:
    per_second: 100          # sustained requests per second from one address ...
    burst: 200               # ... and how many may come at once (default: per_second)
    per_minute: 1000
    per_hour: 50000
    trusted_proxies: 0       # proxies in front that append X-Forwarded-For (default 0: the peer address)
```

The defaults are the seed's edge numbers: NGINX's ``100 r/s burst 200`` per client IP and Kong's
``1000/min, 50000/h``. Each bucket is a token bucket that refills continuously (control_plane.resources
.edge_limits builds Envoy's local rate limit filter from it). Off when absent: a benchmark drives
thousands of requests per second from one address. Problems are reported with their line, like the
rest of the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located, join, kind_of

# Bucket field -> (window name, seconds). Order: the window a refusal most often comes from first.
WINDOWS = {"per_second": ("second", 1), "per_minute": ("minute", 60), "per_hour": ("hour", 3600)}
_FIELDS = ("per_second", "burst", "per_minute", "per_hour", "trusted_proxies")
_MAX_RATE = 1 << 30  # far above any real client, inside Envoy's uint32 token counts
MAX_TRUSTED_PROXIES = 16


@dataclass(frozen=True, slots=True)
class Window:
    """One token bucket per client address: ``rate`` requests per ``seconds``, at most ``burst`` at once."""

    name: str  # "second" | "minute" | "hour"
    seconds: int
    rate: int
    burst: int


@dataclass(frozen=True, slots=True)
class PerIpLimits:
    windows: tuple[Window, ...]
    # Proxies in front of the gateway that each append the address they saw to X-Forwarded-For: the
    # client is the address that many hops from its right. 0: the connection's peer, XFF ignored.
    trusted_proxies: int = 0

    @property
    def retry_after_seconds(self) -> int:
        """When a refused client may try again: the buckets refill continuously, so one request
        comes back after at most the slowest bucket's time per token."""
        return max(1, max(math.ceil(w.seconds / w.rate) for w in self.windows))


DEFAULT = PerIpLimits(
    (Window("second", 1, 100, 200), Window("minute", 60, 1000, 1000), Window("hour", 3600, 50_000, 50_000))
)


def parse_per_ip_limits(check: Checker, at: Located, path: str = "listener.per_ip_limits") -> PerIpLimits | None:
    """``listener.per_ip_limits`` checked: ``true`` gives DEFAULT, ``false`` None (off), a mapping
    its own buckets. None too when it has problems (recorded in ``check``)."""
    if isinstance(at.value, bool):
        return DEFAULT if at.value else None
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be true, false or a mapping of limits, got {kind_of(at.value)}")
        return None
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS)
    rates = {key: _rate(check, fields[key], join(path, key)) for key in WINDOWS if key in fields}
    burst = _rate(check, fields["burst"], join(path, "burst")) if "burst" in fields else None  # false: per_second
    per_second = fields.get("per_second")
    if burst is not None and (per_second is None or per_second.value is False):
        check.problem(fields["burst"], join(path, "burst"), "is the size of the per_second bucket: set per_second")
    trusted = 0
    if "trusted_proxies" in fields:
        value = check.integer(fields["trusted_proxies"], join(path, "trusted_proxies"), 0, MAX_TRUSTED_PROXIES)
        trusted = trusted if value is None else value
    if len(check.problems) > before:
        return None
    windows = []
    for key, (name, seconds) in WINDOWS.items():
        rate = rates.get(key)
        if rate is not None:
            size = burst if key == "per_second" and burst is not None else rate
            windows.append(Window(name, seconds, rate, size))
    if not windows:
        message = "sets no limit: give per_second, per_minute or per_hour, or write per_ip_limits: false"
        check.problem(at, path, message)
        return None
    return PerIpLimits(tuple(windows), trusted)


def _rate(check: Checker, at: Located, path: str) -> int | None:
    """A bucket's number; None when written ``false`` (that bucket off) or wrong (recorded)."""
    if at.value is False:
        return None
    if isinstance(at.value, bool) or not isinstance(at.value, int):
        check.problem(at, path, f"must be a positive integer or false, got {kind_of(at.value)}")
        return None
    return check.integer(at, path, 1, _MAX_RATE)
