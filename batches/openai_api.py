"""The OpenAI Files + Batch API (``/v1/files``, ``/v1/batches``) over the neutral model.

Shapes follow the API as the official SDK types it (``openai.types``: FileObject, Batch,
BatchRequestCounts, BatchError); the tests parse every object rendered here with those models.

  POST /v1/files (purpose=batch)     check_upload -> FileRecord -> render_file
  POST /v1/batches                   parse_create; validate_input(file bytes) ->
                                     model.new_batch, or model.failed_batch with the line errors
  GET  /v1/batches[/{id}]            parse_list_query, api_common.paginate -> render_list / render_batch
  POST /v1/batches/{id}/cancel       check_cancelable, model.request_cancel -> render_batch
  GET  /v1/files/{id}/content        output_lines / error_lines of the batch parse_result_file_id names

Unlike Anthropic, OpenAI validates the input file after accepting the batch: line problems make a
``failed`` batch whose ``errors.data`` name the line, not a 400. Output and error files are not
stored: they are rendered from the items on demand (their ids name the batch), so finishing a
batch writes nothing but item states and a crash cannot leave half a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batches.api_common import ApiError, Page, parse_json_object, parse_limit
from batches.ids import derived_id, new_id
from batches.model import Batch, BatchStatus, Counts, EndReason, InputError, Item, ItemState

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024  # 200 MB
MAX_CREATE_BODY_BYTES = 1024 * 1024
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_REPORTED_ERRORS = 100  # a 50,000-line file of errors is not 50,000 entries of errors.data
FILE_RETENTION_SECONDS = 30 * 24 * 3600  # batch files expire after 30 days by default
LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT = 20, 100

BATCH_PREFIX, FILE_PREFIX, REQUEST_PREFIX = "batch_", "file-", "batch_req_"
_RESULT_FILE_PREFIXES = {"output": "file-batchout-", "error": "file-batcherr-"}


def new_batch_id(entropy: bytes) -> str:
    return new_id(BATCH_PREFIX, entropy)


def new_file_id(entropy: bytes) -> str:
    return new_id(FILE_PREFIX, entropy)


# --- files ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    tenant: str
    filename: str
    purpose: str  # "batch" (uploaded) or "batch_output" (rendered results)
    bytes: int
    created_at: float
    expires_at: float | None


def check_upload(*, filename: str, purpose: str, size: int) -> None:
    """What ``POST /v1/files`` can refuse before reading the lines (those are checked per batch)."""
    if purpose != "batch":
        raise ApiError(
            400,
            f"purpose {purpose!r} is not supported here; this gateway stores files for the Batch API (purpose 'batch')",
            param="purpose",
        )
    if not filename.endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
    if size > MAX_FILE_BYTES:
        raise ApiError(
            413,
            f"File is {size} bytes; a batch input file may be at most {MAX_FILE_BYTES}",
            kind="too_large",
            param="file",
        )


def new_file(file_id: str, *, tenant: str, filename: str, size: int, now: float) -> FileRecord:
    return FileRecord(file_id, tenant, filename, "batch", size, now, now + FILE_RETENTION_SECONDS)


def render_file(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": int(record.created_at),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",  # deprecated by the API, still required by its schema
        "expires_at": None if record.expires_at is None else int(record.expires_at),
        "status_details": None,
    }


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's ``output`` or ``error`` file: it names the batch, so the file can be
    rendered from the items whenever it is asked for."""
    return _RESULT_FILE_PREFIXES[kind] + batch_id.removeprefix(BATCH_PREFIX)


def parse_result_file_id(file_id: str) -> tuple[str, str] | None:
    """``(batch_id, "output"|"error")`` for a result file id, None for any other file id."""
    for kind, prefix in _RESULT_FILE_PREFIXES.items():
        if file_id.startswith(prefix) and len(file_id) > len(prefix):
            return BATCH_PREFIX + file_id.removeprefix(prefix), kind
    return None


