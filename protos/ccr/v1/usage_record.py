"""One usage record per client request: the contract between the decision service, which makes them
(from Envoy's usage access log), and the ledger, which carries them to storage and reports on them.

A record is immutable and identified by ``(request_id, time)``: the same request's record sent twice
(a broker redelivery, a spool replayed after a crash) is the same row, never a second one. The field
names are the ones ``usage export`` prints, one JSON object per record.

Pure: dataclasses, JSON in and out (orjson), validation that names the bad field. No I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

USAGE_FROM_PROVIDER = "provider"  # the provider's own token counts (a cache hit: exactly none, none was asked)
USAGE_ESTIMATED = "estimated"  # none came back (an error, a cut stream): the gateway's estimate
USAGE_SOURCES = (USAGE_FROM_PROVIDER, USAGE_ESTIMATED)

# What a batch on the wire says it is: a consumer refuses what it cannot read instead of guessing.
# A field added with a default keeps the version: a newer reader reads older batches as they are
# (spools, dead letters; the field takes its default), and an older reader refuses a newer record
# naming the field it does not know (its writer dead-letters the batch, to replay once upgraded:
# upgrade the ledger writer before the gateways). A new version would be refused all the same.
BATCH_VERSION = 1


class RecordError(ValueError):
    """A record or batch that cannot be read; the message names the field."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str  # Envoy's x-request-id: the access log's and the `request-id` header's
    time: str  # when the request started, ISO 8601 UTC with microseconds (time_of); part of the key
    client_api: str  # anthropic | openai
    endpoint: str  # the client's path, e.g. /v1/messages
    requested_model: str  # what the client asked for
    status: int  # the HTTP status the client got
    stream: bool
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_usd: float
    usage_source: str  # USAGE_FROM_PROVIDER or USAGE_ESTIMATED
    duration_ms: float  # first byte in to last byte out
    tenant: str | None = None  # from auth (a later issue): None until then
    key_id: str | None = None
    scenario: str | None = None  # CCR's scenario that chose the route (None: not routed)
    provider: str | None = None  # the provider that answered (a fallback chain's: the attempt that did)
    model: str | None = None  # the provider's model that answered
    attempts: int = 0  # provider attempts (0: answered by the gateway itself)
    error_type: str | None = None  # None on success; else the error's type as the client saw it
    ttfb_ms: float | None = None  # first byte in to the provider's first byte
    session_id: str | None = None
    cache: str | None = None  # hit | miss | store (a no-cache refresh) | None (the cache not applied)
    # A cache hit: its cached answer's usage at the route's prices, what a provider would have been
    # paid (the hit itself spends nothing: 0 tokens, cost_usd 0). 0.0 on anything else, and on
    # records from gateways older than the field.
    cost_avoided_usd: float = 0.0
    # The batch whose item this request was (a batch worker's, sent for the batch's owner); None for
    # everything else. Left out of the JSON when None, so a ledger writer older than the field
    # takes the records of all but batch traffic.
    batch_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in FIELDS}


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(UsageRecord))
_TYPES: dict[str, tuple[type, ...]] = {
    "request_id": (str,),
    "time": (str,),
    "client_api": (str,),
    "endpoint": (str,),
    "requested_model": (str,),
    "status": (int,),
    "stream": (bool,),
    "input_tokens": (int,),
    "output_tokens": (int,),
    "cache_read_tokens": (int,),
    "cache_creation_tokens": (int,),
    "cost_usd": (int, float),
    "usage_source": (str,),
    "duration_ms": (int, float),
    "tenant": (str, type(None)),
    "key_id": (str, type(None)),
    "scenario": (str, type(None)),
    "provider": (str, type(None)),
    "model": (str, type(None)),
    "attempts": (int,),
    "error_type": (str, type(None)),
    "ttfb_ms": (int, float, type(None)),
    "session_id": (str, type(None)),
    "cache": (str, type(None)),
    "cost_avoided_usd": (int, float),
    "batch_id": (str, type(None)),
}
_REQUIRED = tuple(field.name for field in dataclasses.fields(UsageRecord) if field.default is dataclasses.MISSING)


def time_of(seconds: float) -> str:
    """Epoch seconds -> the record's time: ISO 8601 UTC, microseconds, 'Z'."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def time_of_timestamp(seconds: int, nanos: int) -> str:
    """A protobuf Timestamp's parts -> the record's time, exactly (microseconds truncated). The
    usage log makes one per request: the second's text is formatted once per second, not per call
    (datetime's strftime was the single largest cost of building a record)."""
    return f"{_second_text(seconds)}.{nanos // 1000:06d}Z"


@functools.lru_cache(maxsize=8)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def parse_time(value: str) -> datetime:
    """The record's time as an aware datetime (RecordError if it is not one of ours)."""
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError as exc:
        raise RecordError(f"time: {value!r} is not an ISO 8601 UTC time like 2026-01-31T12:00:00.000000Z") from exc
    return parsed.replace(tzinfo=UTC)


def record_from_dict(data: Mapping[str, Any]) -> UsageRecord:
    """A record from its JSON object; RecordError names the first field that is missing or wrong."""
    if not isinstance(data, Mapping):
        raise RecordError("a usage record must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RecordError(f"unknown fields: {', '.join(unknown)}")
    for name in _REQUIRED:
        if name not in data:
            raise RecordError(f"{name}: missing")
    for name, value in data.items():
        allowed = _TYPES[name]
        # bool is an int in Python: a count or a status must not be true/false.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise RecordError(f"{name}: {value!r} is not a {' or '.join(t.__name__ for t in allowed)}")
    if data["usage_source"] not in USAGE_SOURCES:
        raise RecordError(f"usage_source: {data['usage_source']!r} is not one of {', '.join(USAGE_SOURCES)}")
    if not data["request_id"]:
        raise RecordError("request_id: empty")
    parse_time(data["time"])
    return UsageRecord(**data)


def encode_batch(records: Iterable[UsageRecord]) -> bytes:
    """Records -> one message body: {"v": 1, "records": [...]}."""
    return orjson.dumps({"v": BATCH_VERSION, "records": [_wire(record) for record in records]})


def decode_batch(body: bytes) -> list[UsageRecord]:
    """One message body -> its records; RecordError (with the record's index) for anything else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("v") != BATCH_VERSION or not isinstance(data.get("records"), list):
        raise RecordError(f'not a usage batch: expected {{"v": {BATCH_VERSION}, "records": [...]}}')
    records = []
    for index, item in enumerate(data["records"]):
        try:
            records.append(record_from_dict(item))
        except RecordError as exc:
            raise RecordError(f"records[{index}]: {exc}") from None
    return records


def encode_line(record: UsageRecord) -> bytes:
    """One record as a JSON line (``usage export --format jsonl``, the spool)."""
    return orjson.dumps(_wire(record)) + b"\n"


def _wire(record: UsageRecord) -> dict[str, Any]:
    """The record's JSON object: ``batch_id`` only when set (see the field)."""
    data = record.as_dict()
    if data["batch_id"] is None:
        del data["batch_id"]
    return data
