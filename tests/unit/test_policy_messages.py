"""What `validate` says about a policy: duplicate keys, base URLs that do not fit their API, YAML
syntax in plain words, warnings (valid but suspicious; unset key variables), and no cascades: a
name that is written in the file is never reported unknown."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from control_plane.policy import PolicyError, load_policy, unset_key_warnings
from control_plane.policy.base_urls import check_base_url
from control_plane.policy.yaml_errors import describe

README = Path(__file__).resolve().parents[2] / "README.md"


def load(text: str):
    return load_policy(textwrap.dedent(text), source="gw.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(text)
    return [str(p).removeprefix("gw.yaml:") for p in caught.value.problems]


PROVIDER = """\
providers:
  - name: fake-anthropic
    api: anthropic
    base_url: http://127.0.0.1:9100
    models: [claude-sonnet-4-5]
"""


# --- duplicate keys ------------------------------------------------------------------------------


def test_a_section_written_twice_is_an_error_naming_both_lines():
    text = "limits: {max_request_bytes: 2048}\n" + PROVIDER + "limits: {attempt_timeout_seconds: 30}\n"
    assert problems(text) == ["7:1: limits: defined twice, at lines 1 and 7"]


def test_a_nested_key_written_three_times_is_reported_once_with_every_line():
    text = PROVIDER + "listener:\n  port: 1\n  port: 2\n  address: 127.0.0.1\n  port: 3\n"
    assert problems(text) == ["10:3: listener.port: defined 3 times, at lines 7, 8 and 10"]


def test_a_key_repeated_inside_a_list_entry_names_the_entry():
    text = PROVIDER + "    api: openai\n"
    assert problems(text) == ["6:5: providers[0].api: defined twice, at lines 3 and 6"]


def test_the_same_key_in_two_list_entries_is_not_a_duplicate():
    policy = load(PROVIDER + "  - {name: b, api: openai, base_url: 'http://h/v1', models: [m]}\n")
    assert [p.name for p in policy.providers] == ["fake-anthropic", "b"]


def test_the_readmes_two_limits_snippets_merged_are_caught():
    """The README shows `limits:` in the policy and again in the routing section."""
    readme = README.read_text()
    blocks = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:]]
    merged = next(b for b in blocks if "max_request_bytes" in b) + next(b for b in blocks if "attempt_timeout" in b)
    found = problems(merged)
    assert any("limits: defined twice, at lines 2 and" in p for p in found), found


# --- base_url against the provider's API --------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "url", "verdict"),
    [
        # Anthropic: ext_proc appends /v1/messages.
        ("anthropic", "https://api.anthropic.com", None),
        ("anthropic", "https://api.anthropic.com/", None),
        ("anthropic", "https://openrouter.ai/api", None),
        ("anthropic", "https://api.deepseek.com/anthropic", None),
        ("anthropic", "https://api.anthropic.com/v1", "error"),
        ("anthropic", "https://api.anthropic.com/v1/", "error"),
        ("anthropic", "https://api.anthropic.com/v1/messages", "error"),
        ("anthropic", "http://127.0.0.1:9100/v1", "error"),
        # OpenAI: /chat/completions is appended; a version segment is usual but not universal.
        ("openai", "https://api.openai.com/v1", None),
        ("openai", "https://openrouter.ai/api/v1", None),
        ("openai", "https://generativelanguage.googleapis.com/v1beta/openai", None),
        ("openai", "https://open.bigmodel.cn/api/paas/v4", None),
        ("openai", "https://api.groq.com/openai/v1", None),
        ("openai", "http://localhost:11434/v1", None),
        ("openai", "https://api.deepseek.com", None),  # known to answer at /chat/completions
        ("openai", "https://api.perplexity.ai", None),
        ("openai", "https://llm.example.com", "warning"),
        ("openai", "http://127.0.0.1:9100", "warning"),
        ("openai", "https://example.com/vintage", "warning"),
        ("openai", "https://api.openai.com/v1/chat/completions", "error"),
        ("openai", "https://api.openai.com/v1/responses", "error"),
        ("openai", "https://api.openai.com/v1/completions", "error"),
        ("openai", "https://generativelanguage.googleapis.com/v1beta", "error"),
        # Gemini: /models/MODEL:generateContent is appended.
        ("gemini", "https://generativelanguage.googleapis.com/v1beta", None),
        ("gemini", "https://generativelanguage.googleapis.com/v1", None),
        ("gemini", "http://127.0.0.1:9100", "warning"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "error"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/models", "error"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent", "error"),
    ],
)
def test_base_url_fits_the_api(api, url, verdict):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    advice = check_base_url(api, parts.hostname or "", parts.path.rstrip("/"), url)
    found = None if advice is None else ("error" if advice.is_error else "warning")
    assert found == verdict, advice


def test_an_anthropic_base_url_with_v1_says_where_requests_would_go_and_what_to_write():
    text = PROVIDER.replace("http://127.0.0.1:9100", "https://api.anthropic.com/v1")
    assert problems(text) == [
        "4:15: providers[0].base_url: Anthropic-format requests go to base_url + /v1/messages "
        "(https://api.anthropic.com/v1/v1/messages); write it without /v1: https://api.anthropic.com"
    ]


def test_an_openai_base_url_ending_in_the_endpoint_says_what_to_drop():
    text = (
        "providers:\n  - {name: o, api: openai, base_url: 'https://api.openai.com/v1/chat/completions', models: [m]}\n"
    )
    (message,) = problems(text)
    assert message.endswith("write it without /chat/completions: https://api.openai.com/v1")


def test_an_openai_base_url_without_a_version_is_valid_with_a_warning_at_its_line():
    policy = load(
        "providers:\n  - name: d\n    api: openai\n    base_url: https://llm.example.com\n    models: [gpt-4o]\n"
    )
    (warning,) = policy.warnings
    assert str(warning).startswith("gw.yaml:4:15: warning: providers[0].base_url: OpenAI-format requests go to ")
    assert "https://llm.example.com/chat/completions" in str(warning)


def test_warnings_do_not_change_what_the_policy_means():
    with_warning = load("providers:\n  - {name: d, api: openai, base_url: 'http://h', models: [m]}\n")
    without = load("providers:\n  - {name: d, api: openai, base_url: 'http://h', models: [m]}\n")
    assert with_warning.warnings and with_warning == without


def test_an_invalid_policy_still_carries_its_warnings_apart_from_its_problems():
    text = (
        "providers:\n  - {name: d, api: openai, base_url: 'http://h', models: [gpt-4o]}\n"
        "  - {name: e, api: openia, base_url: 'http://h/v1', models: [gpt-4.1]}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load(text)
    assert [p.path for p in caught.value.problems] == ["providers[1].api"]
    assert [w.path for w in caught.value.warnings] == ["providers[0].base_url"]
    assert "warning" not in str(caught.value)


# --- unset API key variables ---------------------------------------------------------------------


def test_unset_and_empty_key_variables_are_warnings_and_values_are_never_shown():
    policy = load(
        """\
        providers:
          - {name: a, api: anthropic, base_url: 'https://a.example', api_key_env: KEY_A, models: [ma]}
          - {name: b, api: anthropic, base_url: 'https://b.example', api_key_env: KEY_B, models: [mb]}
          - {name: c, api: anthropic, base_url: 'https://c.example', api_key_env: KEY_C, models: [mc]}
          - {name: d, api: anthropic, base_url: 'https://d.example', models: [md]}
        """
    )
    warnings = unset_key_warnings(policy, {"KEY_A": "sk-secret", "KEY_B": ""})
    assert [str(w) for w in warnings] == [
        "gw.yaml: warning: providers[1].api_key_env: KEY_B is not set in this environment: requests to "
        "provider 'b' will be answered 503 until the gateway runs with it",
        "gw.yaml: warning: providers[2].api_key_env: KEY_C is not set in this environment: requests to "
        "provider 'c' will be answered 503 until the gateway runs with it",
    ]
    assert all(w.warning for w in warnings)
    assert unset_key_warnings(policy, {"KEY_A": "x", "KEY_B": "y", "KEY_C": "z"}) == []


# --- no cascades ---------------------------------------------------------------------------------


def test_a_provider_with_a_problem_is_not_also_unknown_where_it_is_used():
    text = PROVIDER.replace("[claude-sonnet-4-5]", "[{name: claude-sonnet-4-5, capabilities: [visio]}]") + (
        "aliases:\n  sonnet: fake-anthropic,claude-sonnet-4-5\n"
        "router:\n  default: sonnet\n  background: fake-anthropic,claude-sonnet-4-5\n"
        "fallback:\n  fake-anthropic,claude-sonnet-4-5: ['nope,x']\n"
    )
    found = problems(text)
    assert len(found) == 2, found
    assert "unknown capability 'visio'" in found[0]
    assert found[1].startswith("12:38: fallback.fake-anthropic,claude-sonnet-4-5[0]: unknown provider 'nope'")


def test_an_alias_with_a_problem_is_not_also_unknown_where_it_is_used():
    text = PROVIDER + (
        "aliases:\n  sonnet: fake-anthropic,no-such-model\n"
        "router:\n  default: sonnet\n"
        "tenants:\n  - {name: t, api_key_sha256: ['" + "a" * 64 + "'], router: {default: sonnet}}\n"
    )
    assert problems(text) == ["7:11: aliases.sonnet: provider 'fake-anthropic' has no model 'no-such-model'"]


def test_an_alias_shadowing_a_model_is_reported_once():
    text = (
        PROVIDER
        + "aliases:\n  claude-sonnet-4-5: fake-anthropic,claude-sonnet-4-5\nrouter:\n  default: claude-sonnet-4-5\n"
    )
    found = problems(text)
    assert found == [
        "7:3: aliases.claude-sonnet-4-5: 'claude-sonnet-4-5' is already a model name; an alias must not shadow it"
    ]


def test_an_alias_pointing_at_another_alias_says_so():
    text = PROVIDER + "aliases:\n  sonnet: fake-anthropic,claude-sonnet-4-5\n  best: sonnet\nrouter:\n  default: best\n"
    assert problems(text) == ["8:9: aliases.best: 'sonnet' is an alias; an alias names 'provider,model' itself"]


def test_a_provider_with_an_invalid_name_is_not_also_unknown():
    text = (
        PROVIDER.replace("name: fake-anthropic", "name: Fake_Anthropic")
        + "router:\n  default: Fake_Anthropic,claude-sonnet-4-5\n"
    )
    (only,) = problems(text)
    assert "providers[0].name" in only


def test_a_misspelt_provider_or_alias_gets_a_suggestion():
    text = (
        PROVIDER
        + "aliases:\n  sonnet: fake-anthropic,claude-sonnet-4-5\nrouter:\n  default: sonet\n  think: fake-antropic,claude-sonnet-4-5\n"
    )
    default, think = problems(text)
    assert default.endswith("(did you mean alias 'sonnet'?)")
    assert think.endswith(
        "unknown provider 'fake-antropic' in 'fake-antropic,claude-sonnet-4-5' (did you mean 'fake-anthropic'?)"
    )


def test_the_readmes_policy_and_routing_examples_report_only_real_problems():
    """README's routing snippet names providers its policy snippet does not define (openai, gemini):
    those are reported, but its own alias `sonnet` never is."""
    readme = README.read_text()
    blocks = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:]]
    policy = next(b for b in blocks if "max_request_bytes" in b)
    routing = next(b for b in blocks if "aliases:" in b).replace("limits:", "# limits:")
    found = problems(policy + routing)
    assert not any("'sonnet'" in p for p in found), found
    assert not any("unknown provider 'anthropic'" in p for p in found), found


# --- YAML syntax in plain words -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (
            "providers:\n  - name: a\n    api: x\n   base_url: y\n",
            (4, 4),
            "wrong indentation: column 4 lines up with nothing",
        ),
        (
            "providers:\n  - name: a\n  api: x\n",
            (3, 3),
            "wrong indentation: a 'key: value' line in line with the '- ' entries",
        ),
        (
            "limits:\n  a: 1\n  - b\n",
            (3, 3),
            "wrong indentation: a list entry ('- ') among the keys of the mapping that starts at line 2",
        ),
        ("providers:\n  - name: a\n    api: x\n      base_url: y\n", (4, 15), "a ':' where no key can start"),
        ("providers:\n\t- name: a\n", (2, 1), "a tab character: YAML indents with spaces only"),
        ("providers: [a, b\nx: 1\n", (1, 12), "the '[' here is not closed with ']'"),
        ("listener: {port: 1\nx: 1\n", (1, 11), "the '{' here is not closed with '}'"),
        ('x: "abc\n', (1, 4), "this quoted string is never closed"),
        ("providers:\n  - name: a\n    api anthropic\n    base_url: x\n", (3, 5), "a key without ':' after it"),
        ("x: *foo\n", (1, 4), "'*foo' refers to no anchor '&foo'"),
        ("x: @foo\n", (1, 4), "a value cannot start with '@': quote it"),
        ('x: "\\q"\n', (1, 6), "'\\q' is not an escape double quotes allow"),
        ("a: 1\n---\nb: 2\n", (2, 1), "a second YAML document"),
        ("a: [1, 2]]\n", (1, 10), "a ']' that closes nothing"),
        ("a:\n  - [x,\n", (3, 1), "the file ends inside a '[' or '{' that is never closed"),
        ("a: !!python/object x\n", (1, 4), "the tag '!!python/object' is not allowed"),
    ],
)
def test_yaml_syntax_errors_are_in_plain_words_at_line_and_column(text, where, words):
    (only,) = problems(text)
    line, column = where
    assert only.startswith(f"{line}:{column}: invalid YAML: {words}"), only


def test_a_control_character_is_named():
    (only,) = problems("a: ok\nb: \x07\n")
    assert only == "2:4: invalid YAML: the character '\\x07' is not allowed in YAML (a control character)"


def test_an_unknown_yaml_error_keeps_pyyaml_words():
    error = yaml.MarkedYAMLError(problem="something odd", problem_mark=None)
    assert describe(error) == (0, 0, "something odd")