def result_file(batch: Batch, kind: str, *, size: int) -> FileRecord:
    """The file object of a batch's output or error file (``size``: the rendered content's bytes)."""
    if batch.ended_at is None:
        raise ValueError("result files exist once the batch has ended")
    return FileRecord(
        output_file_id(batch.id, kind),
        batch.tenant,
        f"{batch.id}_{kind}.jsonl",
        "batch_output",
        size,
        batch.ended_at,
        batch.created_at + FILE_RETENTION_SECONDS,
    )


# --- the input file ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidatedInput:
    """The requests of an input file, or why the batch fails (never both)."""

    requests: list[tuple[str, dict[str, Any]]]
    errors: list[InputError]


def validate_input(raw: bytes, *, endpoint: str, one_model: bool = True) -> ValidatedInput:
    """Check a batch input file line by line against the batch's ``endpoint``.

    Each line: ``{"custom_id", "method": "POST", "url", "body"}``; every url is the batch's
    endpoint (one url per file), custom_id unique, and (``one_model``, as OpenAI requires) every
    body names the same model. Errors carry 1-based line numbers; at most MAX_REPORTED_ERRORS.
    """
    errors: list[InputError] = []
    if len(raw) > MAX_FILE_BYTES:
        return ValidatedInput([], [InputError("file_too_large", f"The input file exceeds {MAX_FILE_BYTES} bytes.")])
    requests: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    model: str | None = None
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (the trailing newline included) are not requests
        if len(requests) + len(errors) >= MAX_REQUESTS:
            # Counted over requests and bad lines alike: the limit is on lines of work.
            return ValidatedInput(
                [],
                [InputError("too_many_tasks", f"The input file has more than {MAX_REQUESTS} requests.", line=number)],
            )
        parsed = _parse_line(line, number, endpoint)
        if isinstance(parsed, InputError):
            errors.append(parsed)
            continue
        custom_id, body = parsed
        if custom_id in seen:
            errors.append(
                InputError(
                    "duplicate_custom_id",
                    f"The custom_id {custom_id!r} is already used on line {seen[custom_id]}.",
                    line=number,
                    param="custom_id",
                )
            )
            continue
        seen[custom_id] = number
        if one_model:
            if model is None:
                model = body.get("model")
            elif body.get("model") != model:
                errors.append(
                    InputError(
                        "model_mismatch",
                        f"Every request in a batch must use the same model; line {number} uses {body.get('model')!r}, not {model!r}.",
                        line=number,
                        param="body.model",
                    )
                )
                continue
        requests.append((custom_id, body))
    if not requests and not errors:
        errors.append(InputError("empty_file", "The input file is empty."))
    if errors:
        return ValidatedInput([], errors[:MAX_REPORTED_ERRORS])
    return ValidatedInput(requests, [])


def _parse_line(line: bytes, number: int, endpoint: str) -> tuple[str, dict[str, Any]] | InputError:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return InputError("invalid_json_line", "This line is not parseable as valid JSON.", line=number)
    if not isinstance(value, dict):
        return InputError("invalid_json_line", "This line is not a JSON object.", line=number)
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return InputError(
            "missing_required_parameter", "Each request needs a custom_id string.", line=number, param="custom_id"
        )
    if value.get("method") != "POST":
        return InputError(
            "invalid_method", f"method must be 'POST', not {value.get('method')!r}.", line=number, param="method"
        )
    url = value.get("url")
    if url not in ENDPOINTS:
        return InputError(
            "invalid_url", f"url must be one of {', '.join(ENDPOINTS)}, not {url!r}.", line=number, param="url"
        )
    if url != endpoint:
        return InputError(
            "url_mismatch",
            f"The url {url!r} does not match the batch's endpoint {endpoint!r}; a file holds requests for one url.",
            line=number,
            param="url",
        )
    body = value.get("body")
    if not isinstance(body, dict):
        return InputError("missing_required_parameter", "Each request needs a body object.", line=number, param="body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return InputError("missing_required_parameter", "The body needs a model.", line=number, param="body.model")
    if body.get("stream") is True:
        return InputError(
            "invalid_value", "Streaming is not supported for requests in a batch.", line=number, param="body.stream"
        )
    return custom_id, body


# --- POST /v1/batches -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateBatch:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str]


_CREATE_KEYS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}


