"""The OpenAI Files + Batch API: input file validation line by line, and every rendered object
parsed by the official SDK's own models."""

from __future__ import annotations

import orjson
import pytest
from openai.types import Batch as SdkBatch
from openai.types import FileObject
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject

from batches import openai_api as api
from batches.api_common import ApiError, paginate
from batches.model import Api, BatchState, Counts, InputError, Outcome, failed_batch, new_batch

T0 = 1_711_471_533.0
CHAT = "/v1/chat/completions"
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1711471533,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
}


def line(custom_id="r1", *, url=CHAT, method="POST", body=None, **extra) -> dict:
    return {
        "custom_id": custom_id,
        "method": method,
        "url": url,
        "body": body if body is not None else {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        **extra,
    }


def jsonl(*lines) -> bytes:
    return b"".join((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in lines)


def errors_of(raw: bytes, **kwargs) -> list[tuple[str, int | None]]:
    result = api.validate_input(raw, endpoint=kwargs.pop("endpoint", CHAT), **kwargs)
    assert not result.requests or not result.errors
    return [(error.code, error.line) for error in result.errors]


def make_state(n: int = 3, metadata=None) -> BatchState:
    validated = api.validate_input(jsonl(*(line(f"r{i}") for i in range(n))), endpoint=CHAT)
    batch, items = new_batch(
        api.new_batch_id(bytes(16)),
        tenant="t",
        api=Api.OPENAI,
        endpoint=CHAT,
        requests=validated.requests,
        now=T0,
        metadata=metadata,
        input_file_id="file-in",
    )
    return BatchState(batch, items)


def sdk_batch(state: BatchState) -> SdkBatch:
    return SdkBatch.model_validate(api.render_batch(state.batch, state.counts))


# --- files ------------------------------------------------------------------------------------


def test_an_uploaded_batch_file_parses_as_the_sdks_file_object():
    api.check_upload(filename="requests.jsonl", purpose="batch", size=10)
    record = api.new_file(api.new_file_id(b"\x01" * 16), tenant="t", filename="requests.jsonl", size=10, now=T0)
    parsed = FileObject.model_validate(api.render_file(record))
    assert parsed.id.startswith("file-") and parsed.purpose == "batch" and parsed.bytes == 10
    assert parsed.expires_at == int(T0) + 30 * 24 * 3600


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"filename": "a.jsonl", "purpose": "fine-tune", "size": 1}, 400, "purpose"),
        ({"filename": "a.txt", "purpose": "batch", "size": 1}, 400, "file"),
        ({"filename": "a.jsonl", "purpose": "batch", "size": 200 * 1024 * 1024 + 1}, 413, "file"),
    ],
)
def test_uploads_the_batch_api_cannot_use_are_refused(kwargs, status, param):
    with pytest.raises(ApiError) as caught:
        api.check_upload(**kwargs)
    assert (caught.value.status, caught.value.param) == (status, param)


def test_the_input_file_must_exist_be_the_tenants_and_have_purpose_batch():
    record = api.new_file("file-1", tenant="t", filename="a.jsonl", size=1, now=T0)
    assert api.check_input_file(record, "file-1", tenant="t") is record
    for found, tenant, status in ((None, "t", 404), (record, "other", 404)):
        with pytest.raises(ApiError) as caught:
            api.check_input_file(found, "file-1", tenant=tenant)
        assert caught.value.status == status
    with pytest.raises(ApiError) as caught:
        api.check_input_file(
            api.FileRecord("file-2", "t", "o.jsonl", "batch_output", 1, T0, None), "file-2", tenant="t"
        )
    assert caught.value.status == 400


# --- the input file -----------------------------------------------------------------------------


def test_a_valid_input_file_gives_its_requests_in_order():
    result = api.validate_input(jsonl(line("a"), line("b")), endpoint=CHAT)
    assert [custom_id for custom_id, _ in result.requests] == ["a", "b"] and result.errors == []
    assert result.requests[0][1]["model"] == "gpt-4o-mini"


