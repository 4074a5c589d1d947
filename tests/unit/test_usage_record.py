"""ccr.v1.usage_record: the record every request leaves, as the ledger reads it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccr.v1.usage_record import (
    BATCH_VERSION,
    FIELDS,
    RecordError,
    UsageRecord,
    decode_batch,
    encode_batch,
    encode_line,
    parse_time,
    record_from_dict,
    time_of,
    time_of_timestamp,
)
from tests.unit.ledger_records import make_record


def record(**changes) -> UsageRecord:
    return make_record(**changes)


def test_the_export_field_names_in_their_order():
    assert FIELDS[:2] == ("request_id", "time")
    assert set(FIELDS) >= {"tenant", "key_id", "scenario", "error_type", "ttfb_ms", "session_id", "cache"}
    assert FIELDS[FIELDS.index("cache") + 1] == "cost_avoided_usd"


def test_a_batch_round_trips_and_a_line_is_one_json_object():
    records = [record(), record(request_id="8a2d", stream=False, usage_source="estimated", status=529)]
    assert decode_batch(encode_batch(records)) == records
    no_batch = {name: value for name, value in records[0].as_dict().items() if name != "batch_id"}
    assert orjson.loads(encode_line(records[0])) == no_batch  # batch_id only when set: older writers take it


def test_a_batch_items_record_carries_its_batch_id_on_the_wire():
    item = record(batch_id="msgbatch_01")
    assert orjson.loads(encode_line(item))["batch_id"] == "msgbatch_01"
    assert decode_batch(encode_batch([item, record(request_id="x")])) == [item, record(request_id="x")]


def test_times_are_utc_with_microseconds():
    assert time_of(0.5) == "1970-01-01T00:00:00.500000Z"
    assert parse_time(time_of(1_796_600_000.25)).timestamp() == 1_796_600_000.25


@given(seconds=st.integers(min_value=0, max_value=4_102_444_800), micros=st.integers(min_value=0, max_value=999_999))
def test_a_timestamps_parts_give_the_same_time_exactly(seconds, micros):
    text = time_of_timestamp(seconds, micros * 1000 + 999)  # nanoseconds below a microsecond are cut
    assert parse_time(text) == datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "200"}, "status: '200' is not a int"),
        ({"input_tokens": True}, "input_tokens: True is not a int"),
        ({"usage_source": "guess"}, "usage_source: 'guess' is not one of provider, estimated"),
        ({"time": "yesterday"}, "time: 'yesterday' is not an ISO 8601 UTC time"),
        ({"request_id": ""}, "request_id: empty"),
        ({"cost_avoided_usd": "0.01"}, "cost_avoided_usd: '0.01' is not a int or float"),
        ({"cost_avoided_usd": None}, "cost_avoided_usd: None is not a int or float"),
        ({"cost_avoided_usd": False}, "cost_avoided_usd: False is not a int or float"),
        ({"colour": "red"}, "unknown fields: colour"),
    ],
)
def test_a_bad_record_names_its_field(change, message):
    with pytest.raises(RecordError, match="records\\[0\\]: " + message.replace("(", "\\(")):
        decode_batch(orjson.dumps({"v": 1, "records": [{**record().as_dict(), **change}]}))


def test_a_missing_field_and_a_foreign_body_are_refused():
    data = record().as_dict()
    del data["status"]
    with pytest.raises(RecordError, match="status: missing"):
        record_from_dict(data)
    for body in (b"not json", b"[]", b'{"v": 2, "records": []}'):
        with pytest.raises(RecordError):
            decode_batch(body)


def test_a_hit_carries_the_cost_it_avoided_over_the_wire_and_in_its_line():
    hit = record(cache="hit", input_tokens=0, output_tokens=0, cost_usd=0.0, cost_avoided_usd=0.0042)
    assert decode_batch(encode_batch([hit])) == [hit]
    assert orjson.loads(encode_line(hit))["cost_avoided_usd"] == 0.0042
    assert record().cost_avoided_usd == 0.0  # anything but a hit


def test_a_batch_from_a_gateway_older_than_cost_avoided_is_still_read():
    old = {name: value for name, value in record(cache="hit").as_dict().items() if name != "cost_avoided_usd"}
    (read,) = decode_batch(orjson.dumps({"v": BATCH_VERSION, "records": [old]}))
    assert read.cost_avoided_usd == 0.0 and read.cache == "hit"
    assert BATCH_VERSION == 1  # an optional field with a default needs no new version


@given(
    tokens=st.integers(min_value=0, max_value=10**9),
    cost=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    avoided=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    session=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_valid_record_survives_the_wire(tokens, cost, avoided, session):
    original = record(input_tokens=tokens, cost_usd=cost, cost_avoided_usd=avoided, session_id=session)
    assert decode_batch(encode_batch([original])) == [original]
