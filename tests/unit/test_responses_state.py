"""Stored responses, the pure part (extproc.responses_state): continuing a conversation, the
endpoints' bodies, the final response object of a translated stream."""

from __future__ import annotations

import orjson
import pytest

from extproc.responses_state import (
    completed_response,
    continued_body,
    continued_input,
    deleted_body,
    input_items,
    input_items_page,
    output_as_input,
    query_order,
    response_of,
    stored_path,
)
from extproc.translate.responses_schema import event_frame

FIRST_INPUT = [{"type": "message", "role": "user", "content": "What is 2+2?"}]
ANSWER = {
    "id": "resp_1",
    "object": "response",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "calc", "arguments": "{}"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ],
}


def test_a_string_input_is_one_user_message() -> None:
    assert input_items("hi") == [{"type": "message", "role": "user", "content": "hi"}]
    assert input_items(None) == [] and input_items(FIRST_INPUT) == FIRST_INPUT


def test_the_output_items_a_provider_made_itself_are_not_replayed() -> None:
    assert [item["type"] for item in output_as_input(ANSWER)] == ["message", "function_call"]


def test_reasoning_is_replayed_only_with_its_encrypted_content() -> None:
    encrypted = {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAA"}
    assert output_as_input({"output": [encrypted, *ANSWER["output"]]})[0] == encrypted


def test_a_continued_input_is_the_stored_input_then_its_answer_then_the_new_input() -> None:
    items = continued_input(FIRST_INPUT, ANSWER, "And times 3?")
    assert items[0] == FIRST_INPUT[0]
    assert items[1]["content"][0]["text"] == "4"
    assert items[-1] == {"type": "message", "role": "user", "content": "And times 3?"}


def test_a_continued_body_names_no_previous_response_and_inherits_no_instructions() -> None:
    body = {"model": "m", "previous_response_id": "resp_1", "input": "next", "store": True}
    out = continued_body(body, FIRST_INPUT, ANSWER)
    assert "previous_response_id" not in out and "instructions" not in out
    assert out["model"] == "m" and out["store"] is True and len(out["input"]) == 4
    assert continued_body({**body, "instructions": "be brief"}, FIRST_INPUT, ANSWER)["instructions"] == "be brief"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/responses/resp_1", ("resp_1", "")),
        ("/responses/resp_1?x=1", ("resp_1", "")),
        ("/v1/responses/resp_1/input_items?order=asc", ("resp_1", "/input_items")),
        ("/v1/responses/resp_1/cancel", None),
        ("/v1/responses/input_tokens", None),
        ("/v1/responses/", None),
        ("/v1/responses", None),
        ("/v1/messages", None),
    ],
)
def test_the_stored_response_paths(path: str, expected) -> None:
    assert stored_path(path) == expected


def test_input_items_come_newest_first_unless_asked_otherwise() -> None:
    items = [{"id": "a"}, {"id": "b"}, {"type": "message"}]
    page = orjson.loads(input_items_page(items, query_order("/v1/responses/r/input_items")))
    assert page["object"] == "list" and page["has_more"] is False
    assert page["data"] == list(reversed(items)) and (page["first_id"], page["last_id"]) == (None, "a")
    asc = orjson.loads(input_items_page(items, query_order("/x?limit=5&order=asc")))
    assert asc["data"] == items and (asc["first_id"], asc["last_id"]) == ("a", None)
    assert orjson.loads(input_items_page([]))["first_id"] is None


def test_a_deletion_answers_the_id() -> None:
    assert orjson.loads(deleted_body("resp_1")) == {"id": "resp_1", "object": "response", "deleted": True}


def test_the_final_response_is_read_from_a_completed_or_incomplete_event_only() -> None:
    final = {**ANSWER, "status": "completed"}
    chunk = event_frame("response.output_text.done", {"type": "x", "text": "4"})
    assert completed_response(chunk) is None
    done = chunk + event_frame("response.completed", {"type": "response.completed", "response": final})
    assert completed_response(done) == final
    cut = event_frame("response.incomplete", {"type": "response.incomplete", "response": final})
    assert completed_response(cut) == final
    failed = event_frame("response.failed", {"type": "response.failed", "response": final})
    assert completed_response(failed) is None
    assert completed_response(b"event: response.completed\ndata: {not json\n\n") is None


def test_a_whole_answer_is_a_response_object_or_nothing() -> None:
    assert response_of(orjson.dumps(ANSWER)) == ANSWER
    assert response_of(b'{"error": {}}') is None and response_of(b"nope") is None
