"""The request edge fuzzed: arbitrary bodies (bytes, JSON-ish documents, mutations of real requests),
headers and paths through the decision hop (routing, checks, translation into every provider API),
and arbitrary provider answers through the translators on the way back. Zero exceptions, and every
refusal a well-formed error in the client's own format with a 4xx/5xx status.

CI runs a few hundred examples per target; a longer run:
``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/unit/test_edge_fuzz.py`` (thousands, see below).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.policy import load_policy
from extproc import hop
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from tests.unit.test_hop import parse
from tests.unit.test_plan import POLICY, TEAM_KEY

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

STATE = GatewayState()
STATE.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})

PATHS = ["/v1/messages", "/v1/chat/completions", "/chat/completions", "/v1/messages/count_tokens"]
MODELS = ["claude-sonnet-4-5", "gpt-4o", "gemini-2.5-pro", "claude-opus-4-1", "claude-nokey", "nope", "ant,gpt-4o"]


def _dumps(document: Any) -> bytes:
    """The standard library's JSON: it writes what orjson cannot (integers past 64 bits), which a
    client may send all the same."""
    return json.dumps(document).encode()


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=30)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
# Documents shaped like requests: the fields the checks and translators read, with any values.
content_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document", "x"])},
    optional={
        "text": json_values,
        "id": json_values,
        "name": json_values,
        "input": json_values,
        "tool_use_id": json_values,
        "content": json_values,
        "source": json_values,
    },
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "x"])},
    optional={
        "content": st.one_of(st.text(max_size=40), st.lists(content_block, max_size=4), json_values),
        "tool_calls": json_values,
        "tool_call_id": json_values,
        "name": json_values,
    },
)
request_like = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), json_values)},
    optional={
        "messages": st.one_of(st.lists(message, max_size=5), json_values),
        "max_tokens": json_values,
        "max_completion_tokens": json_values,
        "stream": json_values,
        "system": json_values,
        "tools": st.one_of(st.lists(json_values, max_size=3), json_values),
        "tool_choice": json_values,
        "temperature": json_values,
        "thinking": json_values,
        "response_format": json_values,
        "stream_options": json_values,
        "metadata": json_values,
        "stop": json_values,
        "stop_sequences": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(_dumps),
    request_like.map(_dumps),
)
header_names = st.sampled_from(
    [
        "x-api-key",
        "authorization",
        "anthropic-beta",
        "anthropic-version",
        "content-type",
        "cache-control",
        "x-ccr-cache-ttl",
        "content-encoding",
        "x-forwarded-for",
        "traceparent",
        "x-request-id",
    ]
)
headers = st.dictionaries(header_names, st.text(max_size=40), max_size=5)


def decided(method: str, path: str, sent: dict[str, str], raw: bytes) -> tuple[str, list, bytes]:
    answer: Any = hop.decide(STATE, method, path, sent, raw)
    if isinstance(answer, hop.Pending):
        answer = asyncio.run(answer.answer)
    return parse(answer)


def assert_client_error(path: str, ops: list, payload: bytes) -> None:
    status = int(next(value for op, value, _ in ops if op == "status"))
    assert 400 <= status < 600, status
    error = orjson.loads(payload)
    if "chat/completions" in path:
        assert set(error) == {"error"} and isinstance(error["error"]["message"], str), error
        assert {"message", "type", "param", "code"} <= set(error["error"]), error
    else:
        assert error["type"] == "error" and isinstance(error["error"]["message"], str), error
        assert isinstance(error["error"]["type"], str), error


@given(path=st.sampled_from(PATHS), sent=headers, raw=bodies)
def test_any_body_and_headers_are_answered_or_routed_never_a_crash(path: str, sent: dict, raw: bytes) -> None:
    action, ops, payload = decided("POST", path, {k: v.replace("\n", " ") for k, v in sent.items()}, raw)
    assert action in ("reply", "forward"), action
    if action == "reply" and any(op == "status" and int(value) >= 400 for op, value, _ in ops):
        assert_client_error(path, ops, payload)


@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]), path=st.text(max_size=60))
def test_any_path_and_method_get_an_answer(method: str, path: str) -> None:
    action, _, _ = decided(method, "/" + path.lstrip("/"), {}, b"")
    assert action in ("reply", "forward")


@given(raw=st.binary(max_size=300) | json_values.map(_dumps), status=st.sampled_from([200, 400, 429, 500, 529]))
def test_any_provider_answer_is_translated_or_refused_in_the_clients_format(raw: bytes, status: int) -> None:
    """Through /respond, as the Lua filter hands it a translated request's answer."""
    for path, body in (
        ("/v1/messages", {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages", {"model": "gemini-2.5-pro", "max_tokens": 10, "messages": [{"role": "user", "content": "h"}]}),
        ("/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
    ):
        action, ops, _ = decided("POST", path, {"x-api-key": TEAM_KEY + "x"}, orjson.dumps(body))
        context = next((value for op, name, value in ops if op == "label" and name == "response_context"), None)
        assert action == "forward" and context is not None, ops
        answer = parse(hop.respond(STATE, context, status, "application/json", raw))
        assert answer[0] == "response"
        answered = int(next(value for op, value, _ in answer[1] if op == "status"))
        if answered >= 400:
            assert_client_error(path, answer[1], answer[2])