def test_blank_lines_crlf_and_a_missing_final_newline_are_fine():
    raw = orjson.dumps(line("a")) + b"\r\n\r\n" + orjson.dumps(line("b"))
    assert [c for c, _ in api.validate_input(raw, endpoint=CHAT).requests] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b"{not json", "invalid_json_line"),
        (b"[1, 2]", "invalid_json_line"),
        (line(custom_id=None), "missing_required_parameter"),
        (line(custom_id=""), "missing_required_parameter"),
        (line(method="GET"), "invalid_method"),
        (line(url="/v1/moderations"), "invalid_url"),
        (line(url="/v1/embeddings"), "url_mismatch"),
        (line(body=[]), "missing_required_parameter"),
        (line(body={"messages": []}), "missing_required_parameter"),
        (line(body={"model": "gpt-4o-mini", "messages": [], "stream": True}), "invalid_value"),
        (line("r1", body={"model": "gpt-4.1", "messages": []}), "duplicate_custom_id"),
        (line("r9", body={"model": "gpt-4.1", "messages": []}), "model_mismatch"),
    ],
)
def test_each_bad_line_is_reported_with_its_line_number(bad, code):
    raw = jsonl(line("r1"), b"", bad if isinstance(bad, bytes) else orjson.dumps(bad))
    assert errors_of(raw) == [(code, 3)]


def test_every_bad_line_is_reported_and_no_request_survives():
    raw = jsonl(b"x", line("a"), line("b", method="PUT"), line("a"))
    assert errors_of(raw) == [("invalid_json_line", 1), ("invalid_method", 3), ("duplicate_custom_id", 4)]


def test_errors_reported_are_capped():
    assert len(errors_of(jsonl(*[b"x"] * 150))) == api.MAX_REPORTED_ERRORS


def test_different_models_are_allowed_when_the_gateway_is_asked_to():
    raw = jsonl(line("a"), line("b", body={"model": "claude-sonnet-4-5", "messages": []}))
    assert len(api.validate_input(raw, endpoint=CHAT, one_model=False).requests) == 2


def test_an_empty_file_fails():
    assert errors_of(b"") == [("empty_file", None)]
    assert errors_of(b"\n \n") == [("empty_file", None)]


def test_a_file_holds_at_most_50000_requests(monkeypatch):
    assert api.MAX_REQUESTS == 50_000
    monkeypatch.setattr(api, "MAX_REQUESTS", 3)
    assert errors_of(jsonl(*(line(f"r{i}") for i in range(3)))) == []
    assert errors_of(jsonl(*(line(f"r{i}") for i in range(4)))) == [("too_many_tasks", 4)]


def test_a_file_over_200_mb_fails(monkeypatch):
    monkeypatch.setattr(api, "MAX_FILE_BYTES", 10)
    assert errors_of(jsonl(line("a"))) == [("file_too_large", None)]


@pytest.mark.parametrize("endpoint", api.ENDPOINTS)
def test_every_supported_endpoint_takes_files_of_its_own_url(endpoint):
    raw = jsonl(line("a", url=endpoint, body={"model": "m", "input": "x"}))
    assert api.validate_input(raw, endpoint=endpoint).requests[0][0] == "a"


# --- POST /v1/batches -----------------------------------------------------------------------------


def create(**overrides) -> bytes:
    body = {"input_file_id": "file-1", "endpoint": CHAT, "completion_window": "24h", **overrides}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def test_a_valid_create_body_parses():
    parsed = api.parse_create(
        create(metadata={"k": "v"}, output_expires_after={"anchor": "created_at", "seconds": 3600})
    )
    assert parsed == api.CreateBatch("file-1", CHAT, "24h", {"k": "v"})
    assert api.parse_create(create(metadata=None)).metadata == {}


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (create(input_file_id=...), "input_file_id"),
        (create(input_file_id=""), "input_file_id"),
        (create(endpoint="/v1/moderations"), "endpoint"),
        (create(endpoint=...), "endpoint"),
        (create(completion_window="48h"), "completion_window"),
        (create(metadata=[]), "metadata"),
        (create(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (create(metadata={"k" * 65: "v"}), "metadata"),
        (create(metadata={"k": "v" * 513}), "metadata"),
        (create(metadata={"k": 1}), "metadata"),
        (create(output_expires_after={"anchor": "created_at", "seconds": 60}), "output_expires_after"),
        (create(output_expires_after={"anchor": "now", "seconds": 3600}), "output_expires_after"),
        (create(output_expires_after=5), "output_expires_after"),
        (create(surprise=1), "surprise"),
    ],
)
def test_an_invalid_create_body_is_a_400_naming_the_param(raw, param):
    with pytest.raises(ApiError) as caught:
        api.parse_create(raw)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_metadata_of_16_pairs_at_the_length_limits_is_fine():
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert api.parse_create(create(metadata=metadata)).metadata == metadata


