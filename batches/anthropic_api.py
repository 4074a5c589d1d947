"""The Anthropic Message Batches API (``/v1/messages/batches``) over the neutral model.

Shapes follow the API as the official SDK types it (``anthropic.types.messages``: MessageBatch,
MessageBatchRequestCounts, MessageBatchIndividualResponse and the four result types); the tests
parse every object rendered here with those models.

  POST   /v1/messages/batches               parse_create -> model.new_batch -> render_batch
  GET    /v1/messages/batches               parse_list_query, api_common.paginate -> render_list
  GET    /v1/messages/batches/{id}          render_batch
  POST   /v1/messages/batches/{id}/cancel   model.request_cancel (check_cancelable) -> render_batch
  GET    /v1/messages/batches/{id}/results  results_lines (JSONL)
  DELETE /v1/messages/batches/{id}          check_deletable -> render_deleted

Validation is synchronous, as the API's is: a bad body is a 400 in the Anthropic error shape and
no batch exists. What only the provider can judge (an unknown model, a too-long prompt) comes back
per request as an ``errored`` result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from batches.api_common import ApiError, Page, parse_json_object, parse_limit
from batches.ids import new_id
from batches.model import Batch, BatchStatus, Counts, Item, ItemState

ENDPOINT = "/v1/messages"  # where every item of an Anthropic batch is sent
ID_PREFIX = "msgbatch_"
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024  # 256 MB
LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 1000
CUSTOM_ID_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")

_ERROR_TYPE_BY_KIND = {
    "invalid_request": "invalid_request_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
}
# The error type for an errored item whose answer carried no Anthropic error object of its own.
_ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def new_batch_id(entropy: bytes) -> str:
    return new_id(ID_PREFIX, entropy)


# --- requests in ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A validated ``POST /v1/messages/batches`` body: ``(custom_id, params)`` in request order."""

    requests: list[tuple[str, dict[str, Any]]]


def parse_create(raw: bytes) -> CreateRequest:
    """Validate a create body; raises ``ApiError`` (render it with ``error_response``). Messages
    name the field by its path (``requests.3.params.max_tokens``), as the API's do."""
    body = parse_json_object(raw, limit=MAX_BODY_BYTES)
    _no_extra(body, {"requests"}, "")
    requests = _field(body, "requests", "", list, "a valid list")
    if not requests:
        raise ApiError(400, "requests: List should have at least 1 item after validation, not 0")
    if len(requests) > MAX_REQUESTS:
        raise ApiError(400, f"requests: a batch holds at most {MAX_REQUESTS} requests, not {len(requests)}")
    parsed: list[tuple[str, dict[str, Any]]] = []
    first_seen: dict[str, int] = {}
    for n, request in enumerate(requests):
        custom_id, params = _parse_request(request, f"requests.{n}")
        if custom_id in first_seen:
            raise ApiError(
                400,
                f"requests.{n}.custom_id: {custom_id!r} is already used by requests.{first_seen[custom_id]}; "
                "custom_id must be unique within a batch",
            )
        first_seen[custom_id] = n
        parsed.append((custom_id, params))
    return CreateRequest(parsed)


