"""Cursor pagination over a newest-first list, as both batch APIs page, and the shared JSON parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batches.api_common import ApiError, paginate, parse_json_object, parse_limit


@given(n=st.integers(0, 40), limit=st.integers(1, 12))
def test_walking_forward_by_after_id_visits_every_id_once_in_order(n, limit):
    ids = [f"id{i}" for i in range(n)]
    seen, page = [], paginate(ids, limit=limit)
    while True:
        assert len(page.ids) <= limit
        seen += page.ids
        if not page.has_more:
            break
        page = paginate(ids, limit=limit, after_id=page.last_id)
    assert seen == ids


@given(n=st.integers(1, 40), limit=st.integers(1, 12), start=st.integers(0, 39))
def test_walking_back_by_before_id_visits_every_newer_id_once(n, limit, start):
    ids = [f"id{i}" for i in range(n)]
    start %= n
    seen: list[str] = []
    page = paginate(ids, limit=limit, before_id=ids[start])
    while True:
        assert len(page.ids) <= limit
        seen = page.ids + seen
        if not page.has_more:
            break
        page = paginate(ids, limit=limit, before_id=page.first_id)  # what the anthropic SDK sends
    assert seen == ids[:start]


def test_an_empty_page_has_no_first_or_last_id():
    page = paginate([], limit=5)
    assert (page.ids, page.first_id, page.last_id, page.has_more) == ([], None, None, False)


def test_cursors_must_be_known_and_not_both_given():
    with pytest.raises(ApiError) as caught:
        paginate(["a"], limit=1, after_id="zzz")
    assert caught.value.param == "after_id"
    with pytest.raises(ApiError):
        paginate(["a", "b"], limit=1, after_id="a", before_id="b")


def test_json_bodies_are_size_checked_before_parsing():
    assert parse_json_object(b'{"a": 1}', limit=8) == {"a": 1}
    with pytest.raises(ApiError) as caught:
        parse_json_object(b'{"a": 10}', limit=8)
    assert (caught.value.status, caught.value.kind) == (413, "too_large")


@pytest.mark.parametrize(("value", "expected"), [(None, 20), ("", 20), ("7", 7), (7, 7), ("100", 100)])
def test_limits(value, expected):
    assert parse_limit(value, default=20, maximum=100) == expected


@pytest.mark.parametrize("value", ["0", "101", "-3", "1.5", "x"])
def test_bad_limits(value):
    with pytest.raises(ApiError):
        parse_limit(value, default=20, maximum=100)
