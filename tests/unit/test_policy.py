"""control_plane.policy: YAML -> GatewayPolicy, and line-precise errors for everything else."""

from __future__ import annotations

import textwrap

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import PolicyError, Problem, load_policy, load_policy_file
from control_plane.policy.model import API_NAMES
from tests.unit.cp_helpers import EXAMPLE_POLICY

APIS = ", ".join(API_NAMES)  # every provider api, as the refusal lists them


def load(text: str):
    return load_policy(textwrap.dedent(text), source="gw.yaml")


def problems(text: str) -> list[str]:
    """Every problem of an invalid policy, as "line:col: path: message" lines."""
    with pytest.raises(PolicyError) as caught:
        load(text)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    for problem in caught.value.problems:
        assert problem.source == "gw.yaml"
    return [str(p).removeprefix("gw.yaml:") for p in caught.value.problems]


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def provider_yaml(**fields: str) -> str:
    """One provider under `providers:`; each keyword is a raw YAML line suffix (None drops it)."""
    base = {"name": "a", "api": "openai", "base_url": "http://127.0.0.1:9100", "models": "[m]"}
    base.update(fields)
    lines = ["providers:"]
    for index, (key, value) in enumerate((k, v) for k, v in base.items() if v is not None):
        lines.append(f"  {'- ' if index == 0 else '  '}{key}: {value}")
    return "\n".join(lines) + "\n"


# --- the example and valid shapes -----------------------------------------------------------------


def test_the_example_policy_loads():
    policy = load_policy_file(str(EXAMPLE_POLICY))
    assert policy.source == str(EXAMPLE_POLICY)
    assert (policy.listener_address, policy.listener_port) == ("127.0.0.1", 8080)
    assert policy.max_request_bytes == 32 * 1024 * 1024
    assert [p.name for p in policy.providers] == ["fake-anthropic", "fake-openai"]
    anthropic, openai = policy.providers
    assert (anthropic.api, anthropic.scheme, anthropic.host, anthropic.port, anthropic.base_path) == (
        "anthropic",
        "http",
        "127.0.0.1",
        9100,
        "",
    )
    assert openai.base_path == "/v1"
    sonnet, haiku = anthropic.models
    assert (sonnet.name, sonnet.id, sonnet.max_output_tokens, sonnet.context_window) == (
        "claude-sonnet-4-5",
        "fake-claude-sonnet",
        64000,
        200000,
    )
    assert sonnet.capabilities == ("tools", "vision", "thinking")
    assert (haiku.name, haiku.id, haiku.max_output_tokens, haiku.capabilities) == (
        "claude-haiku-4-5",
        "claude-haiku-4-5",
        0,
        (),
    )
    assert anthropic.cluster == "provider_fake-anthropic"
    assert anthropic.host_is_ip


def test_defaults_apply_when_listener_and_limits_are_absent():
    policy = load(provider_yaml())
    assert (policy.listener_address, policy.listener_port) == ("127.0.0.1", 8080)
    assert policy.max_request_bytes == 32 * 1024 * 1024
    assert policy.source == "gw.yaml"


def test_a_model_given_as_a_plain_string_uses_its_name_as_id():
    (model,) = load(provider_yaml(models="[gpt-4o]")).providers[0].models
    assert (model.name, model.id, model.max_output_tokens, model.context_window, model.capabilities) == (
        "gpt-4o",
        "gpt-4o",
        0,
        0,
        (),
    )


def test_header_names_are_lowercased_and_kept_with_their_values():
    policy = load(
        """\
        providers:
          - name: a
            api: openai
            base_url: http://h
            headers:
              OpenAI-Organization: org-1
              x-extra: "2"
            models: [m]
        """
    )
    assert policy.providers[0].headers == (("openai-organization", "org-1"), ("x-extra", "2"))


def test_provider_lookup_by_name():
    policy = load(provider_yaml())
    assert policy.provider("a") is policy.providers[0]
    assert policy.provider("missing") is None


# --- base_url ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9100", ("http", "127.0.0.1", 9100, "")),
        ("http://127.0.0.1:9100/v1", ("http", "127.0.0.1", 9100, "/v1")),
        ("http://example.com", ("http", "example.com", 80, "")),
        ("https://api.anthropic.com", ("https", "api.anthropic.com", 443, "")),
        ("https://api.openai.com/v1/", ("https", "api.openai.com", 443, "/v1")),
        ("https://gw.example.com:8443/openai/v1", ("https", "gw.example.com", 8443, "/openai/v1")),
        ("http://[::1]:9000/v1beta", ("http", "::1", 9000, "/v1beta")),
        ("HTTPS://API.Example.COM", ("https", "api.example.com", 443, "")),
    ],
)
def test_base_url_splits_into_scheme_host_port_and_base_path(url, expected):
    spec = load(provider_yaml(base_url=url)).providers[0]
    assert (spec.scheme, spec.host, spec.port, spec.base_path) == expected


