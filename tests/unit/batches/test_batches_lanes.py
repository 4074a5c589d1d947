"""Scheduling decisions: lanes as data, the item message, per-tenant fairness, retries and dead letters."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batches.lanes import (
    BATCH,
    DEAD_LETTER_EXCHANGE,
    INTERACTIVE,
    LANES,
    REASON_HEADER,
    Action,
    DeadReason,
    FairQueue,
    ItemMessage,
    MessageError,
    Pick,
    RetryPolicy,
    after_dead_letter,
    dead_reason,
    parse_retry_after,
)
from batches.model import ItemState, Outcome

NOW = 1_700_000_000.0


# --- lanes ------------------------------------------------------------------------------------


def test_the_lanes_carry_the_seeds_numbers():
    assert (INTERACTIVE.priority, INTERACTIVE.prefetch, INTERACTIVE.ttl_seconds) == (10, 5, 30)
    assert (BATCH.priority, BATCH.prefetch, BATCH.ttl_seconds) == (5, 20, 300)
    assert set(LANES) == {"interactive", "batch"}


def test_lane_queues_are_classic_priority_queues_with_a_ttl_and_a_dead_letter_exchange():
    assert BATCH.queue == "ccr.batch.batch" and INTERACTIVE.queue == "ccr.batch.interactive"
    assert BATCH.queue_arguments() == {
        "x-queue-type": "classic",
        "x-max-priority": 10,
        "x-message-ttl": 300_000,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }
    assert INTERACTIVE.queue_arguments()["x-message-ttl"] == 30_000


def test_messages_are_persistent_and_carry_the_lanes_priority():
    message = ItemMessage("t1", "msgbatch_1", 7, lane="interactive")
    properties = INTERACTIVE.message_properties(message)
    assert (properties["delivery_mode"], properties["priority"], properties["message_id"]) == (2, 10, "msgbatch_1:7")
    assert properties["headers"] == {"x-ccr-tenant": "t1", "x-ccr-batch": "msgbatch_1"}


@given(
    tenant=st.text(),  # "" included: the anonymous tenant's batches run on RabbitMQ too
    batch_id=st.text(min_size=1),
    index=st.integers(0, 10**9),
    lane=st.sampled_from(sorted(LANES)),
    requeues=st.integers(0, 100),
)
def test_an_item_message_decodes_to_what_was_encoded(tenant, batch_id, index, lane, requeues):
    message = ItemMessage(tenant, batch_id, index, lane, requeues)
    assert ItemMessage.decode(message.encode()) == message


@pytest.mark.parametrize(
    "raw",
    [
        b"nope",
        b"[]",
        b'{"tenant": 1, "batch_id": "b", "index": 0, "lane": "batch"}',
        b'{"tenant": "t", "batch_id": "", "index": 0, "lane": "batch"}',
        b'{"tenant": "t", "batch_id": "b", "index": -1, "lane": "batch"}',
        b'{"tenant": "t", "batch_id": "b", "index": true, "lane": "batch"}',
        b'{"tenant": "t", "batch_id": "b", "index": 0, "lane": "express"}',
        b'{"tenant": "t", "batch_id": "b", "index": 0, "lane": "batch", "ttl_requeues": "1"}',
    ],
)
def test_an_unreadable_message_is_a_message_error(raw):
    with pytest.raises(MessageError):
        ItemMessage.decode(raw)


# --- fairness ---------------------------------------------------------------------------------


def test_a_small_batch_is_not_starved_by_a_huge_one():
    queue = FairQueue()
    queue.add("big", "b-huge", 100_000)
    queue.add("small", "b-small", 3)
    picks = queue.take(6)
    assert Counter(pick.tenant for pick in picks) == {"big": 3, "small": 3}
    assert queue.pending("small") == 0 and queue.pending("big") == 100_000 - 3
    assert queue.take(2) == [Pick("big", "b-huge")] * 2


def test_a_tenants_batches_take_turns():
    queue = FairQueue()
    queue.add("t", "a", 3)
    queue.add("t", "b", 1)
    assert [pick.batch_id for pick in queue.take(10)] == ["a", "b", "a", "a"]
    assert queue.pending() == 0 and queue.take(1) == []


def test_weights_and_quantum_share_picks_in_proportion():
    queue = FairQueue(quantum=2, weights={"gold": 3})
    queue.add("gold", "g", 1000)
    queue.add("plain", "p", 1000)
    assert Counter(pick.tenant for pick in queue.take(80)) == {"gold": 60, "plain": 20}


def test_removing_a_batch_forgets_its_items():
    queue = FairQueue()
    queue.add("t", "a", 5)
    queue.add("u", "b", 1)
    assert queue.remove_batch("t", "a") == 5
    assert queue.remove_batch("t", "a") == 0 and queue.remove_batch("nobody", "x") == 0
    assert queue.take(5) == [Pick("u", "b")]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        FairQueue(quantum=0)
    with pytest.raises(ValueError):
        FairQueue(weights={"t": 0})
    with pytest.raises(ValueError):
        FairQueue().add("t", "b", -1)
    queue = FairQueue()
    queue.add("t", "b", 0)
    assert queue.pending() == 0


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcd"), st.sampled_from(["x", "y"]), st.integers(0, 50)),
        st.tuples(st.just("take"), st.integers(0, 30)),
        st.tuples(st.just("remove"), st.sampled_from("abcd"), st.sampled_from(["x", "y"])),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, quantum=st.integers(1, 4))
def test_picks_never_exceed_what_was_queued_and_pending_is_exact(ops, quantum):
    queue = FairQueue(quantum=quantum)
    queued: Counter[tuple[str, str]] = Counter()
    for op in ops:
        if op[0] == "add":
            _, tenant, batch, count = op
            queue.add(tenant, batch, count)
            queued[(tenant, batch)] += count
        elif op[0] == "remove":
            _, tenant, batch = op
            assert queue.remove_batch(tenant, batch) == queued.pop((tenant, batch), 0)
        else:
            picks = queue.take(op[1])
            assert len(picks) == min(op[1], sum(queued.values()))
            for pick in picks:
                queued[(pick.tenant, pick.batch_id)] -= 1
                assert queued[(pick.tenant, pick.batch_id)] >= 0
        assert queue.pending() == sum(queued.values())
        for tenant in "abcd":
            assert queue.pending(tenant) == sum(n for (t, _), n in queued.items() if t == tenant)


@settings(max_examples=200, deadline=None)
@given(
    backlogs=st.lists(st.integers(1, 400), min_size=2, max_size=5),
    quantum=st.integers(1, 5),
    takes=st.lists(st.integers(1, 17), min_size=1, max_size=40),
)
def test_backlogged_tenants_of_equal_weight_never_drift_apart_by_more_than_a_quantum(backlogs, quantum, takes):
    """The fairness property: at every point, any two tenants that still have work have been served
    within one quantum of each other, whatever their backlog and however the feeder sizes its takes."""
    queue = FairQueue(quantum=quantum)
    for n, size in enumerate(backlogs):
        queue.add(f"t{n}", f"b{n}", size)
    served: Counter[str] = Counter()
    for size in takes:
        for pick in queue.take(size):
            served[pick.tenant] += 1
        still = [f"t{n}" for n in range(len(backlogs)) if queue.pending(f"t{n}")]
        for tenant in still:
            for other in still:
                assert abs(served[tenant] - served[other]) <= quantum
            # and no tenant with work left has been served less than a finished one's backlog allows
            assert all(served[tenant] + quantum >= served[done] for done in served if done not in still)


# --- retries ------------------------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=60.0)


def test_a_2xx_answer_finishes_succeeded():
    decision = POLICY.after_response(200, {"ok": 1}, attempts=1, throttles=0, request_id="r", jitter=0.5, now=NOW)
    assert decision.action is Action.FINISH and decision.outcome == Outcome.from_response(200, {"ok": 1}, "r")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_4xx_other_than_408_409_429_finishes_errored_at_once(status):
    decision = POLICY.after_response(status, {"e": 1}, attempts=1, throttles=0, jitter=0.5, now=NOW)
    assert decision.action is Action.FINISH and decision.outcome.state is ItemState.ERRORED
    assert decision.outcome.status_code == status


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504, 529])
def test_timeouts_conflicts_and_5xx_are_retried_with_exponential_backoff(status):
    delays = [
        POLICY.after_response(status, None, attempts=attempts, throttles=0, jitter=0.999999, now=NOW).delay
        for attempts in (1, 2)
    ]
    assert delays == pytest.approx([1.0, 2.0], rel=1e-5)
    assert POLICY.after_response(status, None, attempts=1, throttles=0, jitter=0.0, now=NOW).action is Action.RETRY


def test_transient_failures_give_up_after_max_attempts_keeping_the_last_answer():
    decision = POLICY.after_response(503, {"error": "down"}, attempts=3, throttles=0, jitter=0.5, now=NOW)
    assert decision.action is Action.FINISH
    assert (decision.outcome.state, decision.outcome.status_code, decision.outcome.body) == (
        ItemState.ERRORED,
        503,
        {"error": "down"},
    )


def test_a_429_backs_off_and_never_fails_nor_uses_up_the_budget():
    for throttles in (0, 7, 49, 5000):  # a day of 429s neither fails the item nor overflows
        decision = POLICY.after_response(
            429, None, attempts=throttles + 3, throttles=throttles + 2, jitter=0.5, now=NOW
        )
        assert decision.action is Action.RETRY and decision.throttled
        assert 0 <= decision.delay <= POLICY.max_delay


def test_retry_after_is_honoured_and_capped():
    decision = POLICY.after_response(
        429, None, attempts=1, throttles=0, headers={"Retry-After": "17"}, jitter=0.5, now=NOW
    )
    assert decision.delay == 17
    decision = POLICY.after_response(
        503, None, attempts=1, throttles=0, headers={"retry-after-ms": "2500"}, jitter=0.5, now=NOW
    )
    assert decision.delay == 2.5
    decision = POLICY.after_response(
        429, None, attempts=1, throttles=0, headers={"retry-after": "999999"}, jitter=0.5, now=NOW
    )
    assert decision.delay == POLICY.max_retry_after


def test_connection_errors_are_transient_until_the_budget_is_spent():
    decision = POLICY.after_connection_error("connection refused", attempts=1, throttles=0, jitter=0.5)
    assert decision.action is Action.RETRY and decision.delay == 0.5
    # three sends, one of which was a 429: two failures count, one more try
    assert POLICY.after_connection_error("reset", attempts=3, throttles=1, jitter=0.5).action is Action.RETRY
    decision = POLICY.after_connection_error("reset", attempts=4, throttles=1, jitter=0.5)
    assert decision.action is Action.FINISH and decision.outcome.state is ItemState.ERRORED
    assert decision.outcome.reason == "gave up after 3 attempts: reset"


def test_a_message_whose_item_used_up_its_attempts_is_not_sent_again():
    assert not POLICY.exhausted(attempts=2, throttles=0)
    assert POLICY.exhausted(attempts=3, throttles=0)
    assert not POLICY.exhausted(attempts=9, throttles=7)  # 429s do not count


@given(failures=st.integers(0, 10**6), jitter=st.floats(-1, 2, allow_nan=False))
def test_backoff_stays_within_zero_and_the_cap(failures, jitter):
    assert 0 <= POLICY.backoff(failures, jitter) <= POLICY.max_delay


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:40 GMT"}, 20.0),  # NOW is 22:13:20 that day
        ({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),  # in the past: now
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "x", "retry-after": "9"}, 9.0),
    ],
)
def test_retry_after_headers(headers, expected):
    assert parse_retry_after(headers, now=NOW) == expected


# --- dead letters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({REASON_HEADER: "too_many_attempts"}, DeadReason.TOO_MANY_ATTEMPTS),
        ({REASON_HEADER: b"expired"}, DeadReason.EXPIRED),
        ({"x-death": [{"reason": "expired", "queue": "ccr.batch.batch", "count": 1}]}, DeadReason.EXPIRED),
        ({"x-death": [{"reason": b"delivery_limit"}, {"reason": "expired"}]}, DeadReason.TOO_MANY_ATTEMPTS),
        ({"x-death": [{"reason": "rejected"}]}, DeadReason.REJECTED),
        ({"x-death": [{"reason": "maxlen"}]}, DeadReason.EXPIRED),
        ({"x-death": [{"reason": "mystery"}]}, DeadReason.REJECTED),
        ({REASON_HEADER: "nonsense"}, DeadReason.REJECTED),
        ({}, DeadReason.REJECTED),
    ],
)
def test_the_dead_letter_reason_comes_from_our_header_or_the_newest_x_death(headers, reason):
    assert dead_reason(headers) is reason


def test_an_item_aged_out_of_the_batch_lane_is_queued_again_a_few_times_then_expires():
    decision = after_dead_letter(DeadReason.EXPIRED, lane=BATCH, ttl_requeues=0)
    assert decision.action is Action.RETRY and decision.outcome is None
    decision = after_dead_letter(DeadReason.EXPIRED, lane=BATCH, ttl_requeues=3)
    assert decision.action is Action.FINISH and decision.outcome.state is ItemState.EXPIRED
    assert "300 s" in decision.outcome.reason


def test_an_item_aged_out_of_the_interactive_lane_expires_at_once():
    decision = after_dead_letter(DeadReason.EXPIRED, lane=INTERACTIVE, ttl_requeues=0)
    assert decision.action is Action.FINISH and decision.outcome.state is ItemState.EXPIRED


@pytest.mark.parametrize("reason", [DeadReason.TOO_MANY_ATTEMPTS, DeadReason.REJECTED])
def test_redelivered_too_often_or_unreadable_ends_errored_with_the_reason(reason):
    decision = after_dead_letter(reason, lane=BATCH, ttl_requeues=0)
    assert decision.action is Action.FINISH and decision.outcome.state is ItemState.ERRORED and decision.outcome.reason