def parse_create(raw: bytes) -> CreateBatch:
    body = parse_json_object(raw, limit=MAX_CREATE_BODY_BYTES)
    extra = sorted(set(body) - _CREATE_KEYS)
    if extra:
        raise ApiError(400, f"Unrecognized request argument supplied: {extra[0]}", param=extra[0])
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id")
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise ApiError(
            400,
            f"Invalid value for 'endpoint': {endpoint!r}; supported here: {', '.join(ENDPOINTS)}.",
            param="endpoint",
        )
    window = body.get("completion_window")
    if window != "24h":
        raise ApiError(
            400,
            f"Invalid value for 'completion_window': {window!r}; only '24h' is supported.",
            param="completion_window",
        )
    _check_output_expires_after(body.get("output_expires_after"))
    return CreateBatch(input_file_id, endpoint, window, _check_metadata(body.get("metadata")))


def _check_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ApiError(400, "Invalid type for 'metadata': expected an object.", param="metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ApiError(
            400,
            f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} key-value pairs, got {len(metadata)}.",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise ApiError(
                400, f"Invalid 'metadata': keys are at most {MAX_METADATA_KEY} characters.", param="metadata"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': values are strings of at most {MAX_METADATA_VALUE} characters.",
                param="metadata",
            )
    return dict(metadata)


def _check_output_expires_after(value: Any) -> None:
    if value is None:
        return
    seconds = value.get("seconds") if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or value.get("anchor") != "created_at"
        or isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not 3600 <= seconds <= 2_592_000
    ):
        raise ApiError(
            400,
            "Invalid 'output_expires_after': anchor 'created_at' and seconds between 3600 and 2592000.",
            param="output_expires_after",
        )


def check_input_file(record: FileRecord | None, input_file_id: str, *, tenant: str) -> FileRecord:
    """The batch's input file exists, is the tenant's, and was uploaded for the Batch API."""
    if record is None or record.tenant != tenant:
        raise ApiError(404, f"No such File object: {input_file_id}", kind="not_found", param="input_file_id")
    if record.purpose != "batch":
        raise ApiError(400, f"The input file must have purpose 'batch', not {record.purpose!r}.", param="input_file_id")
    return record


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int
    after: str | None


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    return ListQuery(
        parse_limit(query.get("limit"), default=LIST_DEFAULT_LIMIT, maximum=LIST_MAX_LIMIT), query.get("after") or None
    )


# --- the batch object -------------------------------------------------------------------------


def _ts(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def render_batch(batch: Batch, counts: Counts) -> dict[str, Any]:
    """The ``batch`` object. Our validation is synchronous, so a batch is never seen
    ``validating``, and results need no writing, so ``finalizing`` and ``completed`` coincide."""
    reason = batch.end_reason(counts)
    times: dict[str, float | None] = dict.fromkeys(
        ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
    )
    errors = None
    if reason is EndReason.FAILED:
        status, times["failed_at"] = "failed", batch.ended_at
        errors = {"object": "list", "data": [_render_input_error(error) for error in batch.failure]}
    else:
        times["in_progress_at"] = batch.created_at
        times["cancelling_at"] = batch.cancel_requested_at
        if batch.status is BatchStatus.IN_PROGRESS:
            status = "in_progress"
        elif batch.status is BatchStatus.CANCELING:
            status = "cancelling"
        elif reason is EndReason.CANCELED:
            status, times["cancelled_at"] = "cancelled", batch.ended_at
        elif reason is EndReason.EXPIRED:
            status, times["expired_at"] = "expired", batch.ended_at
        else:
            status = "completed"
            times["finalizing_at"] = times["completed_at"] = batch.ended_at
    ended_with_items = batch.ended_at is not None and reason is not EndReason.FAILED
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id or "",
        "completion_window": "24h",
        "status": status,
        "output_file_id": output_file_id(batch.id, "output") if ended_with_items and counts.succeeded else None,
        "error_file_id": output_file_id(batch.id, "error")
        if ended_with_items and counts.total - counts.succeeded
        else None,
        "created_at": int(batch.created_at),
        "expires_at": int(batch.expires_at),
        **{name: _ts(value) for name, value in times.items()},
        "request_counts": render_request_counts(counts),
        "metadata": dict(batch.metadata) or None,
    }