@pytest.mark.parametrize(
    ("host", "is_ip"), [("127.0.0.1", True), ("::1", True), ("api.openai.com", False), ("localhost", False)]
)
def test_a_provider_knows_whether_its_host_is_an_ip_address(host, is_ip):
    url = f"http://[{host}]" if ":" in host else f"http://{host}"
    assert load(provider_yaml(base_url=url)).providers[0].host_is_ip is is_ip


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com", "'ftp://example.com' must be an http:// or https:// URL with a host"),
        ("example.com", "'example.com' must be an http:// or https:// URL with a host"),
        ("'http://'", "'http://' must be an http:// or https:// URL with a host"),
        ("http://example.com/?a=1", "'http://example.com/?a=1' must not carry a query, fragment or credentials"),
        ("http://example.com/#top", "'http://example.com/#top' must not carry a query, fragment or credentials"),
        ("http://user@example.com", "'http://user@example.com' must not carry a query, fragment or credentials"),
        ("http://example.com:99999", "'http://example.com:99999' has an invalid port"),
        ("http://example.com:http", "'http://example.com:http' has an invalid port"),
    ],
)
def test_a_bad_base_url_is_reported_at_its_value(url, message):
    assert one_problem(provider_yaml(base_url=url)) == f"4:15: providers[0].base_url: {message}"


def test_port_zero_in_a_base_url_is_an_invalid_port():
    assert one_problem(provider_yaml(base_url="http://example.com:0")) == (
        "4:15: providers[0].base_url: 'http://example.com:0' has an invalid port"
    )


# --- one problem each, with its place and field path ----------------------------------------------


def test_an_empty_file_is_an_error_at_its_first_line():
    assert one_problem("") == "1:1: policy is empty; at least one provider is required"


def test_a_file_of_only_comments_is_empty():
    assert one_problem("# nothing here\n") == "1:1: policy is empty; at least one provider is required"


def test_an_empty_providers_list_is_an_error():
    assert one_problem("providers: []\n") == "1:12: providers: at least one provider is required"


def test_missing_providers_is_required():
    assert one_problem("listener: {port: 8080}\n") == "1:1: providers: is required"


def test_a_top_level_list_is_not_a_policy():
    assert one_problem("- a\n- b\n") == "1:1: must be a mapping, got a list"


def test_invalid_yaml_reports_the_line_of_the_syntax_error():
    text = """\
        providers:
          - name: a
            api: openai
           base_url: http://h
        """
    (problem,) = problems(text)
    assert problem.startswith("4:4: invalid YAML: ")


def test_an_unclosed_flow_list_is_invalid_yaml():
    (problem,) = problems("providers: [\n")
    assert problem == "2:1: invalid YAML: the file ends inside a '[' or '{' that is never closed"


def test_an_unknown_field_suggests_the_closest_known_one():
    text = provider_yaml(models=None) + "    modles: [m]\n"
    assert problems(text) == [
        "2:5: providers[0].models: is required",
        "5:5: providers[0].modles: unknown field (did you mean 'models'?)",
    ]


def test_an_unknown_field_with_no_close_match_gets_no_suggestion():
    assert one_problem("providers: [{name: a, api: openai, base_url: 'http://h', models: [m]}]\nwhatever: 1\n") == (
        "2:1: whatever: unknown field"
    )


def test_an_unknown_top_level_field_suggests_the_known_one():
    text = provider_yaml() + "limit:\n  max_request_bytes: 2048\n"
    assert one_problem(text) == "6:1: limit: unknown field (did you mean 'limits'?)"


def test_a_misspelt_model_field_is_reported_with_its_full_path():
    text = provider_yaml(models="") + "      - name: m\n        max_output_token: 10\n"
    assert one_problem(text) == (
        "7:9: providers[0].models[0].max_output_token: unknown field (did you mean 'max_output_tokens'?)"
    )


def test_an_unknown_api_lists_the_supported_ones():
    assert one_problem(provider_yaml(api="cohere")) == (f"3:10: providers[0].api: must be one of {APIS} (got 'cohere')")


