"""`ccr-gateway route --mcp`: which MCP tools a key or tenant can use, on the policy's live servers."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ccr_gateway import explain_mcp
from ccr_gateway.cli import build_parser
from ccr_gateway.explain_mcp import Caller, Judge, print_text
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from extproc.mcp.access import Grant
from extproc.mcp.settings import McpSettings

SECRET = "s3cret-value-never-printed"
PROVIDERS = """\
providers:
  - name: fake
    api: anthropic
    base_url: http://127.0.0.1:9100
    models: [claude-sonnet-4-5]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_policy(tmp_path: Path, mcp: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(PROVIDERS + textwrap.dedent(mcp))
    return path


def route_mcp(*argv: str):
    return build_parser("route").parse_args(["route", "--mcp", *argv])


def settings(tenant: Grant | None, key: Grant | None = None) -> McpSettings:
    return McpSettings(
        tenant_grants={"acme": tenant} if tenant else {},
        key_grants={"abcdefgh": key} if key else {},
    )


# -- the rule beside each verdict ------------------------------------------------------------------


def test_a_key_narrows_its_tenant_and_the_rule_names_both_levels() -> None:
    judge = Judge(
        settings(Grant(allow=("github",)), Grant(allow=("github/search_*",))), Caller("acme", "abcdefgh", "--tenant")
    )
    assert judge.tool("github", "search_issues") == (
        True,
        "tenant acme: allow github; key abcdefgh: allow github/search_*",
    )
    assert judge.tool("github", "create_issue") == (False, "key abcdefgh: no allow pattern matches github/create_issue")
    assert judge.server_wide("github") == (False, "key abcdefgh: no server pattern allows github")


def test_deny_wins_and_is_named() -> None:
    judge = Judge(settings(Grant(allow=("github",), deny=("github/delete_*",))), Caller("acme", None, "--tenant"))
    assert judge.tool("github", "delete_repo") == (False, "tenant acme: deny github/delete_*")
    assert judge.tool("github", "search") == (True, "tenant acme: allow github")
    assert judge.server_wide("github") == (True, "tenant acme: allow github")


def test_a_key_without_allow_inherits_and_can_still_deny() -> None:
    judge = Judge(settings(Grant(allow=("*",)), Grant(allow=None, deny=("files",))), Caller("acme", "abcdefgh", "x"))
    assert judge.tool("github", "search") == (True, "tenant acme: allow *; key abcdefgh: inherits")
    assert judge.tool("files", "read") == (False, "key abcdefgh: deny files")


def test_a_tenant_without_a_grant_gets_nothing() -> None:
    judge = Judge(settings(None), Caller("other", "abcdefgh", "--tenant"))
    assert judge.tool("github", "search") == (False, "tenant other has no mcp grant")
    assert judge.server_wide("github") == (False, "tenant other has no mcp grant")


PATTERNS = ("github", "git*", "files", "github/search_*", "*/read", "github/*")
SUBJECTS = [("github", "search_x"), ("github", "read"), ("files", "read"), ("files", "write")]


@pytest.mark.parametrize(
    ("allow", "deny", "key_allow"),
    list(itertools.product([(p,) for p in PATTERNS], [(), ("github/search_*",), ("files",)], [None, ("*/read",)])),
)
def test_the_rule_shown_always_agrees_with_the_gateways_predicates(allow, deny, key_allow) -> None:
    grants = settings(Grant(allow=allow, deny=deny), Grant(allow=key_allow) if key_allow else None)
    judge = Judge(grants, Caller("acme", "abcdefgh", "x"))
    access = grants.access("acme", "abcdefgh")
    for server, tool in SUBJECTS:
        allowed, rule = judge.tool(server, tool)
        assert allowed == access.may_use_tool(server, tool)
        # The rule is read from the same patterns: a refusal names a deny or a missing allow.
        assert ("deny" in rule or "no allow" in rule) != allowed
        wide, rule = judge.server_wide(server)
        assert wide == access.may_use_server_wide(server)
        assert ("deny" in rule or "no server pattern" in rule) != wide


def test_reasons_are_scrubbed_of_expanded_values() -> None:
    assert (
        explain_mcp._scrub(f"401 for url https://x/?token={SECRET}", [SECRET, "on"])
        == "401 for url https://x/?token=***"
    )


# -- against live servers --------------------------------------------------------------------------


def test_a_policy_with_the_example_server_shows_allowed_and_denied_tools(tmp_path, monkeypatch, capsys, caplog) -> None:
    monkeypatch.setenv("EXPLAIN_TEST_TOKEN", SECRET)
    monkeypatch.delenv("EXPLAIN_UNSET_VAR", raising=False)
    port = free_port()
    policy = write_policy(
        tmp_path,
        f"""\
        mcp:
          servers:
            - name: example
              command: [{sys.executable}, -m, fake_provider.mcp_servers, stdio, --tools, "2"]
              env: {{EXAMPLE_TOKEN: "${{EXPLAIN_TEST_TOKEN}}"}}
            - name: web
              url: http://127.0.0.1:{port}/mcp
              headers: {{Authorization: "Bearer ${{EXPLAIN_TEST_TOKEN}}"}}
              timeout: 5s
            - name: later
              command: [{sys.executable}, -m, fake_provider.mcp_servers, stdio]
              env: {{API_TOKEN: "${{EXPLAIN_UNSET_VAR}}"}}
            - name: noisy
              command: [/bin/echo, not-json-rpc]
          grants:
            - tenant: acme
              allow: [example, "web/*", later]
              deny: ["example/add"]
            - key: abcdefgh
              allow: [example, "web/*"]
        """,
    )
    args = route_mcp("-c", str(policy), "--tenant", "acme", "--key", "abcdefgh", "--json", "--timeout", "20")
    assert args.func(args) == 1  # three servers could not be listed
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert not [r for r in caplog.records if r.name.startswith("mcp")]  # no SDK traceback, no server output
    result = json.loads(out)
    assert set(result) == {"tenant", "key", "tenant_from", "notes", "servers", "allowed_tools"}
    assert (result["tenant"], result["key"], result["tenant_from"]) == ("acme", "abcdefgh", "--tenant")
    example, web, later, noisy = result["servers"]
    assert set(example) == {"name", "transport", "target", "status", "reason", "prompts_and_resources", "tools"}
    assert (example["status"], example["transport"], example["reason"]) == ("ok", "stdio", None)
    assert {t["name"]: t["allowed"] for t in example["tools"]} == {
        "echo": True,
        "add": False,
        "slow": True,
        "whoami": True,
        "tool_000": True,
        "tool_001": True,
    }
    add = next(t for t in example["tools"] if t["name"] == "add")
    assert add == {
        "name": "add",
        "exposed_as": "example__add",
        "allowed": False,
        "rule": "tenant acme: deny example/add",
    }
    assert example["prompts_and_resources"] == {
        "allowed": True,
        "rule": "tenant acme: allow example; key abcdefgh: allow example",
    }
    assert web["status"] == "unreachable" and web["tools"] == [] and web["reason"]
    assert web["prompts_and_resources"]["allowed"] is False  # web/* names tools, not the server
    assert later["status"] == "skipped" and "EXPLAIN_UNSET_VAR is not set" in later["reason"]
    assert later["prompts_and_resources"] == {"allowed": False, "rule": "key abcdefgh: no server pattern allows later"}
    assert noisy["status"] == "unreachable" and "closed the connection" in noisy["reason"]
    assert result["allowed_tools"] == [f"example__{n}" for n in ("echo", "slow", "whoami", "tool_000", "tool_001")]

    print_text(result)
    text = capsys.readouterr().out
    assert "server example (stdio: " in text
    assert "  denied   add       tenant acme: deny example/add" in text
    assert "  allowed  echo      tenant acme: allow example; key abcdefgh: allow example" in text
    assert f"server web (http: http://127.0.0.1:{port}/mcp)\n  unreachable: " in text
    assert "  skipped: not contacted: env API_TOKEN: environment variable EXPLAIN_UNSET_VAR is not set" in text
    assert "summary:   5 of 6 tools allowed on 1 server(s); 3 not listed" in text


def test_a_keys_tenant_comes_from_the_key_store(tmp_path, capsys) -> None:
    store_path = tmp_path / "keys.db"

    async def add_key() -> str:
        store = SqliteKeyStore(store_path)
        _, record = new_key("acme", "ci", time.time())
        await store.create(record)
        await store.close()
        return record.key_id

    key_id = asyncio.run(add_key())
    policy = write_policy(
        tmp_path,
        """\
        mcp:
          servers:
            - name: web
              url: http://127.0.0.1:9/mcp
          grants:
            - tenant: acme
              allow: [web]
        """,
    )
    args = route_mcp("-c", str(policy), "--key", key_id, "--sqlite", str(store_path))
    assert explain_mcp.resolve_caller(args, explain_mcp.load_policy_file(str(policy))) == Caller(
        "acme", key_id, "key store"
    )

    missing = route_mcp("-c", str(policy), "--key", "abcdefgh", "--sqlite", str(tmp_path / "none.db"))
    assert missing.func(missing) == 2
    assert "give --tenant" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # looking does not create a store


def test_a_policy_without_mcp_is_refused(tmp_path, capsys) -> None:
    policy = tmp_path / "gw.yaml"
    policy.write_text(PROVIDERS)
    args = route_mcp("-c", str(policy), "--tenant", "acme")
    assert args.func(args) == 2
    assert "no mcp: section" in capsys.readouterr().err
