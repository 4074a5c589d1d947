"""The policy's ``mcp:`` section as the MCP adapter uses it: servers, and each caller's ``Access``.

Compiled from the Policy proto by extproc.routing_table (once per policy version, off the hot path).
Header and environment values stay templates here (``${VAR}``, a whole ``vault:`` reference): the
adapter that calls or launches a server expands them, so a secret never sits in a policy object.

Who gets what (docs/mcp.md, "Access"): a caller's access is its tenant's grant narrowed by its key's
(``Access``). A tenant without a grant gets nothing (fail closed); a key without a grant of its own
inherits its tenant's. A caller without a key (where keys are not required) is the anonymous tenant,
``ANONYMOUS_TENANT`` ("-", what the decision sends the MCP service in x-ccr-tenant): it gets what a
grant ``tenant: "-"`` gives it, else nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from extproc.mcp.access import DENY_ALL, Access, Grant
from extproc.mcp.session import DEFAULT_IDLE_TTL_S

DEFAULT_PATH = "/mcp"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_API = "127.0.0.1:9192"  # control_plane.policy.mcp's defaults, as the proto carries them
DEFAULT_EGRESS = "127.0.0.1:9193"
# ccr.v1.contract.ANONYMOUS_TENANT_VALUE (the core imports nothing from outside extproc.mcp).
ANONYMOUS_TENANT = "-"
_INHERIT = Grant(allow=None)


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One upstream MCP server: ``url`` (Streamable HTTP) or ``command`` (stdio)."""

    name: str
    url: str = ""
    command: tuple[str, ...] = ()  # program and arguments; ${VAR} in the arguments expanded at launch
    env: tuple[tuple[str, str], ...] = ()  # stdio: variable -> template
    headers: tuple[tuple[str, str], ...] = ()  # http: lowercase header name -> template
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_stdio(self) -> bool:
        return bool(self.command)


@dataclass(frozen=True, slots=True)
class McpSettings:
    path: str = DEFAULT_PATH
    idle_ttl_s: float = DEFAULT_IDLE_TTL_S  # extproc.mcp.router.Config.idle_ttl_s
    servers: tuple[UpstreamServer, ...] = ()  # in policy order: the order of merged lists
    tenant_grants: Mapping[str, Grant] = field(default_factory=dict)
    key_grants: Mapping[str, Grant] = field(default_factory=dict)  # by key id
    # Tool calls per minute for each key: the key's own value, else its tenant's (absent: no limit).
    tenant_calls_per_minute: Mapping[str, int] = field(default_factory=dict)
    key_calls_per_minute: Mapping[str, int] = field(default_factory=dict)
    api: str = DEFAULT_API  # where the MCP service listens: host:port or unix:/path
    egress: str = DEFAULT_EGRESS  # Envoy's MCP egress listener: host:port (url servers are reached there)
    authorization_servers: tuple[str, ...] = ()  # RFC 9728 metadata's (extproc.mcp.protected_resource)

    def server(self, name: str) -> UpstreamServer | None:
        return next((s for s in self.servers if s.name == name), None)

    def access(self, tenant: str | None, key_id: str | None) -> Access:
        """The caller's effective grant: its tenant's, narrowed by its key's; nothing without a
        tenant grant. No tenant: the anonymous one's (a grant of ``tenant: "-"``)."""
        tenant_grant = self.tenant_grants.get(tenant or ANONYMOUS_TENANT)
        if tenant_grant is None:
            return DENY_ALL
        key_grant = self.key_grants.get(key_id, _INHERIT) if key_id else _INHERIT
        return Access(tenant_grant, key_grant)

    def calls_per_minute(self, tenant: str | None, key_id: str | None) -> int:
        """The caller's limit on tool calls per minute; 0: no limit."""
        if key_id and key_id in self.key_calls_per_minute:
            return self.key_calls_per_minute[key_id]
        return self.tenant_calls_per_minute.get(tenant, 0) if tenant else 0
