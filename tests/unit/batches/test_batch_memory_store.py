"""What the stores share, without a database: the bulk transitions the SQL stores run as one UPDATE
per state, and the rows both write. The whole contract runs in tests/integration/test_batch_stores.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batches.model import Api, BatchModelError, ItemState, Outcome, cancel_item, expire_item, new_batch, send
from batches.store import ITEM_COLUMNS, bulk_transition, canceling_all, expiring_all, item_of, item_values

T0 = 1_700_000_000.0


def test_cancel_in_bulk_is_what_cancel_item_does_to_queued_items_only():
    changes = canceling_all(T0)
    assert list(changes) == [ItemState.QUEUED]
    assert changes[ItemState.QUEUED].outcome == Outcome.canceled() and changes[ItemState.QUEUED].finished_at == T0


def test_expire_in_bulk_is_what_expire_item_does_to_queued_and_sent_items():
    changes = expiring_all(T0)
    assert set(changes) == {ItemState.QUEUED, ItemState.SENT}
    assert {(item.state, item.outcome, item.finished_at) for item in changes.values()} == {
        (ItemState.EXPIRED, Outcome.expired(), T0)
    }


def test_a_transition_that_touches_more_than_the_outcome_cannot_run_in_bulk():
    with pytest.raises(BatchModelError):
        bulk_transition(lambda item: send(item, now=T0, expires_at=T0 + 1)[0])  # attempts change


def test_an_item_survives_its_row():
    _, items = new_batch(
        "b", tenant="t", api=Api.ANTHROPIC, endpoint="/v1/messages", requests=[("c", {"x": 1})], now=T0
    )
    sent = replace(items[0], state=ItemState.SENT, attempts=2, throttles=1)
    for item in (items[0], sent, cancel_item(items[0], now=T0), expire_item(sent, now=T0, reason="ttl")):
        assert item_of(dict(zip(ITEM_COLUMNS, item_values("b", item), strict=True))) == item
