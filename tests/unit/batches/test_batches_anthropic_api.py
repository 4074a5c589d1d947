"""The Anthropic Message Batches API: create-body validation, and every rendered object parsed by
the official SDK's own models."""

from __future__ import annotations

import orjson
import pytest
from anthropic._models import construct_type
from anthropic.types.messages import (
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchIndividualResponse,
)
from anthropic.types.shared import ErrorResponse

from batches import anthropic_api as api
from batches.api_common import ApiError, paginate
from batches.model import Api, BatchState, Counts, Outcome, new_batch

T0 = 1_724_179_044.100435
BASE = "https://gateway.example"
MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


def params(**extra):
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **extra}


def body(*requests) -> bytes:
    return orjson.dumps({"requests": list(requests)})


def refused(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        api.parse_create(raw)
    return caught.value


def make_state(n: int = 3) -> BatchState:
    created = api.parse_create(body(*({"custom_id": f"req-{i}", "params": params()} for i in range(n))))
    batch, items = new_batch(
        api.new_batch_id(bytes(16)),
        tenant="t",
        api=Api.ANTHROPIC,
        endpoint=api.ENDPOINT,
        requests=created.requests,
        now=T0,
    )
    return BatchState(batch, items)


# --- validation -------------------------------------------------------------------------------


def test_a_valid_create_body_gives_the_requests_in_order():
    created = api.parse_create(
        body({"custom_id": "a-1", "params": params()}, {"custom_id": "B_2", "params": params(temperature=0)})
    )
    assert [custom_id for custom_id, _ in created.requests] == ["a-1", "B_2"]
    assert created.requests[1][1]["temperature"] == 0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"{}", "requests: Field required"),
        (orjson.dumps({"requests": {}}), "valid list"),
        (orjson.dumps({"requests": []}), "at least 1 item"),
        (orjson.dumps({"requests": [], "extra": 1}), "extra: Extra inputs"),
        (body("x"), "requests.0: Input should be a valid dictionary"),
        (body({"custom_id": "a", "params": params(), "more": 1}), "requests.0.more: Extra inputs"),
        (body({"params": params()}), "requests.0.custom_id: Field required"),
        (body({"custom_id": 7, "params": params()}), "custom_id: Input should be a valid string"),
        (body({"custom_id": "", "params": params()}), "should match pattern"),
        (body({"custom_id": "a" * 65, "params": params()}), "should match pattern"),
        (body({"custom_id": "has space", "params": params()}), "should match pattern"),
        (body({"custom_id": "ünï", "params": params()}), "should match pattern"),
        (body({"custom_id": "a"}), "requests.0.params: Field required"),
        (body({"custom_id": "a", "params": []}), "params: Input should be a valid dictionary"),
        (body({"custom_id": "a", "params": {"max_tokens": 1, "messages": [{}]}}), "params.model: Field required"),
        (body({"custom_id": "a", "params": params(model="")}), "params.model: Input should be"),
        (body({"custom_id": "a", "params": {"model": "m", "messages": [{}]}}), "params.max_tokens: Field required"),
        (body({"custom_id": "a", "params": params(max_tokens=0)}), "greater than or equal to 1"),
        (body({"custom_id": "a", "params": params(max_tokens=True)}), "max_tokens"),
        (body({"custom_id": "a", "params": params(max_tokens="64")}), "max_tokens"),
        (body({"custom_id": "a", "params": {"model": "m", "max_tokens": 1}}), "params.messages: Field required"),
        (body({"custom_id": "a", "params": params(messages=[])}), "non-empty list"),
        (body({"custom_id": "a", "params": params(stream=True)}), "params.stream: streaming is not supported"),
        (
            body({"custom_id": "a", "params": params()}, {"custom_id": "a", "params": params()}),
            "requests.1.custom_id: 'a' is already used by requests.0",
        ),
    ],
)
def test_an_invalid_create_body_is_a_400_saying_where(raw, fragment):
    error = refused(raw)
    assert error.status == 400 and fragment in error.message


def test_stream_false_is_allowed_in_a_batch_item():
    assert api.parse_create(body({"custom_id": "a", "params": params(stream=False)})).requests


def test_custom_ids_of_64_word_characters_are_allowed():
    custom_id = "aZ09_-" * 10 + "abcd"
    assert api.parse_create(body({"custom_id": custom_id, "params": params()})).requests[0][0] == custom_id


