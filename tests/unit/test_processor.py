"""The ext_proc state machine fed ProcessingRequests directly: no gRPC, no Envoy."""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, HttpHeaders, ProcessingRequest

from control_plane.policy import load_policy
from extproc.processor import RequestProcessor
from extproc.routing_table import compile_policy
from extproc.state import GatewayState

POLICY = """
providers:
  - name: ant
    api: anthropic
    base_url: http://10.0.0.1:8000
    api_key_env: ANT_KEY
    models:
      - {name: claude-sonnet-4-5, id: sonnet-upstream, max_output_tokens: 8192}
  - name: oai
    api: openai
    base_url: https://api.example.com/v1
    models: [gpt-4o]
  - name: nokey
    api: anthropic
    base_url: http://10.0.0.2:8000
    api_key_env: MISSING_KEY
    models: [claude-nokey]
"""


@pytest.fixture
def state() -> GatewayState:
    gateway = GatewayState()
    policy = load_policy(POLICY).to_proto("7")
    gateway.table = compile_policy(policy, environ={"ANT_KEY": "provider-secret"})
    return gateway


def headers(method: str, path: str, end_of_stream: bool = False, **extra: str) -> ProcessingRequest:
    values = {":method": method, ":path": path, "content-type": "application/json", **extra}
    return ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]),
            end_of_stream=end_of_stream,
        )
    )


def body(data: bytes | dict) -> ProcessingRequest:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return ProcessingRequest(request_body=HttpBody(body=raw, end_of_stream=True))


def response_headers(status: int = 200) -> ProcessingRequest:
    return ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=str(status).encode())])
        )
    )


def set_headers_of(response) -> dict[str, str]:
    mutation = response.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def immediate_json(response) -> tuple[int, dict]:
    assert response.HasField("immediate_response"), response
    return response.immediate_response.status.code, orjson.loads(response.immediate_response.body)


MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}


def test_anthropic_request_is_routed_rewritten_and_the_client_key_stripped(state):
    processor = RequestProcessor(state)
    first = processor.handle(
        headers(
            "POST",
            "/v1/messages?beta=true",
            **{"x-api-key": "client-key", "anthropic-version": "2023-06-01", "x-ccr-cluster": "spoofed"},
        )
    )
    assert first.HasField("request_headers") and not first.request_headers.HasField("response")
    response = processor.handle(body(MESSAGE))
    common = response.request_body.response
    assert common.clear_route_cache
    upstream = orjson.loads(common.body_mutation.body)
    assert upstream["model"] == "sonnet-upstream"
    assert upstream["max_tokens"] == 8192  # clamped to the model's limit
    sent = set_headers_of(response)
    assert sent[":path"] == "/v1/messages"
    assert sent["x-ccr-cluster"] == "provider_ant"  # ours, not the client's spoofed value
    assert sent["x-api-key"] == "provider-secret"
    assert sent["content-length"] == str(len(common.body_mutation.body))
    assert "x-api-key" not in common.header_mutation.remove_headers  # overwritten instead
    assert "anthropic-version" not in common.header_mutation.remove_headers  # same API: kept
    metadata = response.dynamic_metadata.fields["ccr"].struct_value.fields
    assert metadata["provider"].string_value == "ant"
    assert metadata["client_api"].string_value == "anthropic"


@pytest.mark.parametrize(("capabilities", "field"), [("[]", "max_completion_tokens"), ("[max_tokens]", "max_tokens")])
def test_the_max_tokens_capability_reaches_the_translator(capabilities, field):
    gateway = GatewayState()
    policy = f"""
providers:
  - name: old
    api: openai
    base_url: http://10.0.0.3:8000/v1
    models:
      - {{name: claude-sonnet-4-5, id: local-model, capabilities: {capabilities}}}
"""
    gateway.table = compile_policy(load_policy(policy).to_proto("1"), environ={})
    processor = RequestProcessor(gateway)
    processor.handle(headers("POST", "/v1/messages", **{"anthropic-version": "2023-06-01"}))
    upstream = orjson.loads(processor.handle(body(MESSAGE)).request_body.response.body_mutation.body)
    assert upstream[field] == MESSAGE["max_tokens"]
    (other,) = {"max_tokens", "max_completion_tokens"} - {field}
    assert other not in upstream


