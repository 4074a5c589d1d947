"""Claude through the real AWS Bedrock and Google Vertex AI, when credentials are in the environment.

The end-to-end tests run against the fake provider's Bedrock and Vertex endpoints and a local
SigV4 checker (tests/e2e/bedrock_support.py); these run the same gateway (`ccr-gateway up`, real
Envoy) against the real services, so the fakes cannot drift from them unnoticed. Each is skipped,
saying what it needs, unless its variables are set:

- Bedrock: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN if temporary),
  CCR_CONTRACT_BEDROCK_REGION and CCR_CONTRACT_BEDROCK_MODEL (a model id or inference profile the
  account may invoke, e.g. us.anthropic.claude-haiku-4-5-20251001-v1:0). Envoy signs with them
  (``credentials: env``).
- Vertex: GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), CCR_CONTRACT_VERTEX_PROJECT,
  CCR_CONTRACT_VERTEX_REGION and CCR_CONTRACT_VERTEX_MODEL (e.g. claude-haiku-4-5@20251001). The
  control plane obtains the token (``credentials: service_account:...``).

A text turn, buffered and streamed, through the Anthropic SDK pointed at the gateway: the answer
is an Anthropic message with the provider's own usage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.e2e.gateway import Gateway, free_port

BEDROCK_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "CCR_CONTRACT_BEDROCK_REGION",
    "CCR_CONTRACT_BEDROCK_MODEL",
)
VERTEX_VARS = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CCR_CONTRACT_VERTEX_PROJECT",
    "CCR_CONTRACT_VERTEX_REGION",
    "CCR_CONTRACT_VERTEX_MODEL",
)


def _needs(names: tuple[str, ...], what: str) -> None:
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not set: the {what} contract test needs real credentials")


def _provider(kind: str) -> dict:
    env = os.environ
    if kind == "bedrock":
        region = env["CCR_CONTRACT_BEDROCK_REGION"]
        return {
            "name": "bedrock",
            "api": "bedrock",
            "base_url": f"https://bedrock-runtime.{region}.amazonaws.com",
            "region": region,
            "credentials": "env",
            "models": [{"name": "claude-contract", "id": env["CCR_CONTRACT_BEDROCK_MODEL"]}],
        }
    region = env["CCR_CONTRACT_VERTEX_REGION"]
    host = "aiplatform.googleapis.com" if region == "global" else f"{region}-aiplatform.googleapis.com"
    return {
        "name": "vertex",
        "api": "vertex",
        "base_url": f"https://{host}",
        "project": env["CCR_CONTRACT_VERTEX_PROJECT"],
        "region": region,
        "credentials": f"service_account:{env['GOOGLE_APPLICATION_CREDENTIALS']}",
        "models": [{"name": "claude-contract", "id": env["CCR_CONTRACT_VERTEX_MODEL"]}],
    }


@pytest.fixture(params=["bedrock", "vertex"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    _needs(BEDROCK_VARS if request.param == "bedrock" else VERTEX_VARS, request.param)
    policy = {"listener": {"address": "127.0.0.1", "port": free_port()}, "providers": [_provider(request.param)]}
    gw = Gateway.start(tmp_path, policy, name=f"contract-{request.param}", workers=1)
    try:
        yield gw
    finally:
        gw.stop()


def test_a_text_turn_buffered_and_streamed(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused-by-an-open-gateway", max_retries=2)
    ask = {"model": "claude-contract", "max_tokens": 32, "messages": [{"role": "user", "content": "Say: ok"}]}
    message = client.messages.create(**ask)  # type: ignore[arg-type]
    assert message.type == "message" and message.content and message.content[0].type == "text"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    with client.messages.stream(**ask) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
