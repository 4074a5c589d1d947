"""Prometheus metrics of the response cache's stores (served with the rest of ext_proc's).

Labelled by store ("local": the in-process LRU, "redis"), not by model or tenant: a store sees
keys and bytes only. The request path counts hits per model where it knows the model.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LOOKUPS = Counter(
    "ccr_cache_lookups_total",
    "Cache lookups by store and outcome (hit, miss, error: the store did not answer, counted as a miss)",
    ["store", "outcome"],
)
STORES = Counter(
    "ccr_cache_stores_total",
    "Entries offered to a cache store, by outcome (stored, too_large: over the entry size cap, error: "
    "the store did not answer)",
    ["store", "outcome"],
)
STORED_BYTES = Counter(
    "ccr_cache_stored_bytes_total",
    "Bytes of entries written to a cache store (after compression)",
    ["store"],
)
LOCAL_BYTES = Gauge(
    "ccr_cache_local_bytes",
    "Bytes held by the workers' in-process caches (keys and entries)",
    multiprocess_mode="livesum",
)
EVICTIONS = Counter(
    "ccr_cache_evictions_total",
    "Entries the in-process cache dropped, by reason (capacity: least recently used, to make room; "
    "expired: found past its TTL)",
    ["reason"],
)
LOOKUP_SECONDS = Histogram(
    "ccr_cache_lookup_seconds",
    "Time to look an entry up in a cache store, hits, misses and errors alike",
    ["store"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)

FLIGHTS = Counter(
    "ccr_cache_flights_total",
    "In-flight deduplication: requests that led a flight (went upstream for everyone), followed one "
    "(waited for its answer), and flights forgotten after the policy's dedup_wait (expired: the leader "
    "never reported)",
    ["outcome"],
)
REQUESTS = Counter(
    "ccr_cache_requests_total",
    "Requests the response cache applies to, by the model that serves them and what the cache did "
    "(hit; miss: looked up, answer to be stored; bypass: the rules or the request kept it out). "
    "Hit ratio per model: hit / (hit + miss)",
    ["provider", "model", "outcome"],
)


class StoreMetrics:
    """One store's labelled children, made once: ``labels()`` costs a lock and a dict per call."""

    __slots__ = ("error", "hit", "latency", "miss", "put_error", "stored", "stored_bytes", "too_large")

    def __init__(self, store: str) -> None:
        self.hit = LOOKUPS.labels(store, "hit")
        self.miss = LOOKUPS.labels(store, "miss")
        self.error = LOOKUPS.labels(store, "error")
        self.stored = STORES.labels(store, "stored")
        self.too_large = STORES.labels(store, "too_large")
        self.put_error = STORES.labels(store, "error")
        self.stored_bytes = STORED_BYTES.labels(store)
        self.latency = LOOKUP_SECONDS.labels(store)
