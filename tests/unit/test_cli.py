"""The command line a user meets first: help, validate, and what `up` prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccr_gateway.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for command in ("up", "control-plane", "extproc", "fake-provider", "validate"):
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
    assert f"{bad}:3:10: providers[0].api: must be one of anthropic, openai, gemini (got 'openia')" in result.stderr


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
