"""Every streaming golden case replayed whole, one byte at a time, at hypothesis-chosen split
points, and with CRLF line endings: the client bytes and the reported usage never change."""

from __future__ import annotations

import pytest
from chat_cases import Case, replay, stream_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.stream_checks import split_at

CASES = stream_cases()
IDS = [case.name for case in CASES]


def _whole(case: Case) -> tuple[bytes, list]:
    result = replay(case, [case.provider_response()])
    assert len(result.usages) <= 1, "usage is reported once"
    return result.body, result.usages


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_fed_one_byte_at_a_time_translates_identically(case: Case) -> None:
    data = case.provider_response()
    body, usages = _whole(case)
    result = replay(case, [data[i : i + 1] for i in range(len(data))])
    assert result.body == body
    assert result.usages == usages


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_with_crlf_line_endings_translates_identically(case: Case) -> None:
    data = case.provider_response().replace(b"\n", b"\r\n")
    body, usages = _whole(case)
    assert replay(case, [data]).body == body
    result = replay(case, [data[i : i + 1] for i in range(len(data))])  # splits inside "\r\n" too
    assert result.body == body
    assert result.usages == usages


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_split_after_the_last_byte_still_closes(case: Case) -> None:
    """The end of stream may come as a separate empty chunk."""
    body, usages = _whole(case)
    result = replay(case, [case.provider_response(), b""])
    assert result.body == body
    assert result.usages == usages


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_split_at_random_points_translates_identically(case: Case, data: st.DataObject) -> None:
    raw = case.provider_response()
    if data.draw(st.booleans(), label="crlf"):
        raw = raw.replace(b"\n", b"\r\n")
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=30), label="split points")
    body, usages = _whole(case)
    result = replay(case, split_at(raw, points))
    assert result.body == body
    assert result.usages == usages
