"""The wire (extproc.mcp.jsonrpc): every refusal has its JSON-RPC code and HTTP status, valid
messages round-trip, and no body whatever makes the parser raise."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.mcp import jsonrpc
from extproc.mcp.jsonrpc import (
    ErrorResponse,
    Notification,
    ProtocolError,
    Request,
    Response,
    encode,
    negotiate_version,
    parse_body,
)
from tests.unit.mcp.helpers import types

# (body, JSON-RPC code, HTTP status, id echoed)
REFUSALS = [
    pytest.param(b"", -32700, 400, None, id="empty body is a parse error"),
    pytest.param(b"{", -32700, 400, None, id="truncated JSON is a parse error"),
    pytest.param(b"\xff\xfe{}", -32700, 400, None, id="invalid UTF-8 is a parse error"),
    pytest.param(b"42", -32600, 400, None, id="a number is not a message"),
    pytest.param(b'"x"', -32600, 400, None, id="a string is not a message"),
    pytest.param(b"null", -32600, 400, None, id="null is not a message"),
    pytest.param(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, 400, None, id="a batch is refused"),
    pytest.param(b"[]", -32600, 400, None, id="an empty batch is refused"),
    pytest.param(b'{"id":1,"method":"ping"}', -32600, 400, 1, id="jsonrpc member missing"),
    pytest.param(b'{"jsonrpc":"1.0","id":1,"method":"ping"}', -32600, 400, 1, id="jsonrpc member not 2.0"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":7}', -32600, 400, 1, id="method not a string"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":""}', -32600, 400, 1, id="method empty"),
    pytest.param(b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600, 400, None, id="null request id"),
    pytest.param(b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600, 400, None, id="float request id"),
    pytest.param(b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, 400, None, id="boolean request id"),
    pytest.param(b'{"jsonrpc":"2.0","id":{},"method":"ping"}', -32600, 400, None, id="object request id"),
    pytest.param(b'{"jsonrpc":"2.0","id":"a","method":"ping","params":[1]}', -32602, 400, "a", id="array params"),
    pytest.param(b'{"jsonrpc":"2.0","method":"x","params":"s"}', -32602, 400, None, id="string params"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', -32600, 400, 1, id="request and response"),
    pytest.param(b'{"jsonrpc":"2.0"}', -32600, 400, None, id="neither method nor id"),
    pytest.param(b'{"jsonrpc":"2.0","id":1}', -32600, 400, 1, id="response without result or error"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', -32600, 400, 1, id="result and error"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"result":[]}', -32600, 400, 1, id="result not an object"),
    pytest.param(b'{"jsonrpc":"2.0","id":null,"result":{}}', -32600, 400, None, id="result with null id"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}', -32600, 400, 1, id="error code"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"error":{"code":true,"message":"m"}}', -32600, 400, 1, id="bool code"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"error":{"code":1}}', -32600, 400, 1, id="error without message"),
    pytest.param(b'{"jsonrpc":"2.0","id":[],"error":{"code":1,"message":"m"}}', -32600, 400, None, id="error id"),
]


@pytest.mark.parametrize(("body", "code", "status", "echoed"), REFUSALS)
def test_each_malformed_body_gets_its_code_and_status(body: bytes, code: int, status: int, echoed: object) -> None:
    err = parse_body(body)
    assert isinstance(err, ProtocolError)
    assert (err.code, err.http_status, err.id) == (code, status, echoed)
    wire = orjson.loads(err.body())
    types.JSONRPCError.model_validate(wire)  # the SDK reads our refusal as a JSON-RPC error
    assert wire["error"]["code"] == code and wire["id"] == echoed


def test_an_oversize_body_is_413_before_it_is_even_parsed() -> None:
    err = parse_body(b"{" + b" " * 100, max_bytes=50)
    assert isinstance(err, ProtocolError)
    assert (err.code, err.http_status) == (-32600, 413)
    assert isinstance(parse_body(b'{"jsonrpc":"2.0","method":"x"}', max_bytes=30), Notification)


def test_batches_parse_only_under_the_one_revision_that_had_them() -> None:
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]'
    for version in (None, "2025-06-18", "2025-11-25"):
        assert isinstance(parse_body(batch, version=version), ProtocolError)
    parsed = parse_body(batch, version="2025-03-26")
    assert parsed == (Request(1, "ping"), Notification("notifications/initialized"))
    assert jsonrpc.http_status_accepted(parsed) is None  # it holds a request: answered, not 202
    bad = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}, 3]', version="2025-03-26")
    assert isinstance(bad, ProtocolError) and bad.http_status == 400


GOLDEN = [
    (b'{"jsonrpc":"2.0","id":0,"method":"tools/list"}', Request(0, "tools/list")),
    (
        b'{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"x"}}',
        Request("a-1", "tools/call", {"name": "x"}),
    ),
    (b'{"jsonrpc":"2.0","method":"notifications/initialized"}', Notification("notifications/initialized")),
    (b'{"jsonrpc":"2.0","id":5,"result":{"roots":[]}}', Response(5, {"roots": []})),
    (
        b'{"jsonrpc":"2.0","id":5,"error":{"code":-1,"message":"no","data":{"k":1}}}',
        ErrorResponse(5, -1, "no", {"k": 1}),
    ),
    (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}', ErrorResponse(None, -32700, "bad")),
]


@pytest.mark.parametrize(("body", "expected"), GOLDEN)
def test_valid_messages_parse_to_their_typed_form_and_encode_back(body: bytes, expected: object) -> None:
    parsed = parse_body(body)
    assert parsed == expected
    assert not isinstance(parsed, ProtocolError | tuple)
    assert orjson.loads(encode(parsed)) == orjson.loads(body)
    types.jsonrpc_message_adapter.validate_json(encode(parsed))


def test_notifications_and_responses_are_accepted_with_202_and_requests_are_not() -> None:
    assert jsonrpc.http_status_accepted(Notification("x")) == 202
    assert jsonrpc.http_status_accepted(Response(1, {})) == 202
    assert jsonrpc.http_status_accepted(Request(1, "ping")) is None


def test_unknown_members_are_tolerated_for_forward_compatibility() -> None:
    assert parse_body(b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":true}') == Request(1, "ping")


def test_version_negotiation_answers_the_clients_revision_when_spoken_else_the_latest() -> None:
    assert negotiate_version("2025-06-18") == "2025-06-18"
    assert negotiate_version("2025-11-25") == "2025-11-25"
    for other in ("2024-11-05", "2025-03-26", "2026-07-28", "garbage", None, 3):
        assert negotiate_version(other) == "2025-11-25"


# JSON's integers as orjson carries them (64-bit); bigger ones it already reads as floats.
ints = st.integers(-(2**63), 2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
envelope = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": st.none() | ints | st.text(max_size=4) | st.floats(allow_nan=False) | st.booleans(),
        "method": st.text(max_size=8) | ints,
        "params": json_values,
        "result": json_values,
        "error": json_values | st.fixed_dictionaries({"code": ints, "message": st.text(max_size=5)}),
    },
)


@given(st.binary(max_size=64) | json_values.map(orjson.dumps) | envelope.map(orjson.dumps))
def test_no_body_makes_the_parser_raise_and_every_refusal_is_a_4xx(body: bytes) -> None:
    parsed = parse_body(body)
    if isinstance(parsed, ProtocolError):
        assert 400 <= parsed.http_status < 500
        assert parsed.code in (-32700, -32600, -32602)
        types.JSONRPCError.model_validate_json(parsed.body())
    else:
        # Whatever we accept, the SDK accepts too (it is a JSON-RPC message by its own reading).
        types.jsonrpc_message_adapter.validate_json(encode(parsed))  # type: ignore[arg-type]


@given(
    st.one_of(
        st.builds(
            Request,
            ints | st.text(max_size=5),
            st.text(min_size=1, max_size=8),
            st.none() | st.dictionaries(st.text(max_size=4), ints, max_size=2),
        ),
        st.builds(Notification, st.text(min_size=1, max_size=8)),
        st.builds(Response, ints | st.text(max_size=5), st.dictionaries(st.text(max_size=4), ints, max_size=2)),
        st.builds(ErrorResponse, st.none() | ints, ints, st.text(max_size=8)),
    )
)
def test_encode_then_parse_is_the_identity(message: jsonrpc.Message) -> None:
    assert parse_body(encode(message)) == message
