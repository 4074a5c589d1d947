"""views_policy: validation problems at their line, diffs, check-and-set and the rejected policy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.admin import views_policy
from control_plane.admin.errors import AdminError
from control_plane.policy import PolicyError, load_policy

EXAMPLE = (Path(__file__).resolve().parents[3] / "examples" / "gateway.yaml").read_text()


def test_a_valid_policy_validates_with_its_summary() -> None:
    result = views_policy.validate(EXAMPLE, "gateway.yaml")
    assert result["valid"] is True and result["errors"] == []
    assert result["summary"] == "valid (2 providers, 3 models)"


def test_problems_come_with_line_column_path_and_message_as_the_cli_prints_them() -> None:
    text = "providers:\n  - name: a\n    api: anthropic\n    base_url: nope\n    models: [m]\n"
    result = views_policy.validate(text, "p.yaml")
    assert result["valid"] is False and result["summary"] == "invalid: 1 problem"
    assert result["errors"] == [
        {
            "line": 4,
            "column": 15,
            "path": "providers[0].base_url",
            "message": "'nope' must be an http:// or https:// URL with a host",
        }
    ]
    with pytest.raises(PolicyError) as raised:  # the same problem `ccr-gateway validate` prints
        load_policy(text, "p.yaml")
    assert str(raised.value) == "p.yaml:4:15: providers[0].base_url: " + result["errors"][0]["message"]


def test_broken_yaml_is_one_problem_at_its_position() -> None:
    result = views_policy.validate("providers: [\n", "p.yaml")
    assert result["errors"][0]["line"] == 2 and "never closed" in result["errors"][0]["message"]
    empty = views_policy.validate("", "p.yaml")
    assert empty["valid"] is False and empty["errors"][0]["line"] == 1


@given(st.text(max_size=200))
def test_validation_never_raises_on_any_text(text: str) -> None:
    result = views_policy.validate(text, "p.yaml")
    assert isinstance(result["valid"], bool)
    assert all(set(problem) == {"line", "column", "path", "message"} for problem in result["errors"])


def test_the_yaml_and_expected_version_are_required_and_bounded() -> None:
    with pytest.raises(AdminError) as raised:
        views_policy.yaml_of({})
    assert raised.value.status == 400 and raised.value.details == [{"path": "yaml", "message": "required"}]
    with pytest.raises(AdminError) as raised:
        views_policy.yaml_of({"yaml": "x" * (views_policy.MAX_POLICY_BYTES + 1)})
    assert raised.value.status == 413 and raised.value.code == "too_large"
    with pytest.raises(AdminError) as raised:
        views_policy.expected_version_of({"expected_version": ""})
    assert raised.value.status == 400
    assert views_policy.expected_version_of({"expected_version": "7"}) == "7"


def test_an_invalid_push_is_a_400_with_its_problems_as_details() -> None:
    result = views_policy.validate("providers: []\n", "p.yaml")
    error = views_policy.invalid_policy(result)
    assert error.status == 400 and error.details == result["errors"] and "nothing written" in error.message


def test_check_and_set_is_a_409_when_the_version_moved() -> None:
    views_policy.check_version("abc", "abc")
    with pytest.raises(AdminError) as raised:
        views_policy.check_version("def", "abc")
    assert raised.value.status == 409 and raised.value.code == "conflict"


def test_a_file_version_is_the_sha256_of_its_bytes() -> None:
    assert views_policy.file_version(b"x") == hashlib.sha256(b"x").hexdigest()


def test_the_diff_is_unified_and_says_a_missing_final_newline() -> None:
    diff = views_policy.unified_diff("a: 1\nb: 2\n", "a: 1\nb: 3", "file:/p.yaml")
    assert diff.startswith("--- file:/p.yaml\n+++ proposed\n")
    assert "-b: 2\n+b: 3\n\\ No newline at end of file\n" in diff
    assert views_policy.unified_diff("same\n", "same\n", "x") == ""


def test_the_rejected_policy_comes_from_the_status_file() -> None:
    assert views_policy.rejected_body(None, "file:/p") == {"rejected": None}
    assert views_policy.rejected_body({"last_rejected": None}, "file:/p") == {"rejected": None}
    status = {
        "version": "3",
        "source": "/etc/p.yaml",
        "accepted_at": "2026-12-05T10:00:00+00:00",
        "last_rejected": {"at": "2026-12-05T11:00:00+00:00", "message": "p.yaml:1:1: bad"},
    }
    assert views_policy.rejected_body(status, "file:/p") == {
        "rejected": {
            "at": "2026-12-05T11:00:00+00:00",
            "source": "/etc/p.yaml",
            "error": "p.yaml:1:1: bad",
            "pending": True,
        }
    }
    replaced = {**status, "accepted_at": "2026-12-05T12:00:00+00:00"}
    replaced["last_rejected"] = {**status["last_rejected"], "source": "consul:ccr/"}
    answer = views_policy.rejected_body(replaced, "file:/p")["rejected"]
    assert answer["pending"] is False and answer["source"] == "consul:ccr/"
