"""Golden renders: the exact objects and files both APIs return for fixed scenarios, so any change
to a shape shows up as a diff under tests/unit/batches/golden/ (rewrite them with
``python -m pytest tests/unit/batches --update-golden`` and review). The SDK-model checks live in
the per-API tests; these pin the bytes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batches import anthropic_api, openai_api
from batches.model import Api, BatchState, Counts, InputError, Outcome, failed_batch, new_batch

GOLDEN = Path(__file__).parent / "golden"
T0 = 1_733_000_000.0
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
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1733000001,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
}


def play(state: BatchState, chat: bool) -> BatchState:
    """One of each ending: succeeded, errored with an answer, errored without, expired, canceled."""
    ok = COMPLETION if chat else MESSAGE
    refused = (
        {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
        if chat
        else {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    )
    for index in range(3):
        state.send(index, now=T0 + 1)
    state.record(0, Outcome.from_response(200, ok, "req_0"), now=T0 + 2)
    state.record(1, Outcome.from_response(400, refused, "req_1"), now=T0 + 2)
    state.record(2, Outcome.errored("gave up after 5 attempts: connection reset"), now=T0 + 3)
    state.give_up(3, Outcome.expired("waited over 300 s in the batch lane"), now=T0 + 4)
    state.cancel(now=T0 + 5)
    return state


def anthropic_state() -> BatchState:
    params = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    body = {"requests": [{"custom_id": f"req-{i}", "params": params} for i in range(5)]}
    created = anthropic_api.parse_create(orjson.dumps(body))
    batch_id = anthropic_api.new_batch_id(bytes(range(16)))
    batch, items = new_batch(
        batch_id, tenant="t", api=Api.ANTHROPIC, endpoint=anthropic_api.ENDPOINT, requests=created.requests, now=T0
    )
    return play(BatchState(batch, items), chat=False)


def openai_state() -> BatchState:
    line = {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": []}}
    raw = b"".join(orjson.dumps({"custom_id": f"req-{i}", **line}) + b"\n" for i in range(5))
    validated = openai_api.validate_input(raw, endpoint="/v1/chat/completions")
    batch, items = new_batch(
        openai_api.new_batch_id(bytes(range(16))),
        tenant="t",
        api=Api.OPENAI,
        endpoint="/v1/chat/completions",
        requests=validated.requests,
        now=T0,
        metadata={"job": "nightly"},
        input_file_id="file-input",
    )
    return play(BatchState(batch, items), chat=True)


def render_cases() -> dict[str, bytes]:
    anthropic, openai = anthropic_state(), openai_state()
    failed = failed_batch(
        openai_api.new_batch_id(bytes(range(1, 17))),
        tenant="t",
        api=Api.OPENAI,
        endpoint="/v1/chat/completions",
        errors=[InputError("invalid_json_line", "This line is not parseable as valid JSON.", line=2)],
        now=T0,
        input_file_id="file-input",
    )
    upload = openai_api.new_file(
        openai_api.new_file_id(bytes(range(2, 18))), tenant="t", filename="requests.jsonl", size=1234, now=T0
    )
    error_file = b"".join(openai_api.error_lines(openai.batch.id, openai.items))

    def pretty(value: object) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    return {
        "anthropic_batch_ended.json": pretty(
            anthropic_api.render_batch(anthropic.batch, anthropic.counts, base_url="https://gw.example")
        ),
        "anthropic_results.jsonl": b"".join(anthropic_api.results_lines(anthropic.items)),
        "anthropic_error.json": pretty(anthropic_api.error_body(anthropic_api.not_found("msgbatch_nope"))),
        "openai_batch_cancelled.json": pretty(openai_api.render_batch(openai.batch, openai.counts)),
        "openai_batch_failed.json": pretty(openai_api.render_batch(failed, Counts())),
        "openai_file_uploaded.json": pretty(openai_api.render_file(upload)),
        "openai_file_errors.json": pretty(
            openai_api.render_file(openai_api.result_file(openai.batch, "error", size=len(error_file)))
        ),
        "openai_output.jsonl": b"".join(openai_api.output_lines(openai.batch.id, openai.items)),
        "openai_errors.jsonl": error_file,
        "openai_error.json": pretty(openai_api.error_body(openai_api.not_found("batch_nope"))),
    }


CASES = render_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_objects_match_their_golden_files(name, update_golden):
    path = GOLDEN / name
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(CASES[name])
    assert path.read_bytes() == CASES[name], f"{name} changed; rerun with --update-golden and review the diff"
