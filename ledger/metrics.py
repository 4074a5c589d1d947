"""Prometheus metrics of the ledger: the publisher's (in each ext_proc worker) and the writer's.

Counts are of records, not messages, so that published + dropped adds up to what ext_proc made.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUBLISHED = Counter("ccr_ledger_records_published", "Usage records the broker confirmed")
SPOOLED = Counter("ccr_ledger_records_spooled", "Usage records written to the local spool (broker away or slow)")
REPLAYED = Counter("ccr_ledger_records_replayed", "Usage records published from the spool once the broker was back")
DROPPED = Counter(
    "ccr_ledger_records_dropped",
    "Usage records lost: the spool was full (or its disk failed) while the broker was away",
)
SPOOL_BYTES = Gauge(
    "ccr_ledger_spool_bytes", "Bytes of unconfirmed batches in the local spools", multiprocess_mode="livesum"
)

WRITTEN = Counter("ccr_ledger_records_written", "Usage records inserted into PostgreSQL (duplicates not counted)")
DEAD_LETTERED = Counter("ccr_ledger_dead_lettered", "Messages sent to the dead-letter queue (unreadable batches)")
BATCH_RECORDS = Histogram(
    "ccr_ledger_batch_records",
    "Records per database transaction",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
COMMIT_SECONDS = Histogram(
    "ccr_ledger_commit_seconds",
    "Time to write one batch: COPY, insert, rollup and commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WRITER_LAG = Gauge(
    "ccr_ledger_writer_lag_seconds", "Now minus the newest committed record's time", multiprocess_mode="livemax"
)
