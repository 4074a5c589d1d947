"""A Responses-format provider (``api: responses``) through the rest of the gateway: the policy
accepts it (base_url advice like OpenAI's), the routing table compiles it with a bearer key, Envoy
gets its credential header, and the usage log reads its answers' usage (JSON and the terminal
event of a stream) with cached tokens counted apart, like the translator reports them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import PolicyError, load_policy
from control_plane.policy.base_urls import check_base_url
from control_plane.resources.provider_keys import header_value
from control_plane.resources.usage_capture import PROMPT_KEYS
from extproc.routing_table import compile_policy
from extproc.translate.base import Api, Usage
from extproc.usage_log import error_type, usage_from_counts, usage_record
from tests.unit.test_usage_log import _documents, _entry, envoy_counts
from tests.unit.translate.test_anthropic_responses import CASES, Case, _replay

POLICY = """\
providers:
  - name: oai
    api: responses
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_KEY
    models:
      - name: gpt-5
        capabilities: [tools, thinking]
"""


def test_the_policy_accepts_a_responses_provider_and_compiles_it() -> None:
    policy = load_policy(POLICY)
    [provider] = policy.providers
    assert (provider.api, provider.base_path) == ("responses", "/v1")
    proto = policy.to_proto("1")
    assert proto.providers[0].api == policy_pb2.API_RESPONSES
    route = compile_policy(proto, {"OPENAI_KEY": "sk-oai"}).route("gpt-5")
    assert route is not None
    assert route.provider.api is Api.RESPONSES
    assert route.provider.base_path == "/v1"
    assert ("authorization", "Bearer sk-oai") in route.provider.headers
    assert header_value(provider, "sk-oai") == "Bearer sk-oai"


def test_a_bad_api_is_still_an_error_at_its_line() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(textwrap.dedent(POLICY.replace("api: responses", "api: respones")), source="gw.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "gw.yaml:3:10: providers[0].api: must be one of anthropic, openai, gemini, responses, vertex, bedrock (got 'respones')"
    ]


@pytest.mark.parametrize(
    ("url", "path", "error"),
    [
        ("https://api.openai.com/v1/responses", "/v1/responses", True),
        ("https://api.openai.com/v1/chat/completions", "/v1/chat/completions", True),
        ("http://127.0.0.1:9100", "", False),
    ],
)
def test_a_responses_base_url_gets_the_advice_an_openai_one_gets(url: str, path: str, error: bool) -> None:
    advice = check_base_url("responses", url.split("/")[2].split(":")[0], path, url)
    assert advice is not None and advice.is_error is error
    assert "base_url + /responses" in advice.message
    assert check_base_url("responses", "api.openai.com", "/v1", "https://api.openai.com/v1") is None


def test_a_responses_usage_reads_with_its_cached_tokens_apart() -> None:
    counts = {"input_tokens": 2100, "output_tokens": 5, "cached_tokens": 2048}
    assert usage_from_counts(counts) == Usage(input_tokens=52, output_tokens=5, cache_read_input_tokens=2048)
    # Without the details a Responses count reads as Anthropic's, which is then the same number.
    assert usage_from_counts({"input_tokens": 10, "output_tokens": 1}) == Usage(10, 1)


def _with_usage(case: Case) -> bool:
    documents = _documents(next(case.path.glob("provider_response.*")))
    return case.status < 300 and any(key in envoy_counts(documents) for key in PROMPT_KEYS)


@pytest.mark.parametrize("case", [c for c in CASES if _with_usage(c)], ids=lambda c: c.name)
def test_envoy_rules_read_the_usage_the_translator_reported(case: Case) -> None:
    provider_file: Path = next(case.path.glob("provider_response.*"))
    counts = envoy_counts(_documents(provider_file))
    _, [reported] = _replay(case, [case.provider_response()])
    assert usage_from_counts(counts) == reported


def test_an_unlabelled_responses_request_is_recorded_as_the_responses_client_api() -> None:
    entry = _entry(None, None)
    entry.request.request_id = "r1"
    entry.request.path = "/v1/responses"
    entry.response.response_code.value = 413
    record = usage_record(entry, None)
    assert record is not None
    assert record.client_api == "responses"
    assert record.error_type == "invalid_request_error"
    assert error_type(429, "responses", "", entry.common_properties.response_flags) == "rate_limit_error"
