"""The policy's mcp: section: validation with lines, the proto, and ext_proc's compiled settings."""

from __future__ import annotations

import textwrap

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import PolicyError, load_policy
from control_plane.policy import mcp as policy_mcp
from extproc.mcp import catalog
from extproc.mcp.access import Grant
from extproc.routing_table import PolicyCompileError, compile_policy, mcp_settings

PROVIDERS = """\
providers:
  - name: fake
    api: anthropic
    base_url: http://127.0.0.1:9100
    models: [claude-sonnet-4-5]
"""

FULL = """\
mcp:
  path: /tools/mcp
  session_ttl: 30m
  decision_reuse: 5s
  servers:
    - name: github
      url: https://api.githubcopilot.com/mcp/
      headers: {Authorization: "Bearer ${GITHUB_TOKEN}", X-Team: core}
      timeout: 90s
    - name: files
      command: [npx, -y, "@modelcontextprotocol/server-filesystem", /srv]
      env: {LOG_LEVEL: info, API_TOKEN: "${FILES_TOKEN}"}
  grants:
    - tenant: acme
      allow: [github, "files/read_*"]
      deny: ["github/delete_*"]
      calls_per_minute: 120
    - key: abcdefgh
      allow: ["github/search_*"]
      calls_per_minute: 10
    - key: bcdefghi
      deny: [files]
"""


def load(section: str, prefix: str = PROVIDERS):
    return load_policy(prefix + textwrap.dedent(section), source="gw.yaml")


def problems(section: str, prefix: str = PROVIDERS) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load(section, prefix)
    return [str(p) for p in info.value.problems]


def one_problem(section: str) -> str:
    found = problems(section)
    assert len(found) == 1, found
    return found[0]


def server_section(server: str, grants: str = "  grants: []\n") -> str:
    body = textwrap.indent(textwrap.dedent(server).rstrip("\n") + "\n", "    ")
    return "mcp:\n  servers:\n" + body + grants


# --- the valid shape -----------------------------------------------------------------------------


def test_the_full_section_loads_as_written():
    spec = load(FULL).mcp
    assert spec is not None
    assert (spec.path, spec.session_ttl_s, spec.decision_reuse_s) == ("/tools/mcp", 1800.0, 5)
    github, files = spec.servers
    assert (github.name, github.transport, github.url, github.timeout_s) == (
        "github",
        "http",
        "https://api.githubcopilot.com/mcp/",
        90.0,
    )
    assert github.headers == (("authorization", "Bearer ${GITHUB_TOKEN}"), ("x-team", "core"))
    assert files.transport == "stdio"
    assert files.command == ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv")
    assert files.env == (("LOG_LEVEL", "info"), ("API_TOKEN", "${FILES_TOKEN}"))
    acme, narrowed, inheriting = spec.grants
    assert acme == policy_mcp.McpGrantSpec("acme", "", ("github", "files/read_*"), ("github/delete_*",), 120)
    assert narrowed.key_id == "abcdefgh" and narrowed.allow == ("github/search_*",)
    assert inheriting.allow is None and inheriting.deny == ("files",)


def test_defaults_apply_when_only_servers_are_given():
    spec = load(server_section("- {name: github, url: 'https://example.com/mcp'}")).mcp
    assert spec is not None
    assert (spec.path, spec.session_ttl_s, spec.servers[0].timeout_s) == ("/mcp", 3600.0, 60.0)
    assert spec.decision_reuse_s == policy_mcp.DEFAULT_DECISION_REUSE_S == 2


def test_decision_reuse_zero_turns_it_off():
    spec = load(server_section("- {name: a, command: [x]}").replace("mcp:\n", "mcp:\n  decision_reuse: 0s\n")).mcp
    assert spec is not None and spec.decision_reuse_s == 0


def test_a_policy_without_mcp_has_none():
    assert load("").mcp is None


def test_the_server_name_rule_is_the_cores():
    assert policy_mcp.SERVER_NAME_RE.pattern == catalog.SERVER_NAME_RE.pattern


def test_a_vault_reference_is_accepted_with_the_vault_section():
    section = server_section(
        """\
        - name: files
          command: [files-server]
          env: {API_TOKEN: "vault:secret/data/mcp/files#token"}
        """
    )
    spec = load(section, PROVIDERS + "vault: {address: 'http://127.0.0.1:8200'}\n").mcp
    assert spec is not None and spec.servers[0].env == (("API_TOKEN", "vault:secret/data/mcp/files#token"),)


# --- every problem, at its line ------------------------------------------------------------------