def test_errors_have_the_openai_error_shape():
    with pytest.raises(ApiError) as caught:
        api.parse_create(b"nope")
    status, raw = api.error_response(caught.value)
    parsed = ErrorObject.model_validate(orjson.loads(raw)["error"])
    assert status == 400 and parsed.type == "invalid_request_error"
    status, raw = api.error_response(api.not_found("batch_x"))
    assert status == 404 and orjson.loads(raw) == {
        "error": {
            "message": "No batch found with id 'batch_x'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


# --- the batch object -----------------------------------------------------------------------------


def test_an_in_progress_batch_parses_as_the_sdks_batch_with_live_counts():
    state = make_state(3, metadata={"job": "nightly"})
    state.send(0, now=T0 + 1)
    state.record(0, Outcome.from_response(200, COMPLETION), now=T0 + 2)
    batch = sdk_batch(state)
    assert batch.id.startswith("batch_") and batch.object == "batch" and batch.status == "in_progress"
    assert (batch.endpoint, batch.input_file_id, batch.completion_window) == (CHAT, "file-in", "24h")
    assert (batch.created_at, batch.in_progress_at, batch.expires_at) == (int(T0), int(T0), int(T0) + 86400)
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 1, "failed": 0}
    assert batch.metadata == {"job": "nightly"}
    assert batch.output_file_id is None and batch.error_file_id is None and batch.errors is None


def test_a_completed_batch_has_an_output_file_and_an_error_file_when_something_failed():
    state = make_state(2)
    state.record(0, Outcome.from_response(200, COMPLETION), now=T0 + 5)
    state.record(1, Outcome.from_response(400, {"error": {"message": "bad"}}), now=T0 + 9)
    batch = sdk_batch(state)
    assert batch.status == "completed" and batch.finalizing_at == batch.completed_at == int(T0) + 9
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    assert api.parse_result_file_id(batch.output_file_id) == (state.batch.id, "output")
    assert api.parse_result_file_id(batch.error_file_id) == (state.batch.id, "error")
    assert batch.metadata is None


def test_a_batch_where_everything_succeeded_has_no_error_file_and_vice_versa():
    ok = make_state(1)
    ok.record(0, Outcome.from_response(200, COMPLETION), now=T0)
    assert sdk_batch(ok).error_file_id is None and sdk_batch(ok).output_file_id is not None
    bad = make_state(1)
    bad.record(0, Outcome.errored("connection refused"), now=T0)
    assert sdk_batch(bad).output_file_id is None and sdk_batch(bad).error_file_id is not None


def test_cancellation_renders_cancelling_then_cancelled():
    state = make_state(2)
    state.send(0, now=T0 + 1)
    state.cancel(now=T0 + 2)
    cancelling = sdk_batch(state)
    assert (cancelling.status, cancelling.cancelling_at, cancelling.cancelled_at) == ("cancelling", int(T0) + 2, None)
    state.record(0, Outcome.from_response(200, COMPLETION), now=T0 + 3)
    cancelled = sdk_batch(state)
    assert (cancelled.status, cancelled.cancelled_at) == ("cancelled", int(T0) + 3)
    assert cancelled.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 0}
    with pytest.raises(ApiError):
        api.check_cancelable(state.batch)


def test_expiry_renders_expired():
    state = make_state(2)
    state.record(0, Outcome.from_response(200, COMPLETION), now=T0 + 3)
    api.check_cancelable(state.batch)
    state.expire_if_due(now=state.batch.expires_at)
    batch = sdk_batch(state)
    assert (batch.status, batch.expired_at) == ("expired", int(state.batch.expires_at))
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}


def test_a_rejected_input_file_makes_a_failed_batch_naming_the_lines():
    validated = api.validate_input(jsonl(line("a"), b"{"), endpoint=CHAT)
    batch = failed_batch(
        api.new_batch_id(b"\x02" * 16),
        tenant="t",
        api=Api.OPENAI,
        endpoint=CHAT,
        errors=validated.errors,
        now=T0,
        input_file_id="file-in",
    )
    parsed = SdkBatch.model_validate(api.render_batch(batch, Counts()))
    assert (parsed.status, parsed.failed_at, parsed.in_progress_at) == ("failed", int(T0), None)
    assert [(e.code, e.line) for e in parsed.errors.data] == [("invalid_json_line", 2)]
    assert parsed.errors.object == "list" and parsed.output_file_id is None and parsed.error_file_id is None
    assert parsed.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}