def test_a_batch_holds_at_most_100000_requests(monkeypatch):
    assert api.MAX_REQUESTS == 100_000
    monkeypatch.setattr(api, "MAX_REQUESTS", 10)  # the boundary, without building 100,001 requests
    requests = [{"custom_id": f"r{i}", "params": params()} for i in range(10)]
    assert len(api.parse_create(body(*requests)).requests) == 10
    requests.append({"custom_id": "one-more", "params": params()})
    assert "at most 10 requests" in refused(body(*requests)).message


def test_a_body_over_256_mb_is_a_413_before_it_is_parsed(monkeypatch):
    assert api.MAX_BODY_BYTES == 256 * 1024 * 1024
    monkeypatch.setattr(api, "MAX_BODY_BYTES", 100)
    error = refused(b" " * 101)
    assert error.status == 413 and error.kind == "too_large"
    status, raw = api.error_response(error)
    assert status == 413 and orjson.loads(raw)["error"]["type"] == "request_too_large"


def test_errors_have_the_anthropic_error_shape():
    status, raw = api.error_response(refused(b"{}"), request_id="req_9")
    parsed = ErrorResponse.model_validate(orjson.loads(raw))
    assert status == 400 and parsed.error.type == "invalid_request_error" and parsed.request_id == "req_9"
    status, raw = api.error_response(api.not_found("msgbatch_x"))
    assert status == 404 and ErrorResponse.model_validate(orjson.loads(raw)).error.type == "not_found_error"


# --- the batch object -----------------------------------------------------------------------------


def test_an_in_progress_batch_parses_as_the_sdks_message_batch():
    state = make_state(3)
    state.send(0, now=T0 + 1)
    state.record(0, Outcome.from_response(200, MESSAGE), now=T0 + 2)
    batch = MessageBatch.model_validate(api.render_batch(state.batch, state.counts, base_url=BASE))
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    # as documented: everything counts as processing until the whole batch has ended
    assert batch.request_counts.model_dump() == {
        "processing": 3,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    assert batch.results_url is None and batch.ended_at is None and batch.cancel_initiated_at is None


def test_timestamps_are_rfc3339_utc_with_microseconds():
    rendered = api.render_batch(make_state(1).batch, Counts(queued=1), base_url=BASE)
    assert rendered["created_at"] == "2024-08-20T18:37:24.100435Z"
    assert api.rfc3339(None) is None


def test_a_canceled_batch_passes_through_canceling_to_ended_with_counts_and_results_url():
    state = make_state(3)
    state.send(0, now=T0 + 1)
    state.cancel(now=T0 + 2)
    canceling = MessageBatch.model_validate(api.render_batch(state.batch, state.counts, base_url=BASE))
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    state.record(0, Outcome.from_response(200, MESSAGE), now=T0 + 3)
    ended = MessageBatch.model_validate(api.render_batch(state.batch, state.counts, base_url=BASE + "/"))
    assert ended.processing_status == "ended" and ended.ended_at is not None
    assert ended.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 1,
        "errored": 0,
        "canceled": 2,
        "expired": 0,
    }
    assert ended.results_url == f"{BASE}/v1/messages/batches/{state.batch.id}/results"


def test_cancel_delete_and_results_are_refused_in_the_wrong_state():
    state = make_state(1)
    api.check_cancelable(state.batch)
    for check in (api.check_deletable, api.check_results_available):
        with pytest.raises(ApiError):
            check(state.batch)
    state.expire_if_due(now=state.batch.expires_at)
    with pytest.raises(ApiError):
        api.check_cancelable(state.batch)
    api.check_deletable(state.batch)
    api.check_results_available(state.batch)
    assert DeletedMessageBatch.model_validate(api.render_deleted(state.batch.id)).type == "message_batch_deleted"


def test_archived_results_are_gone():
    from batches.model import RESULTS_RETENTION_SECONDS, archive

    state = make_state(1)
    state.expire_if_due(now=state.batch.expires_at)
    archived = archive(state.batch, now=T0 + RESULTS_RETENTION_SECONDS)
    with pytest.raises(ApiError) as caught:
        api.check_results_available(archived)
    assert caught.value.status == 404
    assert MessageBatch.model_validate(api.render_batch(archived, state.counts, base_url=BASE)).archived_at is not None


# --- results --------------------------------------------------------------------------------------