# The section starts at line 6 of gw.yaml (after PROVIDERS' five lines).


def test_a_duplicate_server_name_is_reported_at_the_second():
    section = server_section(
        """\
        - {name: github, url: 'https://a.example/mcp'}
        - {name: github, url: 'https://b.example/mcp'}
        """
    )
    assert one_problem(section) == "gw.yaml:9:14: mcp.servers[1].name: duplicate server 'github'"


def test_a_server_needs_exactly_one_of_url_and_command():
    both = server_section("- {name: a, url: 'https://a.example/mcp', command: [x]}")
    assert one_problem(both) == (
        "gw.yaml:8:7: mcp.servers[0]: give url (a Streamable HTTP server) or command (a stdio server), not both"
    )
    neither = server_section("- {name: a}")
    assert one_problem(neither) == (
        "gw.yaml:8:7: mcp.servers[0]: needs url (a Streamable HTTP server) or command (stdio)"
    )


@pytest.mark.parametrize("name", ["my__files", "files_", "-files", "my files", "fïles"])
def test_a_name_outside_the_cores_rule_is_refused(name):
    found = one_problem(server_section(f"- {{name: '{name}', command: [x]}}"))
    assert found.startswith("gw.yaml:8:14: mcp.servers[0].name: ") and "is not a valid server name" in found
    assert not catalog.valid_server_name(name)


def test_a_long_server_name_is_a_warning_only():
    name = "a-very-long-server-name-indeed"
    policy = load(server_section(f"- {{name: {name}, command: [x]}}"))
    assert policy.mcp is not None
    assert any("mcp__<gateway>__" in w.message and w.line == 8 for w in policy.warnings)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", "Bearer abc123"),
        ("X-Api-Key", "abc123"),
        ("X-Auth-Token", "abc"),
        ("X-Anything", "ghp_abcdefghijklmnopqrstuvwxyz0123"),
    ],
)
def test_a_literal_credential_in_headers_is_refused_without_repeating_it(header, value):
    found = one_problem(
        server_section(f"- {{name: a, url: 'https://a.example/mcp', headers: {{{header}: '{value}'}}}}")
    )
    assert found.startswith("gw.yaml:8:") and f"mcp.servers[0].headers.{header}:" in found
    assert value not in found
    assert "${VAR}" in found


def test_a_literal_credential_in_env_is_refused():
    found = one_problem(server_section("- {name: a, command: [x], env: {GITHUB_PERSONAL_ACCESS_TOKEN: abc}}"))
    assert (
        found.startswith("gw.yaml:8:") and "mcp.servers[0].env.GITHUB_PERSONAL_ACCESS_TOKEN: is a credential" in found
    )


def test_plain_settings_and_references_are_fine():
    section = server_section(
        "- {name: a, command: [x, --dir, '${HOME}/srv'], env: {LOG_LEVEL: debug, PORT: 8080, API_KEY: '${A_KEY}'}}"
    )
    spec = load(section).mcp
    assert spec is not None and spec.servers[0].env == (
        ("LOG_LEVEL", "debug"),
        ("PORT", "8080"),
        ("API_KEY", "${A_KEY}"),
    )


def test_a_token_in_the_command_line_is_refused():
    found = one_problem(server_section("- {name: a, command: [x, --key, sk-ant-abcdefghijklmnopqrstuv]}"))
    assert found.startswith("gw.yaml:8:") and "mcp.servers[0].command[2]: holds what looks like a token" in found


def test_headers_belong_to_url_servers_and_env_to_stdio_ones():
    assert "only a url server takes headers" in one_problem(
        server_section("- {name: a, command: [x], headers: {X-A: b}}")
    )
    found = one_problem(server_section("- {name: a, url: 'https://a.example/mcp', env: {A: b}}"))
    assert "only a command (stdio) server takes env" in found


@pytest.mark.parametrize("header", ["Mcp-Session-Id", "Host", "x-ccr-tenant", "Content-Type"])
def test_headers_the_transport_owns_are_refused(header):
    found = one_problem(server_section(f"- {{name: a, url: 'https://a.example/mcp', headers: {{{header}: x}}}}"))
    assert "is not a header the policy may set" in found


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://a.example/mcp", "must be an http:// or https:// URL with a host"),
        ("https://user:pw@a.example/mcp", "must not carry credentials or a fragment"),
        ("https://a.example/${TENANT}/mcp", "${VAR} references are allowed in the query only"),
        ("https://a.example/mcp?api_key=abc", "query parameter 'api_key' is a credential"),
    ],
)
def test_a_bad_url_is_reported_at_its_value(url, message):
    found = one_problem(server_section(f"- {{name: a, url: '{url}'}}"))
    assert found.startswith("gw.yaml:8:") and message in found


