"""AnthropicToVertex beyond the golden cases (tests/golden/anthropic_vertex): paths, count-tokens,
errors Google gives, usage, the chains through the hub, and the headers that reach Vertex."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.request_steps import strip_before_egress
from extproc.translate.anthropic_vertex import (
    VERTEX_ANTHROPIC_VERSION,
    AnthropicToVertex,
    AnthropicToVertexCountTokens,
    anthropic_error,
)
from extproc.translate.base import Api, ResponseContext, Target, Usage
from extproc.translate.client_request import parse_request
from extproc.translate.registry import count_tokens_translator, translator_for
from tests.unit.translating import translate

BASE = "/v1/projects/proj-1/locations/global/publishers/anthropic/models"
TARGET = Target(model="claude-sonnet-4-5@20250929", base_path=BASE)
USER = [{"role": "user", "content": "hi"}]


def _req(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": USER, **fields}


def test_a_request_goes_to_the_models_raw_predict_without_its_model_and_with_vertexs_version() -> None:
    upstream = translate(AnthropicToVertex(), _req(metadata={"user_id": "u"}), TARGET)
    assert upstream.path == f"{BASE}/claude-sonnet-4-5@20250929:rawPredict"
    body = orjson.loads(upstream.body)
    assert "model" not in body
    assert body["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
    assert body["metadata"] == {"user_id": "u"}
    assert upstream.headers == ()  # never a credential: Envoy injects the OAuth token


def test_a_stream_goes_to_stream_raw_predict() -> None:
    stream = Target(model="claude-opus-4-1@20250805", base_path=BASE, stream=True)
    assert translate(AnthropicToVertex(), _req(stream=True), stream).path.endswith(
        "/claude-opus-4-1@20250805:streamRawPredict"
    )


def test_a_model_id_is_percent_encoded_but_for_its_at_sign() -> None:
    odd = Target(model="claude;x y@1", base_path=BASE)
    assert translate(AnthropicToVertex(), _req(), odd).path == f"{BASE}/claude%3Bx%20y@1:rawPredict"


def test_count_tokens_goes_to_vertexs_counter_with_the_model_in_the_body() -> None:
    translator = count_tokens_translator(Api.VERTEX)
    assert isinstance(translator, AnthropicToVertexCountTokens)
    request = parse_request(Api.ANTHROPIC, {"model": "claude-sonnet-4-5", "messages": USER}, counting=True)
    upstream = translator.request(request, TARGET)
    assert upstream.path == f"{BASE}/count-tokens:rawPredict"
    body = orjson.loads(upstream.body)
    assert body["model"] == "claude-sonnet-4-5@20250929"
    assert body["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
    answer = translator.response_body(b'{"input_tokens": 12}', True)
    assert answer.body == b'{"input_tokens": 12}'


def test_a_json_answer_goes_back_as_it_came_and_reports_its_usage() -> None:
    translator = AnthropicToVertex()
    translate(translator, _req(), TARGET)
    answer = orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 30},
        }
    )
    first = translator.response_body(answer[:20], False)
    last = translator.response_body(answer[20:], True)
    assert first.body + last.body == answer
    assert first.usage is None
    assert last.usage == Usage(input_tokens=10, output_tokens=2, cache_read_input_tokens=30)


def test_a_primed_translator_reads_a_stream_after_a_fallback() -> None:
    translator = AnthropicToVertex()
    translator.prime(ResponseContext(model="m", stream=True))
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":{"output_tokens":5}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert dict(translator.response_headers(200, {}))["content-type"] == "text/event-stream"
    out = translator.response_body(stream, True)
    assert out.body == stream
    assert out.usage == Usage(input_tokens=7, output_tokens=5)


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            403,
            b'{"error": {"code": 403, "message": "Permission denied on resource project p.", "status": "PERMISSION_DENIED"}}',
            "permission_error",
            "PERMISSION_DENIED: Permission denied on resource project p.",
        ),
        (502, b"<html>Bad Gateway</html>", "api_error", "Vertex AI answered HTTP 502: <html>Bad Gateway</html>"),
        (503, b"", "api_error", "Vertex AI answered HTTP 503"),
    ],
)
def test_googles_own_errors_become_anthropics_with_the_status_kept(
    status: int, body: bytes, kind: str, message: str
) -> None:
    translated = AnthropicToVertex().response_error(status, body)
    assert translated.status == status
    assert orjson.loads(translated.body) == {"type": "error", "error": {"type": kind, "message": message}}


def test_a_refused_token_is_the_gateways_failure_a_502_not_the_clients_401() -> None:
    """Envoy injected the control plane's token: the client's own key was fine."""
    translated = AnthropicToVertex().response_error(401, b'{"error": {"code": 401, "message": "no token"}}')
    assert translated.status == 502
    error = orjson.loads(translated.body)["error"]
    assert error["type"] == "api_error" and "refused the gateway's OAuth token (no token)" in error["message"]


def test_an_error_vertex_relays_from_the_model_is_kept_as_it_is() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}'
    assert anthropic_error(400, body) == body


@pytest.mark.parametrize("client", [Api.OPENAI, Api.RESPONSES])
def test_chat_and_responses_clients_reach_vertex_through_the_anthropic_hub(client: Api) -> None:
    translator = translator_for(client, Api.VERTEX)
    assert translator is not None and translator.provider_api is Api.VERTEX
    body = (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        if client is Api.OPENAI
        else {"model": "m", "input": "hi"}
    )
    upstream = translator.request(parse_request(client, body), TARGET)
    sent = orjson.loads(upstream.body)
    assert upstream.path.endswith(":rawPredict")
    assert "model" not in sent and sent["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
    assert sent["messages"][0]["role"] == "user"
    error = translator.response_error(
        429, b'{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}'
    )
    assert error.status == 429 and "slow down" in error.body.decode()


def test_anthropic_headers_go_on_to_vertex_but_never_the_clients_credentials() -> None:
    assert not strip_before_egress("anthropic-beta", Api.ANTHROPIC, Api.VERTEX)
    assert not strip_before_egress("anthropic-version", Api.ANTHROPIC, Api.VERTEX)
    for credential in ("authorization", "x-api-key", "x-goog-api-key"):
        assert strip_before_egress(credential, Api.ANTHROPIC, Api.VERTEX)
    assert strip_before_egress("openai-organization", Api.OPENAI, Api.VERTEX)