def ended_state_with_every_result() -> BatchState:
    state = make_state(6)
    for index in range(4):
        state.send(index, now=T0 + 1)
    state.record(0, Outcome.from_response(200, MESSAGE, "req_0"), now=T0 + 2)
    state.record(
        1,
        Outcome.from_response(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens too big"}}
        ),
        now=T0 + 2,
    )
    state.record(2, Outcome.errored("gave up after 5 attempts: connection refused"), now=T0 + 2)
    state.record(3, Outcome.from_response(529, b"not json", "req_3"), now=T0 + 2)
    state.give_up(4, Outcome.expired("aged out"), now=T0 + 3)
    state.cancel(now=T0 + 4)
    return state


def test_results_lines_parse_as_the_sdks_individual_responses_in_request_order():
    state = ended_state_with_every_result()
    lines = list(api.results_lines(reversed(state.items)))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    parsed = [MessageBatchIndividualResponse.model_validate(orjson.loads(line)) for line in lines]
    assert [p.custom_id for p in parsed] == [f"req-{i}" for i in range(6)]
    assert [p.result.type for p in parsed] == ["succeeded", "errored", "errored", "errored", "expired", "canceled"]
    assert parsed[0].result.message.content[0].text == "Hello"
    assert parsed[1].result.error.error.type == "invalid_request_error"
    assert parsed[1].result.error.error.message == "max_tokens too big"
    assert (
        parsed[2].result.error.error.type == "api_error"
        and "connection refused" in parsed[2].result.error.error.message
    )
    assert parsed[3].result.error.error.type == "overloaded_error" and parsed[3].result.error.request_id == "req_3"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (418, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
    ],
)
def test_an_errored_answer_without_an_anthropic_error_body_gets_the_type_of_its_status(status, error_type):
    state = make_state(1)
    state.record(0, Outcome.from_response(status, {"error": "plain"}), now=T0)
    line = orjson.loads(next(api.results_lines(state.items)))
    assert MessageBatchIndividualResponse.model_validate(line).result.error.error.type == error_type


def test_the_sdks_own_results_decoder_reads_every_line_even_a_413():
    state = make_state(1)
    state.record(0, Outcome.from_response(413, None), now=T0)
    line = orjson.loads(next(api.results_lines(state.items)))
    assert line["result"]["error"]["error"]["type"] == "request_too_large"  # as the API names it
    decoded = construct_type(type_=MessageBatchIndividualResponse, value=line)  # what JSONLDecoder does
    assert decoded.custom_id == "req-0" and decoded.result.type == "errored"


def test_an_unfinished_item_has_no_result_line():
    with pytest.raises(ValueError):
        api.render_result(make_state(1).items[0])


# --- listing --------------------------------------------------------------------------------------


def test_list_pages_parse_as_the_sdks_page_and_walk_both_ways():
    states = []
    for n in range(5):
        created = api.parse_create(body({"custom_id": "a", "params": params()}))
        batch, items = new_batch(
            api.new_batch_id(bytes([n]) * 16),
            tenant="t",
            api=Api.ANTHROPIC,
            endpoint=api.ENDPOINT,
            requests=created.requests,
            now=T0 + n,
        )
        states.append(BatchState(batch, items))
    newest_first = [s.batch.id for s in reversed(states)]
    by_id = {s.batch.id: s for s in states}
    query = api.parse_list_query({"limit": "2"})
    page = paginate(newest_first, limit=query.limit)
    rendered = api.render_list(
        (api.render_batch(by_id[i].batch, by_id[i].counts, base_url=BASE) for i in page.ids), page
    )
    assert [MessageBatch.model_validate(b).id for b in rendered["data"]] == newest_first[:2]
    assert (rendered["has_more"], rendered["first_id"], rendered["last_id"]) == (True, newest_first[0], newest_first[1])
    older = paginate(newest_first, limit=2, after_id=rendered["last_id"])
    assert older.ids == newest_first[2:4] and older.has_more
    newer = paginate(newest_first, limit=2, before_id=older.first_id)
    assert newer.ids == newest_first[:2] and not newer.has_more


@pytest.mark.parametrize(
    "query", [{"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"before_id": "a", "after_id": "b"}]
)
def test_bad_list_queries_are_400s(query):
    with pytest.raises(ApiError) as caught:
        api.parse_list_query(query)
    assert caught.value.status == 400


def test_list_query_defaults_to_20():
    assert api.parse_list_query({}) == api.ListQuery(20, None, None)
    assert api.parse_list_query({"limit": "1000", "after_id": "x"}) == api.ListQuery(1000, None, "x")