def test_a_reference_in_the_query_is_fine():
    spec = load(server_section("- {name: a, url: 'https://a.example/mcp?api_key=${A_KEY}'}")).mcp
    assert spec is not None


def test_a_vault_reference_needs_the_vault_section():
    found = one_problem(server_section("- {name: a, command: [x], env: {T: 'vault:secret/data/a#t'}}"))
    assert "needs the policy's top-level vault: section" in found and found.startswith("gw.yaml:8:")


def test_a_broken_reference_is_refused():
    assert "without its closing }" in one_problem(server_section("- {name: a, command: [x], env: {A: '${B'}}"))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("gihub", "no server named 'gihub' in mcp.servers (did you mean 'github'?)"),
        ("github/", "names no tool"),
        ("git[hub", "has a [ without its closing ]"),
        ("git hub", "must not hold spaces"),
        ("git.hub/*", "the server part 'git.hub' must be a server name or a glob"),
    ],
)
def test_a_bad_pattern_is_reported_at_its_line(pattern, message):
    section = server_section(
        "- {name: github, url: 'https://a.example/mcp'}\n",
        f"  grants:\n    - tenant: acme\n      allow:\n        - '{pattern}'\n",
    )
    found = one_problem(section)
    assert found.startswith("gw.yaml:12:11: mcp.grants[0].allow[0]: ") and message in found, found


def test_a_glob_matching_no_server_is_a_warning():
    section = server_section(
        "- {name: github, url: 'https://a.example/mcp'}\n",
        "  grants:\n    - {tenant: acme, allow: ['jira*']}\n",
    )
    policy = load(section)
    assert [(w.line, w.message) for w in policy.warnings] == [(10, "'jira*' matches no server in mcp.servers")]


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        ("{tenant: acme, key: abcdefgh, allow: [a]}", "mcp.grants[0]: a grant names a tenant or a key: not both"),
        ("{allow: [a]}", "mcp.grants[0]: a grant names a tenant or a key: one of them"),
        ("{key: ABC, allow: [a]}", "mcp.grants[0].key: 'ABC' is not a valid key id"),
        ("{tenant: acme}", "mcp.grants[0].allow: is required for a tenant"),
        ("{tenant: acme, allow: [a], calls_per_minute: 0}", "mcp.grants[0].calls_per_minute: must be between 1"),
        ("{tenant: acme, allow: [a], rpm: 5}", "mcp.grants[0].rpm: unknown field"),
    ],
)
def test_a_bad_grant_is_reported_at_its_line(grant, message):
    section = server_section("- {name: a, command: [x]}\n", f"  grants:\n    - {grant}\n")
    found = one_problem(section)
    assert found.startswith("gw.yaml:10:") and message in found, found


def test_a_second_grant_for_the_same_tenant_is_refused():
    section = server_section(
        "- {name: a, command: [x]}\n", "  grants:\n    - {tenant: acme, allow: [a]}\n    - {tenant: acme, allow: [a]}\n"
    )
    assert one_problem(section) == (
        "gw.yaml:11:16: mcp.grants[1].tenant: tenant 'acme' already has a grant (grants[0])"
    )


def test_no_grants_is_a_warning_that_nobody_gets_anything():
    policy = load("mcp:\n  servers:\n    - {name: a, command: [x]}\n")
    assert any("no caller can see or call any MCP tool" in w.message for w in policy.warnings)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("path: /v1/mcp", "mcp.path: '/v1/mcp' is under /v1"),
        ("path: mcp", "mcp.path: 'mcp' must be a URL path"),
        ("session_ttl: 10", "mcp.session_ttl: an integer is not a duration"),
        ("session_ttl: 5s", "mcp.session_ttl: must be between 1m and 7d"),
        ("decision_reuse: 2m", "mcp.decision_reuse: must be between 0s and 1m"),
        ("decision_reuse: 1500ms", "mcp.decision_reuse: must be whole seconds, got 1500ms"),
        ("sessions: 1h", "mcp.sessions: unknown field"),
    ],
)
def test_bad_top_level_fields_are_reported_at_their_line(field, message):
    section = f"mcp:\n  {field}\n  servers: [{{name: a, command: [x]}}]\n  grants: []\n"
    found = one_problem(section)
    assert found.startswith("gw.yaml:7:") and message in found, found