def test_openai_request_strips_the_client_authorization(state):
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/chat/completions", authorization="Bearer client-key"))
    response = processor.handle(body({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
    assert "authorization" in response.request_body.response.header_mutation.remove_headers
    assert set_headers_of(response)[":path"] == "/v1/chat/completions"


def test_passthrough_response_needs_no_body_processing(state):
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/messages"))
    processor.handle(body(MESSAGE))
    answer = processor.handle(response_headers(200))
    assert answer.HasField("response_headers")
    assert not answer.HasField("mode_override")


@pytest.mark.parametrize(
    ("path", "payload", "status", "fragment"),
    [
        ("/v1/messages", b"{not json", 400, "not valid JSON"),
        ("/v1/messages", b"[]", 400, "JSON object"),
        ("/v1/messages", {"messages": []}, 400, "model"),
        (
            "/v1/messages",
            {"model": "nope", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
            404,
            "'nope'",
        ),
        (
            "/v1/messages",
            {"model": "claude-nokey", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
            503,
            "MISSING_KEY",
        ),
    ],
)
def test_bad_anthropic_requests_get_anthropic_errors(state, path, payload, status, fragment):
    processor = RequestProcessor(state)
    processor.handle(headers("POST", path))
    code, error = immediate_json(processor.handle(body(payload)))
    assert code == status
    assert error["type"] == "error"
    assert fragment in error["error"]["message"]


def test_bad_openai_requests_get_openai_errors(state):
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/chat/completions"))
    code, error = immediate_json(
        processor.handle(body({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
    )
    assert code == 404
    assert set(error) == {"error"} and "'nope'" in error["error"]["message"]


def test_without_a_policy_requests_fail_closed_with_503():
    processor = RequestProcessor(GatewayState())
    code, error = immediate_json(processor.handle(headers("POST", "/v1/messages")))
    assert code == 503 and "no routing policy" in error["error"]["message"]


def test_unknown_endpoint_is_404_and_empty_body_is_400(state):
    code, _ = immediate_json(RequestProcessor(state).handle(headers("POST", "/v1/complete")))
    assert code == 404
    code, error = immediate_json(RequestProcessor(state).handle(headers("POST", "/v1/messages", end_of_stream=True)))
    assert code == 400 and "body is required" in error["error"]["message"]


def test_models_are_listed_in_the_callers_shape(state):
    code, listing = immediate_json(
        RequestProcessor(state).handle(headers("GET", "/v1/models", end_of_stream=True, **{"anthropic-version": "1"}))
    )
    assert code == 200 and listing["data"][0]["type"] == "model"
    code, listing = immediate_json(
        RequestProcessor(state).handle(headers("GET", "/v1/models", end_of_stream=True, authorization="Bearer x"))
    )
    assert listing["object"] == "list" and {m["id"] for m in listing["data"]} >= {"gpt-4o", "claude-sonnet-4-5"}


def test_count_tokens_is_answered_locally(state):
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/messages/count_tokens"))
    code, counted = immediate_json(processor.handle(body(MESSAGE)))
    assert code == 200 and counted["input_tokens"] > 0


class _Upper:
    """A stand-in translator that rewrites responses, to check the response-phase plumbing."""

    rewrites_response = True

    def request(self, body, target):
        from extproc.translate.base import UpstreamRequest

        return UpstreamRequest(path="/x", body=b"{}")

    def response_headers(self, status, headers):
        return (("content-type", "text/event-stream"),)

    def response_body(self, chunk, end_of_stream):
        from extproc.translate.base import TranslatedChunk

        return TranslatedChunk(body=chunk.upper())

    def response_error(self, status, body):
        from extproc.translate.base import TranslatedBody

        return TranslatedBody(status=status, body=b"translated error")


def test_translated_streams_ask_for_streamed_body_and_rewrite_each_chunk(state, monkeypatch):
    monkeypatch.setattr("extproc.plan.translator_for", lambda client, provider: _Upper())
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/messages"))
    processor.handle(body({**MESSAGE, "stream": True}))
    answer = processor.handle(response_headers(200))
    assert answer.mode_override.response_body_mode == ProcessingMode.STREAMED
    assert "content-length" in answer.response_headers.response.header_mutation.remove_headers
    chunk = processor.handle(ProcessingRequest(response_body=HttpBody(body=b"data: x\n\n")))
    assert chunk.response_body.response.body_mutation.body == b"DATA: X\n\n"


def test_translated_errors_are_buffered_and_rewritten(state, monkeypatch):
    monkeypatch.setattr("extproc.plan.translator_for", lambda client, provider: _Upper())
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/messages"))
    processor.handle(body(MESSAGE))
    answer = processor.handle(response_headers(429))
    assert answer.mode_override.response_body_mode == ProcessingMode.BUFFERED
    out = processor.handle(ProcessingRequest(response_body=HttpBody(body=b"{}", end_of_stream=True)))
    assert out.response_body.response.body_mutation.body == b"translated error"


def test_a_bug_in_a_phase_fails_closed_in_the_client_format(state, monkeypatch):
    def explode(client, provider):
        raise RuntimeError("boom")

    monkeypatch.setattr("extproc.plan.translator_for", explode)
    processor = RequestProcessor(state)
    processor.handle(headers("POST", "/v1/chat/completions"))
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    code, error = immediate_json(processor.handle(body(request)))
    assert code == 500 and set(error) == {"error"}


# --- fallback chains ------------------------------------------------------------------------------


def chain_gateway_state() -> GatewayState:
    """POLICY with a fallback chain: the Anthropic-format primary, then the OpenAI-format provider."""
    gateway = GatewayState()
    policy = load_policy(POLICY + 'fallback:\n  ant,claude-sonnet-4-5: ["oai,gpt-4o"]\n').to_proto("8")
    gateway.table = compile_policy(policy, environ={"ANT_KEY": "provider-secret"})
    return gateway


@pytest.fixture
def chain_state() -> GatewayState:
    return chain_gateway_state()


def test_a_malformed_request_to_a_chain_model_is_refused_before_any_attempt(chain_state):
    processor = RequestProcessor(chain_state)
    processor.handle(headers("POST", "/v1/chat/completions", authorization="Bearer client"))
    bad = {"model": "claude-sonnet-4-5", "n": 2, "messages": [{"role": "user", "content": "hi"}]}
    code, error = immediate_json(processor.handle(body(bad)))
    assert code == 400 and error["error"]["message"] == "n: only 1 choice is supported"


def test_a_request_the_chain_attempt_refused_keeps_its_400_and_is_not_turned_into_a_500(chain_state):
    # Well-formed, but the primary's translator cannot carry it (audio to an Anthropic-format
    # provider): the per-attempt processor refuses it in the client's format, and the downstream
    # processor passes that answer on (its response translator is primed from the plan, never by
    # translating the request again, so nothing can fail there).
    processor = RequestProcessor(chain_state)
    processor.handle(headers("POST", "/v1/chat/completions", authorization="Bearer client"))
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    bad = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [audio]}]}
    forwarded = processor.handle(body(bad))
    assert not forwarded.HasField("immediate_response")
    refused = ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[
                    HeaderValue(key=":status", raw_value=b"400"),
                    HeaderValue(key="x-ccr-provider", raw_value=b"ant"),
                ]
            )
        )
    )
    answer = processor.handle(refused)
    assert not answer.HasField("immediate_response"), answer
    # The attempt's own answer, in the client's (OpenAI) format: read like a provider's error, it
    # reaches the client with the same message, in the client's format still.
    attempt_error = b'{"error": {"message": "messages.0.content.0: audio input is not supported", "type": "x"}}'
    passed = processor.handle(ProcessingRequest(response_body=HttpBody(body=attempt_error, end_of_stream=True)))
    client = orjson.loads(passed.response_body.response.body_mutation.body)
    assert client["error"]["message"] == "messages.0.content.0: audio input is not supported"
    assert client["error"]["type"] == "invalid_request_error"