def test_input_errors_render_every_field():
    batch = failed_batch(
        "batch_x",
        tenant="t",
        api=Api.OPENAI,
        endpoint=CHAT,
        errors=[InputError("url_mismatch", "m", line=4, param="url")],
        now=T0,
    )
    assert api.render_batch(batch, Counts())["errors"]["data"] == [
        {"code": "url_mismatch", "message": "m", "param": "url", "line": 4}
    ]


# --- output and error files -------------------------------------------------------------------------


def finished_state() -> BatchState:
    state = make_state(5)
    state.record(0, Outcome.from_response(200, COMPLETION, "req_0"), now=T0 + 1)
    state.record(
        1,
        Outcome.from_response(400, {"error": {"message": "bad", "type": "invalid_request_error"}}, "req_1"),
        now=T0 + 1,
    )
    state.record(2, Outcome.errored("gave up after 5 attempts: reset"), now=T0 + 1)
    state.give_up(3, Outcome.expired(), now=T0 + 1)
    state.cancel(now=T0 + 2)
    return state


def test_the_output_file_holds_2xx_answers_in_the_batch_output_line_shape():
    state = finished_state()
    lines = [orjson.loads(raw) for raw in api.output_lines(state.batch.id, reversed(state.items))]
    assert len(lines) == 1
    (only,) = lines
    assert only["id"].startswith("batch_req_") and only["custom_id"] == "r0" and only["error"] is None
    assert (only["response"]["status_code"], only["response"]["request_id"]) == (200, "req_0")
    assert ChatCompletion.model_validate(only["response"]["body"]).choices[0].message.content == "Hi"


def test_the_error_file_holds_everything_else_in_request_order():
    state = finished_state()
    lines = [orjson.loads(raw) for raw in api.error_lines(state.batch.id, state.items)]
    assert [entry["custom_id"] for entry in lines] == ["r1", "r2", "r3", "r4"]
    answered, gave_up, expired, cancelled = lines
    assert answered["response"]["status_code"] == 400 and answered["error"] is None
    assert answered["response"]["body"]["error"]["message"] == "bad"
    assert (
        gave_up["response"] is None
        and gave_up["error"]["code"] == "request_failed"
        and "reset" in gave_up["error"]["message"]
    )
    assert expired["error"]["code"] == "batch_expired" and cancelled["error"]["code"] == "batch_cancelled"


def test_request_ids_in_the_files_are_stable_across_renders():
    state = finished_state()
    assert list(api.error_lines(state.batch.id, state.items)) == list(api.error_lines(state.batch.id, state.items))
    ids = [orjson.loads(raw)["id"] for raw in api.error_lines(state.batch.id, state.items)]
    assert len(set(ids)) == len(ids)


def test_result_files_parse_as_the_sdks_file_object():
    state = finished_state()
    content = b"".join(api.error_lines(state.batch.id, state.items))
    parsed = FileObject.model_validate(api.render_file(api.result_file(state.batch, "error", size=len(content))))
    assert (parsed.purpose, parsed.bytes, parsed.created_at) == (
        "batch_output",
        len(content),
        int(state.batch.ended_at),
    )
    assert api.parse_result_file_id(parsed.id) == (state.batch.id, "error")
    with pytest.raises(ValueError):
        api.result_file(make_state(1).batch, "output", size=0)


def test_ordinary_file_ids_are_not_result_files():
    assert api.parse_result_file_id("file-abc") is None
    assert api.parse_result_file_id("file-batchout-") is None


def test_an_unfinished_item_has_no_output_line():
    with pytest.raises(ValueError):
        api.render_output_line("batch_x", make_state(1).items[0])


# --- listing --------------------------------------------------------------------------------------


def test_list_pages_follow_the_sdks_cursor_pagination():
    ids = [f"batch_{n}" for n in range(7)]
    query = api.parse_list_query({"limit": "3"})
    seen, after = [], None
    while True:
        page = paginate(ids, limit=query.limit, after_id=after)
        rendered = api.render_list(({"id": i} for i in page.ids), page)
        assert rendered["object"] == "list" and rendered["first_id"] == page.ids[0]
        seen += [entry["id"] for entry in rendered["data"]]
        if not rendered["has_more"]:
            break
        after = rendered["data"][-1]["id"]  # what SyncCursorPage.next_page_info sends
    assert seen == ids


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}])
def test_bad_list_queries_are_400s(query):
    with pytest.raises(ApiError):
        api.parse_list_query(query)


def test_list_query_defaults():
    assert api.parse_list_query({}) == api.ListQuery(20, None)
