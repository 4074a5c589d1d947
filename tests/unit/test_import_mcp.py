"""`ccr-gateway import-mcp`: Claude Code's .mcp.json -> the policy's mcp: section, never a secret."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from ccr_gateway import import_mcp
from control_plane.policy import load_policy
from control_plane.policy.mcp import SERVER_NAME_RE

GITHUB_PAT = "ghp_0123456789abcdefghijklmnopqrstuvwxyz"
DB_PASSWORD = "correct-horse-battery-staple"
CLI_TOKEN = "s3cr3t-cli-value"
SECRETS = (GITHUB_PAT, DB_PASSWORD, CLI_TOKEN)

MCP_JSON = {
    "mcpServers": {
        "github": {
            "type": "http",
            "url": "https://api.githubcopilot.com/mcp/",
            "headers": {"Authorization": f"Bearer {GITHUB_PAT}", "X-MCP-Toolsets": "repos,issues"},
        },
        "my files": {
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv", "--token", CLI_TOKEN],
            "env": {"LOG_LEVEL": "info", "DB_PASSWORD": DB_PASSWORD, "DEBUG": "${DEBUG:-false}"},
        },
        "sentry": {"type": "http", "url": "https://mcp.sentry.dev/mcp", "headers": {"X-Api-Key": "${SENTRY_KEY}"}},
        "linear": {"type": "sse", "url": "https://mcp.linear.app/sse", "headers": {"Mcp-Session-Id": "x"}},
    }
}


def imported(data=MCP_JSON):
    return import_mcp.import_text(json.dumps(data), ".mcp.json")


def section(rendered: str) -> dict:
    return yaml.safe_load(rendered)["mcp"]


def test_stdio_and_http_servers_become_the_mcp_section_with_references():
    rendered, _ = imported()
    servers = {s["name"]: s for s in section(rendered)["servers"]}
    assert list(servers) == ["github", "my-files", "sentry", "linear"]
    assert servers["github"] == {
        "name": "github",
        "url": "https://api.githubcopilot.com/mcp/",
        "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}", "X-MCP-Toolsets": "repos,issues"},
    }
    assert servers["my-files"]["command"] == [
        "npx",
        "-y",
        "@modelcontextprotocol/server-filesystem",
        "/srv",
        "--token",
        "${MY_FILES_TOKEN}",
    ]
    assert servers["my-files"]["env"] == {
        "LOG_LEVEL": "info",
        "DB_PASSWORD": "${MY_FILES_DB_PASSWORD}",
        "DEBUG": "${DEBUG}",
    }
    assert servers["sentry"]["headers"] == {"X-Api-Key": "${SENTRY_KEY}"}
    assert "headers" not in servers["linear"]


def test_no_secret_reaches_the_output_or_the_messages():
    rendered, result = imported()
    told = "\n".join(import_mcp.messages(result))
    for secret in SECRETS:
        assert secret not in rendered and secret not in told


def test_the_warning_lists_what_to_export_and_where_it_was():
    _, result = imported()
    lines = import_mcp.messages(result)
    assert lines[0].startswith("warning: literal credentials were replaced by ${VAR} references")
    assert "  GITHUB_TOKEN  (the value written at mcpServers.github.headers.Authorization)" in lines
    assert "  MY_FILES_DB_PASSWORD  (the value written at mcpServers.my files.env.DB_PASSWORD)" in lines
    assert "  MY_FILES_TOKEN  (the value written at mcpServers.my files.args[4])" in lines
    assert "the gateway also needs these variables set (referenced in the file): DEBUG, SENTRY_KEY" in lines
    notes = "\n".join(lines)
    assert "named 'my-files'" in notes and "lost its default" in notes
    assert "HTTP+SSE transport" in notes and "Mcp-Session-Id: set by the gateway itself; dropped" in notes


def test_the_section_validates_with_the_gateways_own_validator():
    rendered, _ = imported()
    host = "providers:\n  - {name: p, api: anthropic, base_url: 'http://127.0.0.1:9', models: [m]}\n"
    policy = load_policy(host + rendered)
    assert policy.mcp is not None and [s.name for s in policy.mcp.servers] == ["github", "my-files", "sentry", "linear"]
    assert "# grants:" in rendered  # a grant is the user's decision: shown, commented out


@pytest.mark.parametrize(
    ("name", "expected"),
    [("github", "github"), ("my files", "my-files"), ("a__b", "a_b"), ("x.y/z", "x-y-z"), ("--", "server")],
)
def test_names_are_normalised_to_the_cores_rule(name, expected):
    assert import_mcp.normalise_name(name) == expected
    assert SERVER_NAME_RE.fullmatch(import_mcp.normalise_name(name))


def test_two_names_that_normalise_alike_stay_apart():
    rendered, _ = imported({"mcpServers": {"a b": {"command": "x"}, "a-b": {"command": "y"}}})
    assert [s["name"] for s in section(rendered)["servers"]] == ["a-b", "a-b-2"]


def test_a_secret_in_the_query_becomes_a_reference():
    data = {"mcpServers": {"s": {"type": "http", "url": "https://a.example/mcp?api_key=abcdef&region=eu"}}}
    rendered, result = imported(data)
    assert section(rendered)["servers"][0]["url"] == "https://a.example/mcp?api_key=${S_API_KEY}&region=eu"
    assert "abcdef" not in rendered and "S_API_KEY" in result.exports


def test_a_server_the_policy_refuses_is_skipped_with_a_note_and_its_variables_forgotten():
    data = {
        "mcpServers": {
            "ok": {"command": "x"},
            "bad": {"type": "http", "url": "https://user:pw@a.example/mcp", "headers": {"X-Api-Key": "zzz"}},
        }
    }
    rendered, result = imported(data)
    assert [s["name"] for s in section(rendered)["servers"]] == ["ok"]
    assert any("mcpServers.bad: skipped: url: must not carry credentials" in n for n in result.notes)
    assert "BAD_X_API_KEY" not in result.exports and "zzz" not in rendered


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"servers": {}}', 'no "mcpServers" object'),
        ('{"mcpServers": {"a": {"type": "ws"}}}', "no server"),
    ],
)
def test_an_unusable_file_is_an_error(text, message):
    with pytest.raises(import_mcp.ImportError_, match=message):
        import_mcp.import_text(text, ".mcp.json")


def test_the_command_prints_the_section_and_warns_on_stderr(tmp_path, capsys):
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps(MCP_JSON))
    assert import_mcp.run(argparse.Namespace(path=str(path), output=None, force=False)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# Imported from") and "mcp:\n  servers:" in out
    assert "export these for the gateway" in err
    for secret in SECRETS:
        assert secret not in out and secret not in err


def test_the_command_writes_a_file_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps(MCP_JSON))
    output = tmp_path / "mcp.yaml"
    args = argparse.Namespace(path=str(path), output=str(output), force=False)
    assert import_mcp.run(args) == 0 and "mcp:" in output.read_text()
    assert import_mcp.run(args) == 2
    assert "exists; use --force" in capsys.readouterr().err


def test_the_command_is_registered():
    from ccr_gateway.cli import PLUGIN_COMMANDS

    assert PLUGIN_COMMANDS["import-mcp"][1:] == ("ccr_gateway.import_mcp", "run")