@pytest.mark.parametrize(
    ("field", "value", "line", "col", "message"),
    [
        ("api", "3", 3, 10, "must be a non-empty string, got an integer"),
        ("api", "''", 3, 10, "must be a non-empty string, got a string"),
        ("base_url", "5", 4, 15, "must be a non-empty string, got an integer"),
        ("base_url", "[a]", 4, 15, "must be a non-empty string, got a list"),
        ("name", "true", 2, 11, "must be a non-empty string, got a boolean"),
        ("name", "Big Name", 2, 11, "'Big Name' is not a valid provider name ([a-z0-9_-])"),
        ("models", "m", 5, 13, "must be a list, got a string"),
        ("models", "[]", 5, 13, "at least one model is required"),
        ("api_key_env", "1BAD", 5, 18, "'1BAD' is not a valid environment variable name"),
        ("headers", "[x]", 5, 14, "must be a mapping, got a list"),
    ],
)
def test_a_provider_field_of_the_wrong_type_is_reported_at_its_value(field, value, line, col, message):
    text = provider_yaml(**{field: value}) if field in ("api", "base_url", "name", "models") else None
    if text is None:  # optional fields go before models, on line 5
        text = provider_yaml(models=None) + f"    {field}: {value}\n    models: [m]\n"
    assert one_problem(text) == f"{line}:{col}: providers[0].{field}: {message}"


def test_a_provider_that_is_not_a_mapping_is_reported_and_the_others_still_checked():
    text = "providers:\n  - 5\n  - name: b\n    api: nope\n    base_url: http://h\n    models: [m]\n"
    assert problems(text) == [
        "2:5: providers[0]: must be a mapping, got an integer",
        f"4:10: providers[1].api: must be one of {APIS} (got 'nope')",
    ]


def test_a_provider_missing_every_required_field_names_each():
    assert problems("providers:\n  - headers: {}\n") == [
        "2:5: providers[0].name: is required",
        "2:5: providers[0].api: is required",
        "2:5: providers[0].base_url: is required",
        "2:5: providers[0].models: is required",
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_output_tokens", "lots", "must be an integer, got a string"),
        ("max_output_tokens", "0", "must be between 1 and 10000000, got 0"),
        ("max_output_tokens", "1.5", "must be an integer, got float"),
        ("context_window", "true", "must be an integer, got a boolean"),
        ("context_window", "-1", "must be between 1 and 100000000, got -1"),
        ("id", "''", "must be a non-empty string, got a string"),
        ("capabilities", "tools", "must be a list, got a string"),
    ],
)
def test_a_model_field_of_the_wrong_type_is_reported_with_its_path(field, value, message):
    text = provider_yaml(models="") + f"      - name: m\n        {field}: {value}\n"
    col = 11 + len(field) if field != "id" else 13
    assert one_problem(text) == f"7:{col}: providers[0].models[0].{field}: {message}"


def test_a_model_entry_that_is_nothing_is_reported():
    assert one_problem(provider_yaml(models="[null]")) == "5:14: providers[0].models[0]: must be a mapping, got nothing"


def test_an_unknown_capability_is_reported_at_the_item_with_the_known_list():
    text = provider_yaml(models="") + "      - name: m\n        capabilities: [tools, telepathy]\n"
    assert one_problem(text) == (
        "7:31: providers[0].models[0].capabilities[1]: unknown capability 'telepathy' "
        "(known: max_tokens, thinking, tools, vision, web_search)"
    )


def test_max_tokens_is_a_capability_of_openai_format_models_only():
    text = provider_yaml(models="") + "      - name: m\n        capabilities: [tools, max_tokens]\n"
    (provider,) = load_policy(text).providers
    assert provider.models[0].capabilities == ("tools", "max_tokens")
    text = provider_yaml(api="anthropic", models="") + "      - name: m\n        capabilities: [max_tokens]\n"
    assert one_problem(text) == (
        "7:24: providers[0].models[0].capabilities[0]: capability 'max_tokens' only applies to openai-format providers"
    )


@pytest.mark.parametrize("item", ["[tools]", "{a: 1}"])
def test_a_capability_that_is_not_a_string_is_a_policy_error(item):
    text = provider_yaml(models="") + f"      - name: m\n        capabilities: [{item}]\n"
    (problem,) = problems(text)
    assert problem.startswith("7:24: providers[0].models[0].capabilities[0]: ")


@pytest.mark.parametrize(("item", "kind"), [("[tools]", "a list"), ("{a: 1}", "a mapping")])
def test_a_capability_that_is_not_a_string_says_what_it_got(item, kind):
    text = provider_yaml(models="") + f"      - name: m\n        capabilities: [{item}]\n"
    (problem,) = problems(text)
    assert "_Located" not in problem
    assert kind in problem


