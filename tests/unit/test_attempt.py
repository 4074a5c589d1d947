"""The per-attempt processor (extproc.attempt) and the servicer's dispatch, in-process.

A fallback chain is decided by the downstream processor; Envoy then runs the upstream ext_proc once
per attempt with the chain in dynamic metadata and the picked endpoint's provider in an attribute.
These tests feed it exactly that, as ProcessingRequest messages.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, HttpHeaders, ProcessingRequest
from google.protobuf.struct_pb2 import Struct

from ccr.v1.contract import (
    ATTEMPT_PROVIDER_HEADER,
    CHAIN_METADATA_KEY,
    METADATA_NAMESPACE,
    UPSTREAM_PHASE_METADATA,
    encode_chain,
)
from control_plane.policy import load_policy
from extproc.attempt import AttemptProcessor, attempt_metadata_struct
from extproc.processor import RequestProcessor
from extproc.routing_table import compile_policy
from extproc.server import ExternalProcessor
from extproc.state import GatewayState
from tests.unit.test_processor import chain_gateway_state, immediate_json, set_headers_of

CHAIN = encode_chain("anthropic", [("ant", "claude-sonnet-4-5"), ("oai", "gpt-4o")])
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def state() -> GatewayState:
    return chain_gateway_state()


def attempt_headers(provider: str | None, chain: str | None = CHAIN, **extra: str) -> ProcessingRequest:
    values = {":method": "POST", ":path": "/v1/messages", "content-type": "application/json", **extra}
    request = ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()])
        )
    )
    if chain is not None:
        ours = Struct()
        ours.update({CHAIN_METADATA_KEY: chain})
        request.metadata_context.filter_metadata[METADATA_NAMESPACE].CopyFrom(ours)
    if provider is not None:
        request.attributes["envoy.filters.http.ext_proc"].CopyFrom(attempt_metadata_struct(provider))
    return request


def body(data: dict) -> ProcessingRequest:
    return ProcessingRequest(request_body=HttpBody(body=orjson.dumps(data), end_of_stream=True))


def test_an_attempt_on_the_openai_fallback_is_translated_for_it(state):
    processor = AttemptProcessor(state)
    # The previous attempt (on the Anthropic primary) left its provider key in the shared header map.
    started = processor.handle(attempt_headers("oai", **{"x-api-key": "provider-secret", "anthropic-version": "1"}))
    assert not started.HasField("immediate_response")
    answer = processor.handle(body(MESSAGE))
    headers = set_headers_of(answer)
    assert headers[":path"] == "/v1/chat/completions"
    upstream = orjson.loads(answer.request_body.response.body_mutation.body)
    assert upstream["model"] == "gpt-4o" and upstream["messages"] == [{"role": "user", "content": "hi"}]
    removed = set(answer.request_body.response.header_mutation.remove_headers)
    assert {"x-api-key", "anthropic-version"} <= removed  # no Anthropic key or header to OpenAI
    assert not answer.request_body.response.clear_route_cache  # upstream filters cannot reroute


def test_an_attempt_on_the_anthropic_primary_gets_its_key_and_model(state):
    processor = AttemptProcessor(state)
    processor.handle(attempt_headers("ant"))
    answer = processor.handle(body(MESSAGE))
    headers = set_headers_of(answer)
    assert headers[":path"] == "/v1/messages" and headers["x-api-key"] == "provider-secret"
    assert (
        orjson.loads(answer.request_body.response.body_mutation.body)["model"] == "sonnet-upstream"
    )  # the provider id


@pytest.mark.parametrize(
    ("provider", "chain", "detail"),
    [
        ("oai", None, "without a chain"),
        (None, CHAIN, "without a chain"),
        ("gem", CHAIN, "not part of this chain"),
        ("nokey", encode_chain("anthropic", [("nokey", "claude-nokey")]), "MISSING_KEY"),
    ],
    ids=["no-chain", "no-provider", "foreign-provider", "provider-without-key"],
)
def test_an_attempt_that_cannot_be_served_is_a_503_in_the_clients_format(state, provider, chain, detail):
    code, error = immediate_json(AttemptProcessor(state).handle(attempt_headers(provider, chain)))
    assert code == 503 and error["type"] == "error" and detail in error["error"]["message"]


def test_a_body_the_attempts_translator_refuses_is_answered_in_the_clients_format(state):
    processor = AttemptProcessor(state)
    processor.handle(attempt_headers("oai"))
    document = {"type": "document", "source": {"type": "file", "file_id": "f1"}}
    refused = {**MESSAGE, "messages": [{"role": "user", "content": [document]}]}
    code, error = immediate_json(processor.handle(body(refused)))
    assert code == 400 and error["type"] == "error"


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


async def _requests(*messages: ProcessingRequest):
    for message in messages:
        yield message


@pytest.mark.parametrize(("metadata", "expected"), [((UPSTREAM_PHASE_METADATA,), "attempt"), ((), "request")])
def test_the_servicer_sends_upstream_calls_to_the_attempt_processor(state, monkeypatch, metadata, expected):
    used: list[str] = []
    monkeypatch.setattr(AttemptProcessor, "handle", lambda self, r: used.append("attempt") or None)
    monkeypatch.setattr(RequestProcessor, "handle", lambda self, r: used.append("request") or None)

    async def drive() -> None:
        servicer = ExternalProcessor(state)
        async for _ in servicer.Process(_requests(attempt_headers("oai")), _Context(metadata)):
            pass

    asyncio.run(drive())
    assert used == [expected]


CLOUD_POLICY = """
listener: {port: 8080}
providers:
  - name: ant
    api: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANT_KEY
    models: [claude-sonnet-4-5]
  - name: bed
    api: bedrock
    base_url: https://bedrock-runtime.us-east-1.amazonaws.com
    models: [{name: claude-bed, id: "anthropic.claude-sonnet-4-5-20250929-v1:0"}]
fallback:
  ant,claude-sonnet-4-5: ["bed,claude-bed"]
"""
CLOUD_CHAIN = encode_chain("anthropic", [("ant", "claude-sonnet-4-5"), ("bed", "claude-bed")])


@pytest.fixture
def cloud_state() -> GatewayState:
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(CLOUD_POLICY).to_proto("1"), environ={"ANT_KEY": "provider-secret"})
    return gateway


def test_a_bedrock_attempt_names_its_provider_for_envoys_signature_and_drops_the_last_ones(cloud_state):
    processor = AttemptProcessor(cloud_state)
    # The Anthropic attempt before left its key; a Bedrock attempt before that, its SigV4 headers.
    stale = {"x-api-key": "provider-secret", "x-amz-date": "20261207T000000Z", "x-amz-security-token": "t"}
    processor.handle(attempt_headers("bed", CLOUD_CHAIN, **stale))
    answer = processor.handle(body(MESSAGE))
    headers = set_headers_of(answer)
    assert headers[ATTEMPT_PROVIDER_HEADER] == "bed"
    assert headers[":path"] == "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    removed = set(answer.request_body.response.header_mutation.remove_headers)
    assert set(stale) <= removed


def test_an_attempt_whose_key_ext_proc_sets_names_no_provider_to_envoy(cloud_state):
    processor = AttemptProcessor(cloud_state)
    processor.handle(attempt_headers("ant", CLOUD_CHAIN))
    headers = set_headers_of(processor.handle(body(MESSAGE)))
    assert headers["x-api-key"] == "provider-secret" and ATTEMPT_PROVIDER_HEADER not in headers
