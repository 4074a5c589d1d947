"""`ccr-gateway route --mcp -c policy.yaml --key ID | --tenant T`: which MCP tools a caller can use.

Evaluates the policy's ``mcp:`` grants with the gateway's own predicates (``McpSettings.access``,
``Access.may_use_tool`` for tools, ``Access.may_use_server_wide`` for prompts and resources)
against the live tool lists of the policy's servers, fetched with the official SDK's client:
a stdio server is launched with its command and env, an HTTP server is called with its headers.
``${VAR}`` in a command argument, an env or header value or a url's query is expanded from this
shell's environment; a whole ``vault:`` reference is read from Vault as the gateway does
(``ccr.v1.env_refs``, with the policy's ``vault:`` section), and a server whose reference cannot
be read is skipped with the reason. A server that cannot be reached is listed as unreachable, with
the reason. No header or env value is ever printed: reasons are scrubbed of every expanded value,
and a stdio server's stderr (it may hold credentials) is not shown.

The verdict is always the predicate's; the rule shown beside it ("tenant acme: allow github")
is read from the same grant patterns, for the reader. A key's tenant comes from ``--tenant``, else
from the key store (the policy's ``auth:`` store, else ``--sqlite`` / ``--postgres`` /
$CCR_AUTH_POSTGRES / the default SQLite file, as `ccr-gateway keys` finds it).

Exit status: 0 every server listed its tools, 1 one or more could not be listed, 2 a bad
argument, policy or key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_plane.policy import PolicyError, load_policy_file

if TYPE_CHECKING:
    from control_plane.policy import GatewayPolicy
    from extproc.mcp.access import Access, Grant
    from extproc.mcp.settings import McpSettings, UpstreamServer

EXIT_OK, EXIT_UNLISTED, EXIT_USAGE = 0, 1, 2
DEFAULT_TIMEOUT_S = 15.0
MAX_PAGES = 100  # a paginator that never ends cannot hang the command
MAX_REASON = 300
_SCRUB_MIN = 4  # shorter values (on, 1, info) would scrub ordinary words out of a reason
MASK = "***"
_QUIET_LOGGERS = ("mcp", "httpx2", "httpx", "httpcore")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The MCP options of `route` (``--mcp`` itself is in ccr_gateway.explain's group)."""
    group = parser.add_argument_group("with --mcp: which MCP tools a caller can use")
    group.add_argument("--key", metavar="ID", help="a virtual key's id (its tenant from --tenant or the key store)")
    group.add_argument("--tenant", help="the caller's tenant (with --key: the key's, skipping the key store)")
    group.add_argument("--sqlite", metavar="PATH", help="the key store to find --key's tenant in (SQLite)")
    group.add_argument("--postgres", metavar="DSN", help="... or PostgreSQL (${VAR} expanded)")
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"per server: launch or connect, initialize and list its tools (default {DEFAULT_TIMEOUT_S:g})",
    )


# -- the rule behind a verdict ---------------------------------------------------------------------


def _matches(pattern: str, server: str, tool: str | None) -> bool:
    """A pattern with ``/`` names tools, one without names servers (extproc.mcp.access)."""
    if "/" in pattern:
        return tool is not None and fnmatchcase(f"{server}/{tool}", pattern)
    return fnmatchcase(server, pattern)


def _level(who: str, grant: Grant, server: str, tool: str | None) -> tuple[bool, str]:
    """One level's verdict and why. ``tool`` None: prompts and resources (server patterns only)."""
    for pattern in grant.deny:
        if _matches(pattern, server, tool):
            return False, f"{who}: deny {pattern}"
    if grant.allow is None:
        return True, f"{who}: inherits"
    for pattern in grant.allow:
        if _matches(pattern, server, tool):
            return True, f"{who}: allow {pattern}"
    if tool is None:
        return False, f"{who}: no server pattern allows {server}"
    return False, f"{who}: no allow pattern matches {server}/{tool}"


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None
    tenant_source: str  # "--tenant" or "key store"
    notes: tuple[str, ...] = ()  # e.g. the key is revoked


