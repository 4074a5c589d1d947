"""Byte-identical repeats: which cache entry a request body led to, so that the same bytes again are
looked up without being parsed, checked, routed or canonicalized a second time.

A cached request is usually sent again exactly as before (an agent re-running a step, a batch
retried, a benchmark): its SHA-256 (~25 us for 40 KB) replaces the JSON parse, the request checks,
the routing and the cache key's canonical form (~0.2 ms together). Each worker remembers the last
``capacity`` requests the cache looked up (a few hundred bytes each: the digest, the key, the
labels of a hit's ledger record), least recently used first out.

What must be equal for two requests to be "the same": the policy version (a new policy may route
elsewhere), the endpoint, the bytes of the body, the caller (its virtual key, or the provider key a
tenant is chosen by: part of the cache key, and of the ledger record) and the ``anthropic-beta``
flags (part of the cache key). A request whose headers speak to the cache (``cache-control``,
``x-ccr-cache-ttl``) always takes the full path, and so does every request under a policy whose
routing is not a function of the body alone (a custom router hook, a weighted split).

A repeat only finds a key: the entry itself is looked up as usual, so expiry, eviction and another
gateway's writes are seen as they are. Pure but for the clock-free LRU: no I/O.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from extproc.cache.answers import CacheStep
from extproc.cache.rules import TTL_HEADER
from extproc.routing_table import RoutingTable, WeightedChoice

DEFAULT_CAPACITY = 4096
_CALLER_HEADERS = ("x-api-key", "authorization", "x-goog-api-key", "anthropic-beta")


@dataclass(frozen=True, slots=True)
class Repeat:
    step: CacheStep
    labels: Mapping[str, str]  # a hit's request labels (its ledger record)
    provider: str
    model: str
    size: int  # the body's length: a body of another length is not worth hashing


class Repeats:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Repeat] = OrderedDict()
        self._sizes: Counter[int] = Counter()  # body lengths remembered: most traffic is hashed never
        self._repeatable: tuple[str, bool] = ("", False)  # (policy version, its routing is the body's)

    def __len__(self) -> int:
        return len(self._entries)

    def digest(self, table: RoutingTable, path: str, headers: Mapping[str, str], raw: bytes) -> bytes | None:
        """The request's identity, or None when it must take the full path."""
        if "cache-control" in headers or TTL_HEADER in headers or not self._routes_by_body(table):
            return None
        hasher = hashlib.sha256(table.version.encode())
        hasher.update(b"\0" + path.encode())
        for name in _CALLER_HEADERS:
            hasher.update(b"\0" + headers.get(name, "").encode())
        hasher.update(b"\0" + raw)
        return hasher.digest()

    def may_hold(self, size: int) -> bool:
        """Whether a body of ``size`` bytes could be a remembered one (else no digest is needed)."""
        return size in self._sizes

    def get(self, digest: bytes) -> Repeat | None:
        found = self._entries.get(digest)
        if found is not None:
            self._entries.move_to_end(digest)
        return found

    def put(self, digest: bytes, repeat: Repeat) -> None:
        replaced = self._entries.pop(digest, None)
        if replaced is not None:
            self._forget(replaced)
        self._entries[digest] = repeat
        self._sizes[repeat.size] += 1
        while len(self._entries) > self.capacity:
            self._forget(self._entries.popitem(last=False)[1])

    def _forget(self, repeat: Repeat) -> None:
        self._sizes[repeat.size] -= 1
        if not self._sizes[repeat.size]:
            del self._sizes[repeat.size]

    def _routes_by_body(self, table: RoutingTable) -> bool:
        version, repeatable = self._repeatable
        if version != table.version:
            repeatable = routes_by_body(table)
            self._repeatable = (table.version, repeatable)
            self._entries.clear()  # keys of the old policy would never be asked again
            self._sizes.clear()
        return repeatable


def routes_by_body(table: RoutingTable) -> bool:
    """Whether the same body (and caller) is always routed to the same model under ``table``: no
    custom hook, no weighted split (a split without a session picks at random)."""
    routers = [table.router, *(tenant.router for tenant in table.tenants_by_name.values())]
    choices: list[WeightedChoice | None] = list(table.aliases.values())
    for router in routers:
        if router.hook is not None:
            return False
        choices += [router.default, router.background, router.think, router.long_context, router.web_search]
        choices.append(router.image)
    return not any(choice is not None and choice.is_split for choice in choices)