def render_request_counts(counts: Counts) -> dict[str, int]:
    """Live counts: ``completed`` got a 2xx answer, ``failed`` ended without one; canceled items
    are in neither (they were never run), as with the API."""
    return {"total": counts.total, "completed": counts.succeeded, "failed": counts.errored + counts.expired}


def _render_input_error(error: InputError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "param": error.param, "line": error.line}


def render_list(objects: Iterable[dict[str, Any]], page: Page) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(objects),
        "first_id": page.first_id,
        "last_id": page.last_id,
        "has_more": page.has_more,
    }


def check_cancelable(batch: Batch) -> None:
    if batch.status is BatchStatus.ENDED:
        raise ApiError(400, f"Cannot cancel a batch that has already ended ({batch.id}).")


# --- output and error files -------------------------------------------------------------------


def render_output_line(batch_id: str, item: Item) -> dict[str, Any]:
    """One line of the output file (2xx answers) or the error file (everything else)."""
    outcome = item.outcome
    if outcome is None:
        raise ValueError(f"item {item.index} has no result yet ({item.state})")
    line: dict[str, Any] = {"id": derived_id(REQUEST_PREFIX, batch_id, item.custom_id), "custom_id": item.custom_id}
    if outcome.status_code is not None:
        # Answered, even with an error status: the answer's body is the record (an HTTP error is
        # not a batch-level error, so ``error`` stays null).
        line["response"] = {"status_code": outcome.status_code, "request_id": outcome.request_id, "body": outcome.body}
        line["error"] = None
    else:
        line["response"] = None
        line["error"] = {"code": _ERROR_CODES[item.state], "message": outcome.reason or _ERROR_MESSAGES[item.state]}
    return line


_ERROR_CODES = {
    ItemState.EXPIRED: "batch_expired",
    ItemState.CANCELED: "batch_cancelled",
    ItemState.ERRORED: "request_failed",
}
_ERROR_MESSAGES = {
    ItemState.EXPIRED: "This request could not be executed before the completion window expired.",
    ItemState.CANCELED: "This request was not executed because the batch was cancelled.",
    ItemState.ERRORED: "This request failed.",
}


def output_lines(batch_id: str, items: Iterable[Item]) -> Iterator[bytes]:
    """The output file: items answered 2xx, in request order (the API promises no order; custom_id matches)."""
    for item in sorted(items, key=lambda item: item.index):
        if item.state is ItemState.SUCCEEDED:
            yield orjson.dumps(render_output_line(batch_id, item)) + b"\n"


def error_lines(batch_id: str, items: Iterable[Item]) -> Iterator[bytes]:
    """The error file: every other ended item (errored, expired, cancelled), in request order."""
    for item in sorted(items, key=lambda item: item.index):
        if item.state.final and item.state is not ItemState.SUCCEEDED:
            yield orjson.dumps(render_output_line(batch_id, item)) + b"\n"


# --- errors -----------------------------------------------------------------------------------


def error_body(error: ApiError) -> dict[str, Any]:
    code = {"not_found": None, "too_large": "file_too_large"}.get(error.kind)
    return {"error": {"message": error.message, "type": "invalid_request_error", "param": error.param, "code": code}}


def error_response(error: ApiError) -> tuple[int, bytes]:
    """(status, body) for an ``ApiError``, in the OpenAI error shape."""
    return error.status, orjson.dumps(error_body(error))


def not_found(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch found with id '{batch_id}'.", kind="not_found")
