"""What the policy says about caching one request, and what the request itself asks for.

``CacheRules`` are the policy's resolved rules for one tenant on one model (``resolve`` merges the
levels: the tenant's ``cache:`` over the model's over the policy's default, each field inherited
from the nearest level that sets it). ``directive`` reads them together with the request's headers
and body and says whether to look the request up, whether to store its answer, and for how long.

Per request:

- ``cache-control: no-store``: neither looked up nor stored;
- ``cache-control: no-cache``: not looked up, but the fresh answer is stored (a refresh);
- ``x-ccr-cache-ttl: <seconds>``: that TTL for the stored answer, when 0 < seconds <= the policy's
  ttl (the policy's ttl is the most a request may ask for); any other value is ignored, and the
  directive's reason says so.

Pure: values in, a value out. Header names are lowercase (the decision hop lowercases them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.cache.key import is_deterministic
from extproc.translate.base import Api

DETERMINISTIC = "deterministic"  # cache only answers at temperature 0 (extproc.cache.key.is_deterministic)
ALWAYS = "always"  # cache every answer, whatever its sampling
WHEN = (DETERMINISTIC, ALWAYS)

# What a level of the policy that turns caching on without saying more gets (the policy's `cache: {}`).
DEFAULT_TTL_S = 3600.0
DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024
DEFAULT_WHEN = DETERMINISTIC
# How long identical requests wait for the first one in flight (extproc.cache.inflight): long
# enough for most answers; a follower that waits this long goes to the provider itself.
DEFAULT_DEDUP_WAIT_S = 30.0

TTL_HEADER = "x-ccr-cache-ttl"
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*$")  # no sign, exponent, inf or nan

# CacheDirective.reason values.
OFF = "off"
NOT_DETERMINISTIC = "not deterministic"
NO_STORE = "no-store"
NO_CACHE = "no-cache"
ON = "on"
TTL_IGNORED = "x-ccr-cache-ttl ignored"  # appended: "on, x-ccr-cache-ttl ignored"
# A Responses request whose answer the gateway stores (store not false, the policy's responses.store
# on): each gets its own stored response (its id readable and continued by its own key only), which
# a hit, the answer of another request, is not.
KEPT = "kept"


@dataclass(frozen=True, slots=True)
class CacheRules:
    """The rules in force for one tenant on one model."""

    ttl_s: float  # how long an answer is kept; also the most a request's x-ccr-cache-ttl may ask
    max_entry_bytes: int  # larger answers are not stored
    when: str  # "deterministic" | "always"
    dedup_wait_s: float = DEFAULT_DEDUP_WAIT_S  # 0: identical requests never wait for one in flight

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {self.ttl_s!r}")
        if self.max_entry_bytes < 1:
            raise ValueError(f"max_entry_bytes must be >= 1, got {self.max_entry_bytes!r}")
        if self.when not in WHEN:
            raise ValueError(f"when must be one of {', '.join(WHEN)}, got {self.when!r}")
        if not 0 <= self.dedup_wait_s < float("inf"):
            raise ValueError(f"dedup_wait_s must be >= 0, got {self.dedup_wait_s!r}")

    @property
    def max_ttl_s(self) -> float:
        """The longest TTL a request may ask for: the policy's own ttl (a request may shorten how
        long its answer is kept, never lengthen it past what the operator set)."""
        return self.ttl_s


@dataclass(frozen=True, slots=True)
class CacheSetting:
    """One level's ``cache:`` as the policy writes it: off (``cache: false``), or on with the
    fields it sets (None: inherited from the level above)."""

    off: bool = False
    ttl_s: float | None = None
    max_entry_bytes: int | None = None
    when: str | None = None
    dedup_wait_s: float | None = None


@dataclass(frozen=True, slots=True)
class CacheDirective:
    lookup: bool  # answer from the cache when an entry is there
    store: bool  # store the provider's answer
    ttl_s: float  # how long a stored answer is kept (0 when nothing is stored)
    reason: str  # OFF, NOT_DETERMINISTIC, NO_STORE, NO_CACHE or ON, maybe with ", " + TTL_IGNORED


def resolve(*settings: CacheSetting | None) -> CacheRules | None:
    """The rules from the levels that apply, nearest first (a tenant's, a model's, the policy's
    default; None: the level says nothing). The nearest level that says something decides whether
    caching is on; each field then comes from the nearest level that sets it, else its default.
    None: caching is off."""
    written = [setting for setting in settings if setting is not None]
    if not written or written[0].off:
        return None
    on = [setting for setting in written if not setting.off]
    ttl_s = next((s.ttl_s for s in on if s.ttl_s is not None), DEFAULT_TTL_S)
    max_entry_bytes = next((s.max_entry_bytes for s in on if s.max_entry_bytes is not None), DEFAULT_MAX_ENTRY_BYTES)
    when = next((s.when for s in on if s.when is not None), DEFAULT_WHEN)
    dedup_wait_s = next((s.dedup_wait_s for s in on if s.dedup_wait_s is not None), DEFAULT_DEDUP_WAIT_S)
    return CacheRules(ttl_s, max_entry_bytes, when, dedup_wait_s)


def directive(
    rules: CacheRules | None, api: Api, headers: Mapping[str, str], body: Mapping[str, Any]
) -> CacheDirective:
    """What to do for one request under ``rules`` (None: caching is off for it)."""
    if rules is None:
        return CacheDirective(False, False, 0.0, OFF)
    if rules.when == DETERMINISTIC and not is_deterministic(api, body):
        return CacheDirective(False, False, 0.0, NOT_DETERMINISTIC)
    asked = _cache_control(headers.get("cache-control", ""))
    if NO_STORE in asked:
        return CacheDirective(False, False, 0.0, NO_STORE)
    lookup = NO_CACHE not in asked  # no-cache: a fresh answer, stored for the requests after it
    ttl_s, reason = rules.ttl_s, ON if lookup else NO_CACHE
    if TTL_HEADER in headers:
        requested = _seconds(headers[TTL_HEADER])
        if requested is not None and 0 < requested <= rules.max_ttl_s:
            ttl_s = requested
        else:
            reason = f"{reason}, {TTL_IGNORED}"
    return CacheDirective(lookup, True, ttl_s, reason)


def _cache_control(value: str) -> frozenset[str]:
    """The directive names of a Cache-Control value ("no-cache, max-age=0" -> no-cache, max-age)."""
    return frozenset(part.split("=", 1)[0].strip().lower() for part in value.split(","))


def _seconds(value: str) -> float | None:
    match = _SECONDS.match(value)
    return float(match[1]) if match else None
