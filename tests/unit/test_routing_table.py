"""extproc.routing_table.compile_policy: Policy proto -> the table ext_proc routes requests with."""

from __future__ import annotations

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import load_policy, load_policy_file
from extproc.routing_table import PolicyCompileError, auth_headers, compile_policy
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


# --- router, aliases, fallback chains, tenants ----------------------------------------------------

ROUTING_YAML = """\
aliases:
  fast: oai,gpt-4o
  mix:
    - {target: "claude,sonnet", weight: 3}
    - {target: "oai,gpt-4o", weight: 1}
router:
  default: mix
  think: claude,sonnet
  longContext: gem,gemini-2.5-pro
  longContextThreshold: 90000
fallback:
  claude,sonnet: ["oai,gpt-4o", "gem,gemini-2.5-pro"]
tenants:
  - name: team-a
    api_key_sha256: ["%s"]
    router: {default: "local,llama", longContextThreshold: 1000}
""" % ("AB" * 32)


def routed(version: str = "6") -> policy_pb2.Policy:
    return load_policy(POLICY_YAML + ROUTING_YAML).to_proto(version)


def names(routes) -> list[str]:
    return [str(r) for r in routes]


def test_targets_are_keyed_by_provider_and_model_name():
    table = compile_policy(proto(), KEYS)
    assert table.target("claude", "sonnet") is table.route("sonnet")
    assert table.targets[("gem", "gemini-2.5-pro")] is table.route("gemini-2.5-pro")
    assert table.target("oai", "sonnet") is None


def test_explicit_provider_model_strings_match_the_policy_name_and_the_upstream_id():
    table = compile_policy(proto(), KEYS)
    sonnet = table.route("sonnet")
    assert table.explicit["claude,sonnet"] is sonnet
    assert table.explicit["claude,claude-sonnet-4-5-20250929"] is sonnet
    assert "oai,sonnet" not in table.explicit


def test_the_router_is_compiled_to_weighted_choices_of_routes():
    table = compile_policy(routed(), KEYS)
    router = table.router
    assert names(router.default.routes) == ["claude,sonnet", "oai,gpt-4o"]
    assert router.default.cumulative == (3, 4)
    assert router.default.name == "default"
    assert names(router.think.routes) == ["claude,sonnet"]
    assert router.background is None and router.web_search is None and router.image is None
    assert router.scenarios() == frozenset({"default", "think", "longContext"})
    assert (table.long_context_threshold, table.custom_hook) == (90000, "")


def test_an_unset_threshold_is_ccrs_default():
    table = compile_policy(policy_pb2.Policy(version="0"), {})
    assert table.long_context_threshold == 60000
    assert table.router.default is None


def test_aliases_are_compiled_with_their_name():
    table = compile_policy(routed(), KEYS)
    assert sorted(table.aliases) == ["fast", "mix"]
    assert names(table.aliases["fast"].routes) == ["oai,gpt-4o"]
    assert table.aliases["mix"].name == "mix"
    assert not table.aliases["fast"].is_split and table.aliases["mix"].is_split


def test_fallback_chains_are_keyed_by_their_primary_and_start_with_it():
    table = compile_policy(routed(), KEYS)
    chain = table.fallbacks[("claude", "sonnet")]
    assert names(chain.chain) == ["claude,sonnet", "oai,gpt-4o", "gem,gemini-2.5-pro"]
    assert chain.chain[0] is table.route("sonnet")
    assert chain.cluster.startswith("chain_")
    assert ("oai", "gpt-4o") not in table.fallbacks


def test_a_tenant_router_is_the_global_one_with_its_own_settings_laid_over_it():
    table = compile_policy(routed(), KEYS)
    tenant = table.tenants["ab" * 32]  # digests are matched in lower case
    assert tenant.name == "team-a"
    assert names(tenant.router.default.routes) == ["local,llama"]
    assert tenant.router.think is table.router.think
    assert tenant.router.long_context is table.router.long_context
    assert tenant.router.long_context_threshold == 1000


def test_weights_all_unset_split_evenly_and_a_zero_weight_drains_an_option():
    message = routed()
    for option in message.aliases["mix"].options:
        option.weight = 0
    assert compile_policy(message, KEYS).aliases["mix"].cumulative == (1, 2)
    message.aliases["mix"].options[0].weight = 5
    choice = compile_policy(message, KEYS).aliases["mix"]
    assert (names(choice.routes), choice.cumulative) == (["claude,sonnet"], (5,))


def hook_for_tests(body, context):
    return None


NOT_CALLABLE = 42


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_package.mod:fn", r"router.custom: cannot import 'no_such_package.mod': ModuleNotFoundError"),
        (f"{__name__}:missing", r"router.custom: module '.*' has no attribute 'missing'"),
        (f"{__name__}:NOT_CALLABLE", r"router.custom: '.*:NOT_CALLABLE' is not callable"),
        ("no-colon", r"router.custom: 'no-colon' is not 'package.module:function'"),
    ],
)
def test_a_custom_hook_that_cannot_be_loaded_fails_the_policy(path, message):
    policy = routed()
    policy.router.custom_hook = path
    with pytest.raises(PolicyCompileError, match=message):
        compile_policy(policy, KEYS)


def test_a_custom_hook_is_imported_at_compile_time():
    policy = routed()
    policy.router.custom_hook = f"{__name__}:hook_for_tests"
    table = compile_policy(policy, KEYS)
    assert table.router.hook is hook_for_tests
    assert table.custom_hook == f"{__name__}:hook_for_tests"
    assert table.tenants["ab" * 32].router.hook is hook_for_tests  # inherited


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.router.think.options[0].target.__setattr__("model", "nope"), r"router.think: no model 'nope'"),
        (lambda p: p.aliases["mix"].options[1].target.__setattr__("provider", "x"), r"aliases.mix: no model"),
        (
            lambda p: p.aliases["sonnet"].options.add(target=policy_pb2.Target(provider="oai", model="gpt-4o")),
            "alias 'sonnet' shadows a model name",
        ),
        (lambda p: p.fallbacks[0].__setattr__("cluster", ""), r"fallback claude,sonnet: no cluster"),
        (lambda p: p.fallbacks.add().CopyFrom(p.fallbacks[0]), r"fallback claude,sonnet: defined twice"),
        (lambda p: p.tenants.add(name="team-b", api_key_sha256=["ab" * 32]), "tenants 'team-a' and 'team-b' share"),
        (
            lambda p: p.tenants[0].router.default.options[0].target.__setattr__("model", "zz"),
            r"tenants.team-a.router.default",
        ),
    ],
    ids=[
        "scenario-target",
        "alias-target",
        "alias-shadows",
        "chain-cluster",
        "chain-twice",
        "tenant-key",
        "tenant-target",
    ],
)
def test_a_policy_naming_what_this_table_cannot_serve_is_rejected(edit, message):
    policy = routed()
    edit(policy)
    with pytest.raises(PolicyCompileError, match=message):
        compile_policy(policy, KEYS)