@dataclass(frozen=True)
class Judge:
    """The caller's ``Access`` and, for each verdict, the rule that decided it."""

    settings: McpSettings
    caller: Caller

    @property
    def access(self) -> Access:
        return self.settings.access(self.caller.tenant, self.caller.key_id)

    def _levels(self) -> list[tuple[str, Grant]] | None:
        if self.caller.tenant not in self.settings.tenant_grants:
            return None
        levels = [(f"tenant {self.caller.tenant}", self.access.tenant)]
        if self.caller.key_id and self.caller.key_id in self.settings.key_grants:
            levels.append((f"key {self.caller.key_id}", self.access.key))
        return levels

    def _rule(self, allowed: bool, server: str, tool: str | None) -> str:
        levels = self._levels()
        if levels is None:
            return f"tenant {self.caller.tenant} has no mcp grant"
        found = [_level(who, grant, server, tool) for who, grant in levels]
        if allowed:
            return "; ".join(why for permits, why in found)
        # Denied: the first level that refuses (the levels are ANDed).
        return next((why for permits, why in found if not permits), "")

    def tool(self, server: str, tool: str) -> tuple[bool, str]:
        allowed = self.access.may_use_tool(server, tool)
        return allowed, self._rule(allowed, server, tool)

    def server_wide(self, server: str) -> tuple[bool, str]:
        allowed = self.access.may_use_server_wide(server)
        return allowed, self._rule(allowed, server, None)


# -- fetching the tool lists -----------------------------------------------------------------------


class NotExpanded(Exception):
    """A template that cannot be expanded here; the message names it, never a value."""


@dataclass
class Listing:
    server: str
    transport: str
    target: str  # the url or the command as the policy writes them (templates, no values)
    status: str = "ok"  # ok | unreachable | skipped
    reason: str | None = None
    tools: list[str] = field(default_factory=list)


def _target(server: UpstreamServer) -> str:
    return server.url if not server.is_stdio else " ".join(server.command)


def _expand(where: str, template: str, environ: Mapping[str, str], secrets: list[str]) -> str:
    from ccr.v1 import env_refs

    try:
        value = env_refs.expand_env(template, environ)
    except env_refs.EnvError as exc:
        if template.startswith(env_refs.VAULT_PREFIX):
            raise NotExpanded(f"{where} is a vault: reference that cannot be read here: {exc}") from None
        raise NotExpanded(f"{where}: {exc}") from None
    if value != template:
        secrets.append(value)
    return value


