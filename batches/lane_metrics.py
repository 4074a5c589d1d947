"""Prometheus metrics of the batch lanes (issue 20's queue monitoring), set by both lane adapters
(RabbitMQ and the in-process stand-in) and by the feeder.

Counts are of messages, one per item send; a redelivered or re-fed item counts again. Depths are
the broker's own counts (ready messages, unacked ones not included), read whenever someone asks
(the feeder does every round), so they are as fresh as the feeder's interval.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LANE_DEPTH = Gauge(
    "ccr_batch_lane_depth",
    "Messages waiting in a lane's queue (ready, not yet delivered to a worker)",
    ["lane"],
    multiprocess_mode="livemax",  # every process reads the same broker count
)
TENANT_WAITING = Gauge(
    "ccr_batch_tenant_waiting_items",
    "Queued items the feeder has not published yet, per lane and tenant (the feeder's view of the store)",
    ["lane", "tenant"],
    multiprocess_mode="livemax",
)
OLDEST_MESSAGE_AGE = Gauge(
    "ccr_batch_lane_oldest_message_age_seconds",
    "Age of the oldest message waiting in a lane, from the feeder's own publish times (0 when empty)",
    ["lane"],
    multiprocess_mode="livemax",
)
DEAD_LETTER_DEPTH = Gauge(
    "ccr_batch_dead_letter_depth",
    "Messages waiting in the dead-letter queue for the sweeper",
    multiprocess_mode="livemax",
)
PUBLISHED = Counter(
    "ccr_batch_lane_published_total",
    "Item messages published to a lane and confirmed by the broker",
    ["lane"],
)
ACKED = Counter(
    "ccr_batch_lane_acked_total",
    "Item messages a worker's handler finished and acknowledged",
    ["lane"],
)
REQUEUED = Counter(
    "ccr_batch_lane_requeued_total",
    "Item messages put back on their lane because the handler failed (they are delivered again)",
    ["lane"],
)
DEAD_LETTERED = Counter(
    "ccr_batch_lane_dead_lettered_total",
    "Messages read from the dead-letter queue, by the lane they died on and why (expired, too_many_attempts, rejected)",
    ["lane", "reason"],
)