def _parse_request(request: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(request, dict):
        raise ApiError(400, f"{where}: Input should be a valid dictionary")
    _no_extra(request, {"custom_id", "params"}, where)
    custom_id = _field(request, "custom_id", where, str, "a valid string")
    if not CUSTOM_ID_PATTERN.fullmatch(custom_id):
        raise ApiError(400, f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
    params = _field(request, "params", where, dict, "a valid dictionary")
    _check_params(params, f"{where}.params")
    return custom_id, params


def _check_params(params: dict[str, Any], where: str) -> None:
    """The Messages create params a batch item must have; the rest is the provider's to judge."""
    if not _field(params, "model", where, str, "a non-empty string"):
        raise ApiError(400, f"{where}.model: Input should be a non-empty string")
    max_tokens = _field(params, "max_tokens", where, int, "an integer greater than or equal to 1")
    if isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, f"{where}.max_tokens: Input should be an integer greater than or equal to 1")
    if not _field(params, "messages", where, list, "a non-empty list"):
        raise ApiError(400, f"{where}.messages: Input should be a non-empty list")
    # Each item is one request/one answer in the results file: there is nothing to stream to.
    if params.get("stream") is True:
        raise ApiError(400, f"{where}.stream: streaming is not supported for requests in a batch")


def _field(container: dict[str, Any], key: str, where: str, kind: type, description: str) -> Any:
    path = f"{where}.{key}" if where else key
    value = container.get(key)
    if value is None:
        raise ApiError(400, f"{path}: Field required")
    if not isinstance(value, kind):
        raise ApiError(400, f"{path}: Input should be {description}")
    return value


def _no_extra(container: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(container) - allowed)
    if extra:
        path = f"{where}.{extra[0]}" if where else extra[0]
        raise ApiError(400, f"{path}: Extra inputs are not permitted", param=extra[0] if not where else None)


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int
    before_id: str | None
    after_id: str | None


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    before_id, after_id = query.get("before_id") or None, query.get("after_id") or None
    if before_id and after_id:
        raise ApiError(400, "give at most one of before_id and after_id")
    return ListQuery(
        parse_limit(query.get("limit"), default=LIST_DEFAULT_LIMIT, maximum=LIST_MAX_LIMIT), before_id, after_id
    )


# --- objects out ------------------------------------------------------------------------------


def rfc3339(seconds: float | None) -> str | None:
    """Unix seconds as the API's RFC 3339 UTC timestamps (``2024-08-20T18:37:24.100435Z``)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def render_batch(batch: Batch, counts: Counts, *, base_url: str) -> dict[str, Any]:
    """The ``message_batch`` object. ``base_url`` is where clients reach the gateway (the SDK
    fetches ``results_url`` as given)."""
    ended = batch.status is BatchStatus.ENDED
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": batch.status.value,
        "request_counts": render_request_counts(counts, ended=ended),
        "ended_at": rfc3339(batch.ended_at),
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.expires_at),
        "archived_at": rfc3339(batch.archived_at),
        "cancel_initiated_at": rfc3339(batch.cancel_requested_at),
        "results_url": f"{base_url.rstrip('/')}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def render_request_counts(counts: Counts, *, ended: bool) -> dict[str, int]:
    """As the API documents them: every request counts as ``processing`` until the whole batch
    has ended, and only then under its outcome (the sum is always the batch's size)."""
    if not ended:
        return {"processing": counts.total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    return {
        "processing": counts.unfinished,
        "succeeded": counts.succeeded,
        "errored": counts.errored,
        "canceled": counts.canceled,
        "expired": counts.expired,
    }


def render_list(batches: Iterable[dict[str, Any]], page: Page) -> dict[str, Any]:
    return {"data": list(batches), "has_more": page.has_more, "first_id": page.first_id, "last_id": page.last_id}


def render_deleted(batch_id: str) -> dict[str, Any]:
    return {"id": batch_id, "type": "message_batch_deleted"}


def check_cancelable(batch: Batch) -> None:
    """Batches may be canceled any time before processing ends (again while canceling: no-op)."""
    if batch.status is BatchStatus.ENDED:
        raise ApiError(400, f"Batch {batch.id} has ended and can no longer be canceled")


def check_deletable(batch: Batch) -> None:
    if batch.status is not BatchStatus.ENDED:
        raise ApiError(
            400, f"Batch {batch.id} is still processing; cancel it and wait for it to end before deleting it"
        )


def check_results_available(batch: Batch) -> None:
    if batch.status is not BatchStatus.ENDED:
        raise ApiError(400, f"Batch {batch.id} has not ended; results are available once processing ends")
    if batch.archived_at is not None:
        raise ApiError(404, f"Results of batch {batch.id} have expired and are no longer available", kind="not_found")


# --- results ----------------------------------------------------------------------------------


def render_result(item: Item) -> dict[str, Any]:
    """One line of the results file: ``{"custom_id": ..., "result": {"type": ...}}``."""
    if item.outcome is None:
        raise ValueError(f"item {item.index} has no result yet ({item.state})")
    outcome = item.outcome
    result: dict[str, Any]
    if item.state is ItemState.SUCCEEDED:
        result = {"type": "succeeded", "message": outcome.body}
    elif item.state is ItemState.ERRORED:
        result = {
            "type": "errored",
            "error": _error_response(outcome.status_code, outcome.body, outcome.reason, outcome.request_id),
        }
    else:  # canceled / expired carry nothing but their type
        result = {"type": item.state.value}
    return {"custom_id": item.custom_id, "result": result}


def _error_response(status: int | None, body: Any, reason: str | None, request_id: str | None) -> dict[str, Any]:
    """The ``ErrorResponse`` of an errored result. The gateway answers in the Anthropic shape, so a
    body that already is one is kept as is; anything else is described."""
    if isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict):
        response = dict(body)
    else:
        if status is None:
            error_type, message = "api_error", reason or "the request failed"
        else:
            error_type = _ERROR_TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
            message = reason or f"the request failed with HTTP {status}"
        response = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id and "request_id" not in response:
        response["request_id"] = request_id
    return response


def results_lines(items: Iterable[Item]) -> Iterator[bytes]:
    """The results ``.jsonl``, one line per item, in request order. The API promises no order
    ("use custom_id to match"); request order is one it allows and the easiest to check."""
    for item in sorted(items, key=lambda item: item.index):
        yield orjson.dumps(render_result(item)) + b"\n"


# --- errors -----------------------------------------------------------------------------------


def error_body(error: ApiError, *, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": _ERROR_TYPE_BY_KIND.get(error.kind, "invalid_request_error"), "message": error.message},
    }
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(error: ApiError, *, request_id: str | None = None) -> tuple[int, bytes]:
    """(status, body) for an ``ApiError``, in the Anthropic error shape."""
    return error.status, orjson.dumps(error_body(error, request_id=request_id))


def not_found(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch found with id {batch_id!r}", kind="not_found")