def _scrub(text: str, secrets: list[str]) -> str:
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= _SCRUB_MIN:
            text = text.replace(value, MASK)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _leaf(exc: BaseException) -> BaseException:
    """The SDK's transports run in task groups: the cause is the first leaf of the group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException, transport: str) -> str:
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    exc = _leaf(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time (--timeout)"
    if isinstance(exc, MCPError):
        if transport == "stdio" and exc.code == CONNECTION_CLOSED:
            return "the server closed the connection before answering (exited?); its stderr is not shown"
        return f"the server answered error {exc.code}: {exc.message}"
    if isinstance(exc, OSError) and transport == "stdio":
        return f"cannot start it: {exc}"
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


async def _list_tools(client: Any) -> list[str]:
    names: list[str] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        names.extend(tool.name for tool in page.tools)
        cursor = page.next_cursor
        if cursor is None or cursor in seen:  # a cursor cycle ends the walk, as in the gateway
            break
        seen.add(cursor)
    return names


async def fetch(server: UpstreamServer, environ: Mapping[str, str], timeout_s: float) -> Listing:
    """One server's tool names, or why there are none. Never raises for the server's faults."""
    listing = Listing(server.name, "stdio" if server.is_stdio else "http", _target(server))
    secrets: list[str] = []
    try:
        if server.is_stdio:
            command = [_expand(f"command argument {i}", arg, environ, secrets) for i, arg in enumerate(server.command)]
            env = {name: _expand(f"env {name}", value, environ, secrets) for name, value in server.env}
        else:
            url = _expand("url", server.url, environ, secrets)
            headers = {name: _expand(f"header {name}", value, environ, secrets) for name, value in server.headers}
    except NotExpanded as exc:
        listing.status, listing.reason = "skipped", f"not contacted: {exc}"
        return listing

    import anyio
    from mcp import Client

    try:
        with open(os.devnull, "w") as quiet, anyio.fail_after(timeout_s):
            async with contextlib.AsyncExitStack() as stack:
                if server.is_stdio:
                    from mcp.client.stdio import StdioServerParameters, stdio_client

                    # The SDK's short list of inherited variables plus env, as extproc.mcp_stdio does.
                    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
                    transport: Any = stdio_client(params, errlog=quiet)
                else:
                    from mcp.client.streamable_http import streamable_http_client
                    from mcp.shared._httpx_utils import create_mcp_http_client

                    http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
                    transport = streamable_http_client(url, http_client=http)
                # legacy: the initialize handshake, the revisions the gateway speaks to upstreams.
                client = await stack.enter_async_context(Client(transport, mode="legacy", cache=None))
                listing.tools = await _list_tools(client)
    except Exception as exc:
        listing.status = "unreachable"
        listing.reason = _scrub(_reason(exc, listing.transport), secrets)
    return listing


async def fetch_all(settings: McpSettings, environ: Mapping[str, str], timeout_s: float) -> list[Listing]:
    # The SDK logs what a server wrote that was not JSON-RPC, with a traceback: that line may hold
    # a credential, and the reason printed for the server says enough.
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    return list(await asyncio.gather(*(fetch(server, environ, timeout_s) for server in settings.servers)))


# -- the caller ------------------------------------------------------------------------------------


def _key_store_location(args: argparse.Namespace, policy: GatewayPolicy) -> tuple[str | None, str | None]:
    """(sqlite path, postgres dsn) as `ccr-gateway keys` and the policy's auth: section name them."""
    if args.postgres or args.sqlite:
        return args.sqlite, args.postgres
    auth = policy.auth
    if auth.keys_postgres:
        return None, auth.keys_postgres
    if auth.keys_sqlite:
        return os.path.expanduser(os.path.expandvars(auth.keys_sqlite)), None
    if os.environ.get("CCR_AUTH_POSTGRES"):
        return None, os.environ["CCR_AUTH_POSTGRES"]
    return None, None


async def _lookup_key(key_id: str, sqlite: str | None, postgres: str | None) -> Any:
    from extproc.auth.key_store import default_keys_path, open_key_store

    if not postgres:
        path = Path(sqlite) if sqlite else default_keys_path()
        if not path.exists():  # opening it would create an empty store
            raise LookupError(f"no key store at {path}")
    store = open_key_store(sqlite, postgres)
    try:
        return await store.get(key_id)
    finally:
        await store.close()


def resolve_caller(args: argparse.Namespace, policy: GatewayPolicy) -> Caller:
    """The caller's tenant and key; ValueError with a message for the user."""
    if not args.key and not args.tenant:
        raise ValueError("--mcp needs --key ID or --tenant T")
    if args.tenant:
        return Caller(args.tenant, args.key or None, "--tenant")
    sqlite, postgres = _key_store_location(args, policy)
    try:
        record = asyncio.run(_lookup_key(args.key, sqlite, postgres))
    except Exception as exc:
        raise ValueError(f"cannot find key {args.key}'s tenant ({_leaf(exc)}): give --tenant") from None
    if record is None:
        raise ValueError(f"no key {args.key} in the key store: give --tenant, or check the id")
    key = record.key
    notes = []
    if key.revoked:
        notes.append("the key is revoked: the gateway refuses it before any grant applies")
    elif key.expires_at is not None and key.expires_at <= time.time():
        notes.append("the key has expired: the gateway refuses it before any grant applies")
    return Caller(key.tenant, key.key_id, "key store", tuple(notes))