def test_an_empty_model_name_is_an_error():
    assert one_problem(provider_yaml(models="['']")) == "5:14: providers[0].models[0]: a model name must not be empty"


@pytest.mark.parametrize(
    "name", ["host", "Host", "content-length", "authorization", "x-api-key", "x-goog-api-key", "x-ccr-cluster"]
)
def test_a_reserved_header_name_cannot_be_set_by_the_policy(name):
    text = provider_yaml(models=None) + f"    headers:\n      {name}: v\n    models: [m]\n"
    assert one_problem(text) == f"6:7: providers[0].headers.{name}: is not a header the policy may set"


def test_a_header_name_with_invalid_characters_cannot_be_set():
    text = provider_yaml(models=None) + "    headers:\n      'bad header': v\n    models: [m]\n"
    assert one_problem(text) == "6:7: providers[0].headers.bad header: is not a header the policy may set"


def test_a_header_value_must_be_a_string():
    text = provider_yaml(models=None) + "    headers:\n      x-org: 5\n    models: [m]\n"
    assert one_problem(text) == "6:14: providers[0].headers.x-org: must be a string, got an integer"


@pytest.mark.parametrize(
    ("listener", "problem"),
    [
        ("{port: 70000}", "1:18: listener.port: must be between 1 and 65535, got 70000"),
        ("{port: 0}", "1:18: listener.port: must be between 1 and 65535, got 0"),
        ("{port: '8080'}", "1:18: listener.port: must be an integer, got a string"),
        ("{address: localhost}", "1:21: listener.address: 'localhost' is not an IP address"),
        ("{address: 127.0.0.1, host: x}", "1:32: listener.host: unknown field"),
        ("8080", "1:11: listener: must be a mapping, got an integer"),
    ],
)
def test_a_bad_listener_is_reported_at_its_field(listener, problem):
    assert one_problem(f"listener: {listener}\n" + provider_yaml()) == problem


def test_max_request_bytes_must_be_within_bounds():
    text = "limits:\n  max_request_bytes: 10\n" + provider_yaml()
    assert one_problem(text) == "2:22: limits.max_request_bytes: must be between 1024 and 1073741824, got 10"


# --- cross-provider checks -------------------------------------------------------------------------


TWO_PROVIDERS = """\
providers:
  - name: a
    api: openai
    base_url: http://h1
    models: [m1]
  - name: {second}
    api: anthropic
    base_url: http://h2
    models: {models}
"""


def test_two_providers_with_the_same_name_are_reported_on_the_second():
    text = TWO_PROVIDERS.format(second="a", models="[m2]")
    assert one_problem(text) == "6:11: providers[1].name: duplicate provider name 'a'"


def test_the_same_model_on_two_providers_is_reported_on_the_second():
    text = TWO_PROVIDERS.format(second="b", models="[m2, m1]")
    assert one_problem(text) == (
        "9:18: providers[1].models: model 'm1' is also served by provider 'a'; a model name must map to one provider"
    )


def test_a_model_listed_twice_by_one_provider_is_reported():
    text = provider_yaml(models="[m, {name: m, id: other}]")
    assert one_problem(text) == "5:24: providers[0].models: model 'm' is listed twice"


def test_a_duplicate_provider_name_is_reported_at_the_name_itself():
    text = "providers:\n  - {api: openai, base_url: 'http://h', models: [a], name: p}\n" + (
        "  - api: openai\n    base_url: http://h\n    models: [b]\n    name: p\n"
    )
    assert one_problem(text) == "6:11: providers[1].name: duplicate provider name 'p'"


def test_a_duplicate_model_is_reported_at_the_line_of_the_model():
    text = provider_yaml(models="") + "      - m1\n      - m2\n      - m1\n"
    assert one_problem(text) == "8:9: providers[0].models: model 'm1' is listed twice"


# --- many problems at once ------------------------------------------------------------------------


def test_every_problem_is_collected_into_one_error_sorted_by_line():
    text = """\
        providers:
          - name: a
            api: nope
            base_url: ftp://h
            models:
              - name: m
                capabilities: [telepathy]
          - name: a
            api: openai
            base_url: http://h
            models: [x]
        listener:
          port: 0
          adress: 127.0.0.1
        """
    assert problems(text) == [
        f"3:10: providers[0].api: must be one of {APIS} (got 'nope')",
        "4:15: providers[0].base_url: 'ftp://h' must be an http:// or https:// URL with a host",
        "7:24: providers[0].models[0].capabilities[0]: unknown capability 'telepathy' "
        "(known: max_tokens, thinking, tools, vision, web_search)",
        "13:9: listener.port: must be between 1 and 65535, got 0",
        "14:3: listener.adress: unknown field (did you mean 'address'?)",
    ]


