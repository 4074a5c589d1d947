"""Who may see and use which upstream servers, tools, prompts and resources.

The rule (docs/mcp.md, "Access"):

- A ``Grant`` is two glob lists (``fnmatch``, case-sensitive): ``allow`` and ``deny``. A pattern
  without ``/`` names servers (``github``, ``git*``); a pattern with ``/`` names tools
  (``github/create_*``, ``*/read_file``).
- At one level (tenant, key), a tool ``server/tool`` is permitted when some allow pattern matches
  it (a server pattern matching its server, or a tool pattern matching ``server/tool``) and no deny
  pattern does. Deny wins.
- Prompts and resources are granted per server only: permitted when a *server* pattern allows
  their server and no server pattern denies it. A tool pattern never opens a prompt or a resource:
  ``allow: [github/search_*]`` gives two tools, not the server's prompts and files.
- The levels are ANDed: the key's grant narrows its tenant's and can never widen it. A key without
  an MCP grant (``allow=None``) inherits its tenant's; a tenant without one gets nothing (fail
  closed: policy decides defaults, this module does not guess).

``may_use_tool`` is the one predicate behind both tools/list (what is shown) and tools/call (what
is forwarded): a tool that is not callable is never listed and a tool never listed is never
callable, by construction (tests/unit/mcp/test_access.py checks it as a property).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


def _split(patterns: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(p for p in patterns if "/" not in p), tuple(p for p in patterns if "/" in p)


@dataclass(frozen=True)
class Grant:
    """One level's allow/deny lists. ``allow=None``: this level does not restrict (inherit)."""

    allow: tuple[str, ...] | None = ()
    deny: tuple[str, ...] = ()

    def _allows_tool(self, server: str, tool: str) -> bool:
        if self.allow is None:
            return True
        servers, tools = _split(self.allow)
        full = f"{server}/{tool}"
        return any(fnmatchcase(server, p) for p in servers) or any(fnmatchcase(full, p) for p in tools)

    def _denies_tool(self, server: str, tool: str) -> bool:
        servers, tools = _split(self.deny)
        full = f"{server}/{tool}"
        return any(fnmatchcase(server, p) for p in servers) or any(fnmatchcase(full, p) for p in tools)

    def permits_tool(self, server: str, tool: str) -> bool:
        return self._allows_tool(server, tool) and not self._denies_tool(server, tool)

    def permits_server_wide(self, server: str) -> bool:
        """Prompts and resources: only server patterns count, in allow and deny alike."""
        servers_denied, _ = _split(self.deny)
        if any(fnmatchcase(server, p) for p in servers_denied):
            return False
        if self.allow is None:
            return True
        servers_allowed, _ = _split(self.allow)
        return any(fnmatchcase(server, p) for p in servers_allowed)

    def may_reach(self, server: str) -> bool:
        """Whether anything of this server could be permitted (used to skip whole upstreams)."""
        servers_denied, _ = _split(self.deny)
        if any(fnmatchcase(server, p) for p in servers_denied):
            return False
        if self.allow is None:
            return True
        servers, tools = _split(self.allow)
        # A tool pattern's server part may itself be a glob: "*/read" reaches every server.
        return any(fnmatchcase(server, p) for p in servers) or any(
            fnmatchcase(server, p.split("/", 1)[0]) for p in tools
        )


@dataclass(frozen=True)
class Access:
    """The caller's effective grant: its tenant's, narrowed by its key's."""

    tenant: Grant
    key: Grant = Grant(allow=None)

    def may_use_tool(self, server: str, tool: str) -> bool:
        return self.tenant.permits_tool(server, tool) and self.key.permits_tool(server, tool)

    # The same predicate under the two names the issue uses: listing and calling cannot drift apart.
    visible = may_use_tool
    callable = may_use_tool

    def may_use_server_wide(self, server: str) -> bool:
        """Prompts (list, get) and resources (list, templates, read, subscribe) of ``server``."""
        return self.tenant.permits_server_wide(server) and self.key.permits_server_wide(server)

    def may_reach(self, server: str) -> bool:
        return self.tenant.may_reach(server) and self.key.may_reach(server)


ALLOW_ALL = Access(Grant(allow=("*",)))
DENY_ALL = Access(Grant(allow=()))