# -- output ----------------------------------------------------------------------------------------


def describe(judge: Judge, listings: list[Listing]) -> dict[str, Any]:
    """What ``--json`` prints."""
    from extproc.mcp.catalog import join_name

    servers = []
    for listing in listings:
        allowed, rule = judge.server_wide(listing.server)
        tools = []
        for name in listing.tools:
            permitted, why = judge.tool(listing.server, name)
            tools.append(
                {"name": name, "exposed_as": join_name(listing.server, name), "allowed": permitted, "rule": why}
            )
        servers.append(
            {
                "name": listing.server,
                "transport": listing.transport,
                "target": listing.target,
                "status": listing.status,
                "reason": listing.reason,
                "prompts_and_resources": {"allowed": allowed, "rule": rule},
                "tools": tools,
            }
        )
    caller = judge.caller
    return {
        "tenant": caller.tenant,
        "key": caller.key_id,
        "tenant_from": caller.tenant_source,
        "notes": list(caller.notes),
        "servers": servers,
        "allowed_tools": [t["exposed_as"] for s in servers for t in s["tools"] if t["allowed"]],
    }


def print_text(result: dict[str, Any]) -> None:
    key = f"{result['key']} (tenant from {result['tenant_from']})" if result["key"] else "none (the tenant's grant)"
    print(f"tenant:    {result['tenant']}")
    print(f"key:       {key}")
    for note in result["notes"]:
        print(f"note:      {note}")
    for server in result["servers"]:
        print()
        print(f"server {server['name']} ({server['transport']}: {server['target']})")
        if server["status"] != "ok":
            print(f"  {server['status']}: {server['reason']}")
        wide = server["prompts_and_resources"]
        verdict = "allowed" if wide["allowed"] else "denied"
        print(f"  prompts and resources: {verdict} ({wide['rule']})")
        width = max((len(t["name"]) for t in server["tools"]), default=0)
        for tool in server["tools"]:
            verdict = "allowed" if tool["allowed"] else "denied "
            print(f"  {verdict}  {tool['name']:<{width}}  {tool['rule']}")
        if server["status"] == "ok" and not server["tools"]:
            print("  (no tools)")
    listed = [s for s in result["servers"] if s["status"] == "ok"]
    total = sum(len(s["tools"]) for s in listed)
    not_listed = len(result["servers"]) - len(listed)
    print()
    summary = f"summary:   {len(result['allowed_tools'])} of {total} tools allowed on {len(listed)} server(s)"
    print(summary + (f"; {not_listed} not listed" if not_listed else ""))


def run(args: argparse.Namespace) -> int:
    from ccr.v1 import vault_refs
    from extproc.routing_table import PolicyCompileError, mcp_settings

    try:
        policy = load_policy_file(args.config)
        proto = policy.to_proto("explain")
        settings = mcp_settings(proto.mcp) if proto.HasField("mcp") else None
    except (PolicyError, PolicyCompileError) as exc:
        print(f"invalid policy:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings is None:
        print(f"{args.config} has no mcp: section: no MCP server to explain", file=sys.stderr)
        return EXIT_USAGE
    try:
        caller = resolve_caller(args, policy)
    except ValueError as exc:
        print(f"ccr-gateway route --mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    environ = dict(os.environ)
    if policy.vault is not None:  # how to reach Vault, as `up` tells its children (no credential)
        environ[vault_refs.SETTINGS_ENV] = vault_refs.settings_json(policy.vault.settings(environ))
    listings = asyncio.run(fetch_all(settings, environ, args.timeout))
    result = describe(Judge(settings, caller), listings)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    return EXIT_OK if all(listing.status == "ok" for listing in listings) else EXIT_UNLISTED
