"""The command line a user meets first: help, validate, and what `up` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccr_gateway.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for command in ("up", "control-plane", "extproc", "fake-provider", "validate", "status", "doctor"):
        assert command in out


def test_validate_accepts_the_example_policy():
    result = run("validate", "-c", "examples/gateway.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_reports_problems_with_line_numbers(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - name: a\n    api: openia\n    base_url: http://x\n    models: [m]\n")
    result = run("validate", "-c", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3:10: providers[0].api: must be one of anthropic, openai, gemini, responses, vertex, bedrock (got 'openia')" in result.stderr


def test_up_refuses_an_invalid_policy_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: []\n")
    result = run("up", "-c", str(bad))
    assert result.returncode == 2
    assert "at least one provider is required" in result.stderr


def test_up_says_which_port_is_taken_before_starting_anything(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"listener: {{port: {port}}}\nproviders:\n  - {{name: a, api: openai, base_url: 'http://127.0.0.1:1/v1', models: [m]}}\n"
        )
        result = run("up", "-c", str(policy))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use: it is the policy's listener" in result.stderr


def test_version_names_the_package_envoy_and_python():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    own, envoy, python = result.stdout.splitlines()
    assert own.startswith("ccr-gateway 0.")
    assert envoy.startswith("Envoy 1.") or envoy.startswith("Envoy: not found")
    assert python.startswith(f"Python {sys.version_info.major}.{sys.version_info.minor}.")


def test_validate_prints_warnings_with_their_lines_and_still_succeeds(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "providers:\n"
        "  - {name: a, api: openai, base_url: 'http://127.0.0.1:1', api_key_env: CCR_TEST_UNSET_KEY, models: [gpt-4o]}\n"
    )
    result = run("validate", "-c", str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{policy}: valid (1 providers, 1 models)\n"
    first, second = result.stderr.splitlines()
    assert first.startswith(f"{policy}:2:38: warning: providers[0].base_url: OpenAI-format requests go to")
    assert second.startswith(f"{policy}: warning: providers[0].api_key_env: CCR_TEST_UNSET_KEY is not set")


def test_validate_reports_a_duplicate_section_and_yaml_syntax_in_plain_words(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("limits: {max_request_bytes: 2048}\nproviders: []\nlimits: {attempt_timeout_seconds: 3}\n")
    assert f"{policy}:3:1: limits: defined twice, at lines 1 and 3" in run("validate", "-c", str(policy)).stderr
    policy.write_text("providers:\n  - name: a\n   api: x\n")
    result = run("validate", "-c", str(policy))
    assert result.returncode == 2
    assert f"{policy}:3:4: invalid YAML: wrong indentation" in result.stderr


def test_control_plane_offers_a_status_file():
    assert "--status-file" in run("control-plane", "--help").stdout


def test_status_with_no_gateway_says_so_and_exits_3(tmp_path):
    env = {**os.environ, "CCR_GATEWAY_STATE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "ccr_gateway.cli", "status"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert (result.returncode, result.stdout) == (3, "no gateway running\n")
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 3
    assert json.loads(result.stdout) == {"gateways": [], "stale": [], "unreadable": []}


def test_bench_from_a_missing_json_file_is_one_line_and_exit_2(tmp_path):
    result = run("bench", "--from-json", str(tmp_path / "missing.json"))
    assert result.returncode == 2
    assert result.stderr == f"bench: cannot read {tmp_path / 'missing.json'}: No such file or directory\n"
    (tmp_path / "bad.json").write_text("{not json")
    result = run("bench", "--from-json", str(tmp_path / "bad.json"))
    assert result.returncode == 2 and result.stderr.startswith(f"bench: {tmp_path / 'bad.json'} is not JSON:")
