"""extproc.routing.compile_policy: Policy proto -> the table ext_proc routes requests with."""

from __future__ import annotations

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import load_policy, load_policy_file
from extproc.routing import PolicyCompileError, auth_headers, compile_policy
from extproc.translate.base import Api
from tests.unit.cp_helpers import EXAMPLE_POLICY

POLICY_YAML = """\
limits: {max_request_bytes: 4096}
providers:
  - name: claude
    api: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANTHROPIC_KEY
    headers: {anthropic-beta: tools-2024}
    models:
      - name: sonnet
        id: claude-sonnet-4-5-20250929
        max_output_tokens: 64000
        capabilities: [tools, vision, thinking]
  - name: oai
    api: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_KEY
    models: [gpt-4o]
  - name: gem
    api: gemini
    base_url: https://generativelanguage.googleapis.com/v1beta
    api_key_env: GEMINI_KEY
    models: [gemini-2.5-pro]
  - name: local
    api: openai
    base_url: http://127.0.0.1:9100/v1
    models: [llama]
"""
KEYS = {"ANTHROPIC_KEY": "sk-ant", "OPENAI_KEY": "sk-oai", "GEMINI_KEY": "g-key"}


def proto(version: str = "5") -> policy_pb2.Policy:
    return load_policy(POLICY_YAML).to_proto(version)


def test_the_table_maps_each_model_name_to_its_provider_cluster_and_target():
    table = compile_policy(proto(), KEYS)
    assert table.version == "5"
    assert table.max_request_bytes == 4096
    assert table.model_names() == ["gemini-2.5-pro", "gpt-4o", "llama", "sonnet"]
    route = table.route("sonnet")
    assert route is not None
    assert route.model == "sonnet"
    assert (route.provider.name, route.provider.api, route.provider.cluster, route.provider.base_path) == (
        "claude",
        Api.ANTHROPIC,
        "provider_claude",
        "",
    )
    assert route.target.model == "claude-sonnet-4-5-20250929"
    assert route.target.max_output_tokens == 64000
    assert route.target.capabilities == frozenset({"tools", "vision", "thinking"})
    assert route.target.base_path == ""
    assert route.target.stream is False


def test_a_model_without_an_id_or_limits_targets_its_own_name_with_no_clamp():
    target = compile_policy(proto(), KEYS).route("gpt-4o").target
    assert (target.model, target.max_output_tokens, target.capabilities, target.base_path) == (
        "gpt-4o",
        None,
        frozenset(),
        "/v1",
    )


def test_the_base_path_of_each_provider_is_kept():
    table = compile_policy(proto(), KEYS)
    assert table.route("gemini-2.5-pro").provider.base_path == "/v1beta"
    assert table.route("gemini-2.5-pro").target.base_path == "/v1beta"
    assert table.route("llama").provider.base_path == "/v1"


def test_an_unknown_model_has_no_route():
    assert compile_policy(proto(), KEYS).route("gpt-5-mega") is None


@pytest.mark.parametrize(
    ("model", "headers"),
    [
        ("sonnet", (("x-api-key", "sk-ant"), ("anthropic-beta", "tools-2024"))),
        ("gpt-4o", (("authorization", "Bearer sk-oai"),)),
        ("gemini-2.5-pro", (("x-goog-api-key", "g-key"),)),
        ("llama", ()),
    ],
)
def test_each_api_gets_its_own_auth_header_from_the_environment_variable(model, headers):
    provider = compile_policy(proto(), KEYS).route(model).provider
    assert provider.headers == headers
    assert provider.unavailable is None


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        (Api.ANTHROPIC, (("x-api-key", "k"),)),
        (Api.OPENAI, (("authorization", "Bearer k"),)),
        (Api.GEMINI, (("x-goog-api-key", "k"),)),
    ],
)
def test_auth_headers_per_api(api, expected):
    assert auth_headers(api, "k") == expected


def test_a_provider_whose_key_variable_is_unset_is_unavailable_and_sends_no_auth():
    table = compile_policy(proto(), {"OPENAI_KEY": "sk-oai"})
    claude = table.route("sonnet").provider
    assert claude.unavailable == (
        "provider 'claude' has no API key: environment variable ANTHROPIC_KEY is not set for the ext_proc service"
    )
    assert claude.headers == (("anthropic-beta", "tools-2024"),)
    assert table.route("gemini-2.5-pro").provider.unavailable is not None
    assert table.route("gpt-4o").provider.unavailable is None


def test_an_empty_key_variable_counts_as_unset():
    assert compile_policy(proto(), {**KEYS, "OPENAI_KEY": ""}).route("gpt-4o").provider.unavailable is not None


def test_a_provider_without_a_key_variable_is_available_without_auth():
    provider = compile_policy(proto(), {}).route("llama").provider
    assert provider.unavailable is None
    assert provider.headers == ()


def test_keys_are_read_from_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("OPENAI_KEY", "from-env")
    assert compile_policy(proto()).route("gpt-4o").provider.headers == (("authorization", "Bearer from-env"),)


def test_models_of_one_provider_share_its_route():
    message = proto()
    message.providers[0].models.add(name="haiku", id="claude-haiku")
    table = compile_policy(message, KEYS)
    assert table.route("haiku").provider is table.route("sonnet").provider
    assert table.route("haiku").target.model == "claude-haiku"


def test_the_example_policy_compiles():
    table = compile_policy(load_policy_file(str(EXAMPLE_POLICY)).to_proto("1"), {})
    assert table.model_names() == ["claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o"]
    assert table.route("claude-sonnet-4-5").target.model == "fake-claude-sonnet"
    assert table.route("gpt-4o").provider.cluster == "provider_fake-openai"


def test_an_unknown_api_cannot_be_compiled():
    message = proto()
    message.providers[1].api = 99
    with pytest.raises(PolicyCompileError, match=r"provider 'oai': unsupported api 99"):
        compile_policy(message, KEYS)


def test_an_unspecified_api_cannot_be_compiled():
    message = proto()
    message.providers[1].api = policy_pb2.API_UNSPECIFIED
    with pytest.raises(PolicyCompileError, match="unsupported api 0"):
        compile_policy(message, KEYS)


def test_a_provider_without_a_cluster_cannot_be_compiled():
    message = proto()
    message.providers[2].cluster = ""
    with pytest.raises(PolicyCompileError, match="provider 'gem': no cluster"):
        compile_policy(message, KEYS)


def test_a_model_served_by_two_providers_cannot_be_compiled():
    message = proto()
    message.providers[3].models.add(name="gpt-4o")
    with pytest.raises(PolicyCompileError, match="model 'gpt-4o' is served by two providers"):
        compile_policy(message, KEYS)


def test_an_empty_policy_compiles_to_an_empty_table():
    table = compile_policy(policy_pb2.Policy(version="0"), {})
    assert (table.version, table.model_names(), table.max_request_bytes) == ("0", [], 0)
