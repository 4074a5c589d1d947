"""The neutral batch model: every transition, and its invariants under any sequence of events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batches.model import (
    BATCH_WINDOW_SECONDS,
    RESULTS_RETENTION_SECONDS,
    Api,
    Batch,
    BatchModelError,
    BatchState,
    BatchStatus,
    CancelResult,
    Counts,
    Dispatch,
    EndReason,
    InputError,
    Item,
    ItemState,
    Outcome,
    Recorded,
    archive,
    cancel_item,
    expire_item,
    failed_batch,
    new_batch,
    record,
    request_cancel,
    retry_later,
    send,
    settle,
)

T0 = 1_700_000_000.0
OK = Outcome.from_response(200, {"answer": 1}, "req_1")
OK_OTHER = Outcome.from_response(200, {"answer": 2}, "req_2")
BAD = Outcome.from_response(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}})


def make(n: int = 3) -> BatchState:
    batch, items = new_batch(
        "b1",
        tenant="t1",
        api=Api.ANTHROPIC,
        endpoint="/v1/messages",
        requests=[(f"c{i}", {"n": i}) for i in range(n)],
        now=T0,
    )
    return BatchState(batch, items)


def test_a_new_batch_queues_every_item_in_request_order_and_expires_in_24_hours():
    state = make(3)
    assert [(item.index, item.custom_id, item.state) for item in state.items] == [
        (0, "c0", ItemState.QUEUED),
        (1, "c1", ItemState.QUEUED),
        (2, "c2", ItemState.QUEUED),
    ]
    assert state.batch.expires_at == T0 + BATCH_WINDOW_SECONDS
    assert state.batch.status is BatchStatus.IN_PROGRESS
    assert state.counts == Counts(queued=3)


def test_a_batch_needs_requests_with_unique_custom_ids():
    with pytest.raises(BatchModelError):
        new_batch("b", tenant="t", api=Api.OPENAI, endpoint="/v1/responses", requests=[], now=T0)
    with pytest.raises(BatchModelError):
        new_batch("b", tenant="t", api=Api.OPENAI, endpoint="/v1/responses", requests=[("a", {}), ("a", {})], now=T0)


def test_outcomes_are_validated_at_construction():
    with pytest.raises(BatchModelError):
        Outcome(ItemState.SENT)
    with pytest.raises(BatchModelError):
        Outcome(ItemState.SUCCEEDED, status_code=500)
    with pytest.raises(BatchModelError):
        Outcome(ItemState.ERRORED, status_code=200)
    with pytest.raises(BatchModelError):
        Outcome(ItemState.ERRORED)  # no answer and no reason
    with pytest.raises(BatchModelError):
        Outcome(ItemState.CANCELED, status_code=400)
    assert Outcome.from_response(503, None).state is ItemState.ERRORED


def test_items_are_validated_at_construction():
    with pytest.raises(BatchModelError):
        Item(0, "a", {}, state=ItemState.SUCCEEDED)  # final without an outcome
    with pytest.raises(BatchModelError):
        Item(0, "a", {}, outcome=OK)  # queued with an outcome
    with pytest.raises(BatchModelError):
        Item(0, "a", {}, state=ItemState.ERRORED, outcome=OK)
    with pytest.raises(BatchModelError):
        Item(0, "a", {}, attempts=1, throttles=2)


def test_sending_counts_an_attempt_and_a_redelivered_sent_item_is_sent_again():
    item = Item(0, "a", {})
    item, dispatch = send(item, now=T0, expires_at=T0 + 10)
    assert (item.state, item.attempts, dispatch) == (ItemState.SENT, 1, Dispatch.SEND)
    item, dispatch = send(item, now=T0 + 1, expires_at=T0 + 10)
    assert (item.state, item.attempts, dispatch) == (ItemState.SENT, 2, Dispatch.SEND)


def test_a_queued_item_whose_message_outlived_cancellation_is_canceled_not_sent():
    item, dispatch = send(Item(0, "a", {}), now=T0, expires_at=T0 + 10, cancel_requested=True)
    assert (item.state, dispatch) == (ItemState.CANCELED, Dispatch.SKIP)
    sent, _ = send(Item(0, "a", {}), now=T0, expires_at=T0 + 10)
    again, dispatch = send(sent, now=T0, expires_at=T0 + 10, cancel_requested=True)  # in flight: finishes
    assert (again.state, again.attempts, dispatch) == (ItemState.SENT, 2, Dispatch.SEND)


def test_a_final_item_is_skipped_and_an_item_sent_after_the_window_expires_instead():
    done, _ = record(Item(0, "a", {}), OK, now=T0)
    assert send(done, now=T0, expires_at=T0 + 10) == (done, Dispatch.SKIP)
    late, dispatch = send(Item(0, "a", {}), now=T0 + 10, expires_at=T0 + 10)
    assert (late.state, dispatch) == (ItemState.EXPIRED, Dispatch.SKIP)


def test_recording_the_same_result_twice_changes_nothing_and_a_different_one_is_refused():
    item, _ = send(Item(0, "a", {}), now=T0, expires_at=T0 + 100)
    first, recorded = record(item, OK, now=T0 + 1)
    assert (first.state, first.outcome, first.finished_at, recorded) == (
        ItemState.SUCCEEDED,
        OK,
        T0 + 1,
        Recorded.STORED,
    )
    again, recorded = record(first, OK, now=T0 + 2)
    assert again is first and recorded is Recorded.DUPLICATE
    other, recorded = record(first, OK_OTHER, now=T0 + 3)
    assert other is first and recorded is Recorded.REFUSED
    assert record(first, BAD, now=T0 + 3) == (first, Recorded.REFUSED)


def test_a_result_for_an_item_whose_sent_mark_was_lost_is_still_stored():
    item, recorded = record(Item(0, "a", {}), BAD, now=T0)
    assert (item.state, recorded) == (ItemState.ERRORED, Recorded.STORED)


def test_record_takes_answers_only():
    with pytest.raises(BatchModelError):
        record(Item(0, "a", {}), Outcome.canceled(), now=T0)


def test_a_transient_failure_puts_the_item_back_and_a_429_is_counted_as_a_throttle():
    item, _ = send(Item(0, "a", {}), now=T0, expires_at=T0 + 100)
    back = retry_later(item, throttled=True, cancel_requested=False, now=T0)
    assert (back.state, back.attempts, back.throttles) == (ItemState.QUEUED, 1, 1)
    assert retry_later(back, throttled=False, cancel_requested=False, now=T0) is back  # not in flight: stale


def test_a_retry_during_cancellation_cancels_the_item_instead():
    item, _ = send(Item(0, "a", {}), now=T0, expires_at=T0 + 100)
    item = retry_later(item, throttled=False, cancel_requested=True, now=T0 + 5)
    assert (item.state, item.outcome, item.finished_at) == (ItemState.CANCELED, Outcome.canceled(), T0 + 5)


def test_cancellation_cancels_queued_items_and_lets_sent_ones_finish():
    state = make(3)
    assert state.send(0, now=T0 + 1) is Dispatch.SEND
    assert state.cancel(now=T0 + 2) is CancelResult.STARTED
    assert [item.state for item in state.items] == [ItemState.SENT, ItemState.CANCELED, ItemState.CANCELED]
    assert state.batch.status is BatchStatus.CANCELING
    assert state.cancel(now=T0 + 3) is CancelResult.ALREADY
    assert state.record(0, OK, now=T0 + 4) is Recorded.STORED
    assert state.batch.status is BatchStatus.ENDED and state.batch.ended_at == T0 + 4
    assert state.batch.end_reason(state.counts) is EndReason.CANCELED
    assert state.counts == Counts(succeeded=1, canceled=2)
    assert state.cancel(now=T0 + 5) is CancelResult.ENDED


def test_cancel_item_leaves_sent_and_final_items_alone():
    sent, _ = send(Item(0, "a", {}), now=T0, expires_at=T0 + 1)
    assert cancel_item(sent, now=T0) is sent
    done, _ = record(sent, OK, now=T0)
    assert cancel_item(done, now=T0) is done


def test_request_cancel_on_an_ended_batch_changes_nothing():
    batch = Batch("b", "t", Api.OPENAI, "/v1/responses", T0, T0 + 10, 1, ended_at=T0 + 1)
    assert request_cancel(batch, now=T0 + 2) == (batch, CancelResult.ENDED)


def test_expiry_ends_every_unfinished_item_expired_and_keeps_finished_ones():
    state = make(3)
    state.send(0, now=T0)
    state.record(0, OK, now=T0 + 1)
    state.send(1, now=T0 + 2)
    assert state.expire_if_due(now=T0 + 100) is False
    assert state.expire_if_due(now=state.batch.expires_at) is True
    assert [item.state for item in state.items] == [ItemState.SUCCEEDED, ItemState.EXPIRED, ItemState.EXPIRED]
    assert state.batch.end_reason(state.counts) is EndReason.EXPIRED
    assert state.expire_if_due(now=state.batch.expires_at + 1) is False  # ended: nothing left to do
    # the sent item's answer arrives after expiry: expired is final, the answer is refused
    assert state.record(1, OK, now=state.batch.expires_at + 2) is Recorded.REFUSED


def test_expire_item_leaves_finished_items_alone():
    done, _ = record(Item(0, "a", {}), OK, now=T0)
    assert expire_item(done, now=T0) is done


def test_a_batch_that_finishes_normally_has_ended_completed():
    state = make(2)
    for index, outcome in ((0, OK), (1, BAD)):
        state.send(index, now=T0)
        state.record(index, outcome, now=T0 + 7)
    assert state.batch.ended_at == T0 + 7
    assert state.batch.end_reason(state.counts) is EndReason.COMPLETED
    assert state.counts == Counts(succeeded=1, errored=1)


def test_settle_refuses_counts_of_another_batch_and_is_idempotent():
    batch = Batch("b", "t", Api.OPENAI, "/v1/responses", T0, T0 + 10, 2)
    with pytest.raises(BatchModelError):
        settle(batch, Counts(queued=1), now=T0)
    ended = settle(batch, Counts(succeeded=2), now=T0 + 1)
    assert ended.ended_at == T0 + 1
    assert settle(ended, Counts(succeeded=2), now=T0 + 5) is ended


def test_counts_from_a_group_by_match_counts_of_items():
    items = [Item(0, "a", {}), Item(1, "b", {}, state=ItemState.SENT, attempts=1)]
    assert Counts.from_states({"queued": 1, "sent": 1}) == Counts.of(items) == Counts(queued=1, sent=1)


def test_a_failed_batch_has_no_items_and_ended_at_creation():
    batch = failed_batch(
        "b", tenant="t", api=Api.OPENAI, endpoint="/v1/responses", errors=[InputError("empty_file", "empty")], now=T0
    )
    assert (batch.total, batch.ended_at, batch.status) == (0, T0, BatchStatus.ENDED)
    assert batch.end_reason(Counts()) is EndReason.FAILED
    with pytest.raises(BatchModelError):
        failed_batch("b", tenant="t", api=Api.OPENAI, endpoint="/v1/responses", errors=[], now=T0)


def test_archiving_waits_for_the_end_and_the_retention_period():
    batch = Batch("b", "t", Api.ANTHROPIC, "/v1/messages", T0, T0 + 10, 1)
    assert archive(batch, now=T0 + RESULTS_RETENTION_SECONDS) is batch  # still running
    ended = settle(batch, Counts(succeeded=1), now=T0 + 5)
    assert archive(ended, now=T0 + RESULTS_RETENTION_SECONDS - 1) is ended
    archived = archive(ended, now=T0 + RESULTS_RETENTION_SECONDS)
    assert archived.archived_at == T0 + RESULTS_RETENTION_SECONDS
    assert archive(archived, now=T0 + RESULTS_RETENTION_SECONDS + 9) is archived


def test_batch_state_wants_the_batchs_items_in_order():
    batch, items = new_batch(
        "b", tenant="t", api=Api.ANTHROPIC, endpoint="/v1/messages", requests=[("a", {}), ("b", {})], now=T0
    )
    with pytest.raises(BatchModelError):
        BatchState(batch, items[::-1])


def test_give_up_records_errors_and_expiries():
    state = make(2)
    state.send(0, now=T0)
    assert state.give_up(0, Outcome.errored("delivered too many times"), now=T0 + 1) is Recorded.STORED
    assert state.give_up(1, Outcome.expired("aged out"), now=T0 + 1) is Recorded.STORED
    assert state.items[1].outcome == Outcome.expired("aged out")
    assert state.give_up(1, Outcome.expired("aged out"), now=T0 + 2) is Recorded.DUPLICATE
    assert state.give_up(1, Outcome.expired("other"), now=T0 + 2) is Recorded.REFUSED
    with pytest.raises(BatchModelError):
        state.give_up(0, Outcome.canceled(), now=T0 + 2)


# --- any sequence of events ---------------------------------------------------------------------

OUTCOMES = st.sampled_from([OK, OK_OTHER, BAD, Outcome.errored("gave up")])
EVENTS = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 5)),
    st.tuples(st.just("record"), st.integers(0, 5), OUTCOMES),
    st.tuples(st.just("retry"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("expire")),
    st.tuples(st.just("dead"), st.integers(0, 5)),
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 6), events=st.lists(st.tuples(EVENTS, st.integers(0, 40_000)), max_size=40))
def test_invariants_hold_under_any_sequence_of_events(n, events):
    state = make(n)
    now = T0
    finals: dict[int, Item] = {}
    ended_at = None
    for event, step in events:
        now += step
        kind, *args = event
        before = list(state.items)
        if kind in ("send", "record", "retry", "dead"):
            args[0] %= n
        if kind == "send":
            dispatch = state.send(args[0], now=now)
            assert (dispatch is Dispatch.SEND) == (state.items[args[0]].state is ItemState.SENT)
        elif kind == "record":
            index, outcome = args
            recorded = state.record(index, outcome, now=now)
            old = before[index]
            if old.state.final:
                assert recorded is (Recorded.DUPLICATE if old.outcome == outcome else Recorded.REFUSED)
            else:
                assert recorded is Recorded.STORED and state.items[index].outcome == outcome
        elif kind == "retry":
            state.retry_later(args[0], throttled=args[1], now=now)
        elif kind == "cancel":
            state.cancel(now=now)
        elif kind == "expire":
            state.expire_if_due(now=now)
        else:
            state.give_up(args[0], Outcome.expired("aged out"), now=now)

        items, counts, batch = state.items, state.counts, state.batch
        # counts are derived from item states, and cover every item
        assert counts == Counts.of(items) and counts.total == batch.total == n
        # the batch has ended exactly when no item is queued or sent, and ended_at never moves
        assert (batch.ended_at is not None) == (counts.unfinished == 0)
        if ended_at is not None:
            assert batch.ended_at == ended_at
        ended_at = batch.ended_at
        for item in items:
            # a final item never changes again (the first result stands)
            if item.index in finals:
                assert item == finals[item.index]
            elif item.state.final:
                finals[item.index] = item
            assert item.throttles <= item.attempts
        # once cancellation is requested nothing is left waiting in the queue
        if batch.cancel_requested_at is not None:
            assert counts.queued == 0
            assert batch.status in (BatchStatus.CANCELING, BatchStatus.ENDED)
        # an item ends canceled only after cancellation was requested, and only from queued (or
        # from sent, when its retry comes back during cancellation)
        for old, new in zip(before, items, strict=True):
            if new.state is ItemState.CANCELED and old.state is not ItemState.CANCELED:
                assert old.state in (ItemState.QUEUED, ItemState.SENT)
                assert batch.cancel_requested_at is not None
        if batch.ended_at is not None:
            assert batch.end_reason(counts) is not None