def test_servers_are_required_and_not_empty():
    assert one_problem("mcp: {grants: []}\n") == "gw.yaml:6:6: mcp.servers: is required"
    assert (
        one_problem("mcp: {servers: [], grants: []}\n") == "gw.yaml:6:16: mcp.servers: at least one server is required"
    )


def test_every_problem_is_collected_in_one_round():
    section = server_section(
        """\
        - {name: a, url: 'https://a.example/mcp', headers: {Authorization: Bearer x}}
        - {name: a__b, command: [x]}
        """,
        "  grants:\n    - {tenant: acme, allow: [nope]}\n",
    )
    assert [p.split(": ")[1] for p in problems(section)] == [
        "mcp.servers[0].headers.Authorization",
        "mcp.servers[1].name",
        "mcp.grants[0].allow[0]",
    ]


# --- the proto and ext_proc's settings -----------------------------------------------------------


def compiled(section: str = FULL):
    message = load(section).to_proto("7")
    wire = policy_pb2.Policy.FromString(message.SerializeToString())
    return compile_policy(wire, environ={}).mcp


def test_the_proto_carries_templates_never_values():
    message = load(FULL).to_proto("7")
    assert message.HasField("mcp")
    github = message.mcp.servers[0]
    assert dict(github.headers) == {"authorization": "Bearer ${GITHUB_TOKEN}", "x-team": "core"}
    assert message.mcp.servers[1].command[0] == "npx"
    assert [g.inherit_allow for g in message.mcp.grants] == [False, False, True]
    assert not load("").to_proto("7").HasField("mcp")


def test_ext_proc_compiles_the_section_into_the_cores_grants():
    settings = compiled()
    assert settings is not None
    assert (settings.path, settings.idle_ttl_s) == ("/tools/mcp", 1800.0)
    assert [s.name for s in settings.servers] == ["github", "files"]
    assert settings.server("files").is_stdio and not settings.server("github").is_stdio
    assert settings.server("github").headers == (("authorization", "Bearer ${GITHUB_TOKEN}"), ("x-team", "core"))
    assert settings.tenant_grants["acme"] == Grant(("github", "files/read_*"), ("github/delete_*",))
    assert settings.key_grants["bcdefghi"] == Grant(None, ("files",))


def test_a_key_narrows_its_tenant_and_a_stranger_gets_nothing():
    settings = compiled()
    tenant = settings.access("acme", None)
    assert tenant.may_use_tool("github", "create_issue") and tenant.may_use_tool("files", "read_file")
    assert not tenant.may_use_tool("github", "delete_repo") and not tenant.may_use_tool("files", "write_file")
    narrowed = settings.access("acme", "abcdefgh")
    assert narrowed.may_use_tool("github", "search_code") and not narrowed.may_use_tool("github", "create_issue")
    inheriting = settings.access("acme", "bcdefghi")
    assert inheriting.may_use_tool("github", "create_issue") and not inheriting.may_use_tool("files", "read_file")
    for stranger in (settings.access("other", None), settings.access(None, "abcdefgh")):
        assert not stranger.may_reach("github") and not stranger.may_use_tool("github", "search_code")


def test_calls_per_minute_is_the_keys_own_else_its_tenants():
    settings = compiled()
    assert settings.calls_per_minute("acme", "abcdefgh") == 10
    assert settings.calls_per_minute("acme", "bcdefghi") == 120
    assert settings.calls_per_minute("acme", None) == 120
    assert settings.calls_per_minute("other", None) == 0


def test_a_policy_without_mcp_compiles_to_none():
    assert compile_policy(load("").to_proto("1"), environ={}).mcp is None


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (policy_pb2.McpServer(name="a__b", command=["x"]), "not a valid MCP server name"),
        (policy_pb2.McpServer(name="a", url="https://a", command=["x"]), "needs a url or a command"),
        (policy_pb2.McpServer(name="a", url="https://a", timeout_s=-1), "timeout_s"),
    ],
)
def test_ext_proc_refuses_what_the_core_could_not_follow(server, message):
    with pytest.raises(PolicyCompileError, match=message):
        mcp_settings(policy_pb2.Mcp(servers=[server]))


def test_ext_proc_refuses_a_tenant_grant_that_inherits():
    grant = policy_pb2.McpGrant(tenant="acme", inherit_allow=True)
    with pytest.raises(PolicyCompileError, match="cannot inherit"):
        mcp_settings(policy_pb2.Mcp(grants=[grant]))