def test_cross_checks_see_only_providers_that_are_valid_on_their_own():
    # providers[0] is invalid, so its name does not count as a duplicate of providers[1]'s.
    text = TWO_PROVIDERS.format(second="a", models="[m1]").replace("api: openai", "api: x", 1)
    assert problems(text) == [f"3:10: providers[0].api: must be one of {APIS} (got 'x')"]


def test_policy_error_sorts_problems_by_line_then_column():
    error = PolicyError([Problem("f", 9, 1, "b", "late"), Problem("f", 2, 7, "a", "x"), Problem("f", 2, 3, "", "y")])
    assert str(error) == "f:2:3: y\nf:2:7: a: x\nf:9:1: b: late"
    assert isinstance(error, ValueError)


def test_a_problem_without_a_line_shows_only_the_source():
    assert str(PolicyError.single("gw.yaml", "cannot read: No such file or directory")) == (
        "gw.yaml: cannot read: No such file or directory"
    )


def test_a_missing_file_is_a_policy_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy_file(str(missing))
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"


# --- the proto served to ext_proc ----------------------------------------------------------------


def test_to_proto_carries_providers_models_and_limits():
    policy = load_policy_file(str(EXAMPLE_POLICY))
    proto = policy.to_proto("7")
    assert proto.version == "7"
    assert proto.limits.max_request_bytes == 32 * 1024 * 1024
    assert [(p.name, p.api, p.cluster, p.base_path) for p in proto.providers] == [
        ("fake-anthropic", policy_pb2.API_ANTHROPIC, "provider_fake-anthropic", ""),
        ("fake-openai", policy_pb2.API_OPENAI, "provider_fake-openai", "/v1"),
    ]
    sonnet = proto.providers[0].models[0]
    assert (sonnet.name, sonnet.id, sonnet.max_output_tokens, sonnet.context_window) == (
        "claude-sonnet-4-5",
        "fake-claude-sonnet",
        64000,
        200000,
    )
    assert list(sonnet.capabilities) == ["tools", "vision", "thinking"]
    assert [m.name for m in proto.providers[1].models] == ["gpt-4o"]


def test_to_proto_maps_every_api_and_carries_headers_and_the_key_variable_name():
    text = """\
        limits: {max_request_bytes: 2048}
        providers:
          - {name: a, api: anthropic, base_url: 'https://a.example', api_key_env: A_KEY, models: [ma]}
          - {name: o, api: openai, base_url: 'https://o.example/v1', headers: {x-org: o1}, models: [mo]}
          - {name: g, api: gemini, base_url: 'https://g.example/v1beta', models: [mg]}
        """
    proto = load(text).to_proto("1")
    assert [p.api for p in proto.providers] == [policy_pb2.API_ANTHROPIC, policy_pb2.API_OPENAI, policy_pb2.API_GEMINI]
    assert proto.providers[0].api_key_env == "A_KEY"
    assert dict(proto.providers[1].headers) == {"x-org": "o1"}
    assert proto.limits.max_request_bytes == 2048


def test_to_proto_carries_no_secret_and_no_listener_details(monkeypatch):
    monkeypatch.setenv("A_KEY", "sk-very-secret")
    text = """\
        listener: {address: 10.1.2.3, port: 9999}
        providers:
          - {name: a, api: anthropic, base_url: 'https://a.example', api_key_env: A_KEY, models: [ma]}
        """
    wire = load(text).to_proto("1").SerializeToString()
    assert b"sk-very-secret" not in wire
    assert b"10.1.2.3" not in wire
    assert b"a.example" not in wire  # hosts are Envoy's business; ext_proc only names the cluster
    assert b"A_KEY" in wire


@pytest.mark.parametrize("api", ["anthropic", "gemini"])
def test_anthropic_and_gemini_providers_may_count_tokens(api):
    policy = load(provider_yaml(api=api, forward_count_tokens="true"))
    assert policy.providers[0].forward_count_tokens is True


def test_an_openai_provider_cannot_count_tokens():
    assert one_problem(provider_yaml(forward_count_tokens="true")) == (
        "6:27: providers[0].forward_count_tokens: only Anthropic-, Gemini- and Vertex-format providers count tokens"
    )
