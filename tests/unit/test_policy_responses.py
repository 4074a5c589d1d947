"""The policy's ``responses:`` section (control_plane.policy.responses) on its way to the workers'
routing table (extproc.routing_table.ResponsesSettings)."""

from __future__ import annotations

import pytest

from control_plane.policy import PolicyError, load_policy
from extproc.routing_table import ResponsesSettings, compile_policy

PROVIDERS = """
providers:
  - {name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", api_key_env: ANT_KEY, models: [claude-sonnet-4-5]}
"""


def settings(text: str) -> ResponsesSettings:
    return compile_policy(load_policy(PROVIDERS + text).to_proto("1"), environ={"ANT_KEY": "k"}).responses


def test_responses_are_stored_for_30_days_unless_the_policy_says_otherwise() -> None:
    assert settings("") == ResponsesSettings(True, 30 * 86_400)
    assert settings("responses: {}\n") == ResponsesSettings(True, 30 * 86_400)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("responses: {store: false}\n", ResponsesSettings(False, 30 * 86_400)),
        ("responses: {retention: 12h}\n", ResponsesSettings(True, 12 * 3600)),
        ("responses: {retention: 2 weeks}\n", ResponsesSettings(True, 14 * 86_400)),
        ("responses: {store: true, retention: 90d}\n", ResponsesSettings(True, 90 * 86_400)),
    ],
)
def test_the_responses_section(text: str, expected: ResponsesSettings) -> None:
    assert settings(text) == expected


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("responses: {store: maybe}\n", "responses.store", "true or false"),
        ("responses: {retention: 0d}\n", "responses.retention", "a period like '30d'"),
        ("responses: {retention: forever}\n", "responses.retention", "a period like '30d'"),
        ("responses: {retention: 4000d}\n", "responses.retention", "at most 3650 days"),
        ("responses: {keep: true}\n", "responses.keep", "unknown field"),
    ],
)
def test_a_bad_responses_section_is_refused_at_its_line(text: str, path: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(PROVIDERS + text)
    problem = caught.value.problems[0]
    assert problem.line == PROVIDERS.count("\n") + 1
    assert problem.path.startswith(path) and words in problem.message
