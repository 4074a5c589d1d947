"""The policy's optional ``mcp:`` section: the MCP servers the gateway fronts, and who may use them.

```yaml
mcp:
  path: /mcp                    # the MCP endpoint on the listener (default /mcp)
  session_ttl: 1h               # a client session expires after this long idle (default 1h)
  decision_reuse: 2s            # Envoy reuses its decision on a caller (who it is) for the requests
                                # with the same credentials this long: whole seconds, 0s: decide every
                                # request (default 2s; a revoked key is refused on the endpoint after it)
  api: 127.0.0.1:9192           # where the MCP service (`ccr-gateway mcp-gateway`) listens: host:port or
                                # unix:/path (default 127.0.0.1:9192); `up` runs it there when it is local
  egress: 127.0.0.1:9193        # Envoy's MCP egress listener (an IP and a port; default 127.0.0.1:9193):
                                # the MCP service reaches each url server through it
  authorization_servers:        # RFC 9728: where a client gets a token for this endpoint (optional)
    - https://auth.example.com
  servers:
    - name: github              # the tools' prefix: github__create_issue
      url: https://api.githubcopilot.com/mcp/          # a Streamable HTTP upstream ...
      headers: {Authorization: "Bearer ${GITHUB_TOKEN}"}
      timeout: 60s              # one upstream request (default 60s)
    - name: files
      command: [npx, -y, "@modelcontextprotocol/server-filesystem", /srv]   # ... or stdio, launched by the gateway
      env: {LOG_LEVEL: info, API_TOKEN: "vault:secret/data/mcp/files#token"}
  grants:
    - tenant: acme              # every key of the tenant
      allow: [github, "files/read_*"]
      deny: ["github/delete_*"]
      calls_per_minute: 120     # tool calls per minute, for each key of the tenant
    - key: abcdefgh             # one virtual key (its id): narrows its tenant's grant, never widens it
      allow: ["github/search_*"]
    - tenant: "-"               # callers without a key (where auth.required is off): "-" is the
      allow: ["files/read_*"]   # anonymous tenant (ccr.v1.contract.ANONYMOUS_TENANT_VALUE)
```

The endpoint: the decision (the hop, or ext_proc) recognises ``path`` (POST, GET, DELETE),
authenticates the caller like model traffic and forwards the request untouched to the MCP service
(cluster ccr_mcp, control_plane.resources.mcp) with the caller's tenant and key id. The MCP service
sends each url server's requests to the egress listener with ``x-ccr-mcp-server: <name>``; Envoy
routes them to that server's cluster (TLS, circuit breakers) and keeps its credentials' headers to
the MCP service. ``GET /.well-known/oauth-protected-resource<path>`` answers the RFC 9728 metadata.

Credentials are never written here. A header or environment value is a template: ``${VAR}``
references are expanded by ext_proc from its own environment when it calls the server or launches
it, and a whole ``vault:<mount>/data/<path>#<field>`` is read from Vault (the ``vault:`` section).
A value that looks like a credential written out (a header or variable whose name says token, key,
secret, password or auth, or a value shaped like a known token) is refused with its line.

Names and patterns follow the MCP core (docs/mcp.md, "Names" and "Access"): ``SERVER_NAME_RE`` is
extproc.mcp.catalog's (copied: the control plane does not import ext_proc; a unit test keeps the two
equal), and a grant pattern is a server glob (``github``, ``git*``) or a tool glob (``github/create_*``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from fnmatch import fnmatchcase
from urllib.parse import parse_qsl, urlsplit

from ccr.v1 import policy_pb2
from ccr.v1.secret_ref import ReferenceError, is_reference, parse_reference
from control_plane.policy.batches import UNIX_PREFIX, parse_address
from control_plane.policy.yaml_check import Checker, Located, closest, join, kind_of

# extproc.mcp.catalog.SERVER_NAME_RE: letters and digits in runs joined by single - or _.
SERVER_NAME_RE = re.compile(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")
_KEY_ID = re.compile(r"^[a-z2-7]{8}$")  # extproc.auth.keys' key ids (as control_plane.policy.batches)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ccr.v1.env_refs: the braced form only
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_S = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_GLOB_SERVER = re.compile(r"^[A-Za-z0-9*?\[\]!_-]+$")
_GLOB_CHARS = frozenset("*?[")

DEFAULT_PATH = "/mcp"
DEFAULT_SESSION_TTL_S = 3600.0  # extproc.mcp.session.DEFAULT_IDLE_TTL_S
# The decision hop's reuse of a caller's decision (control_plane/resources/decision_hop.lua): long
# enough that a session's tool calls skip the decision service, short enough that a revoked key stops
# working on the endpoint at once for any practical purpose.
DEFAULT_DECISION_REUSE_S = 2
MAX_DECISION_REUSE_S = 60
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_API = ("127.0.0.1", 9192)
DEFAULT_EGRESS = ("127.0.0.1", 9193)
# Authorization servers on plain http are for a laptop only (OAuth 2.1 wants TLS elsewhere).
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Claude Code shows a tool as mcp__<gateway>__<server>__<tool> and the Anthropic API takes tool names
# of at most 64 characters: past this length a server name leaves its tools little room.
LONG_SERVER_NAME = 24
MAX_CALLS_PER_MINUTE = 1_000_000
# The model APIs' paths and the gateway's own: the MCP endpoint cannot sit on them.
_TAKEN_PATHS = ("/v1", "/v1beta", "/health", "/ready", "/metrics", "/.well-known")
# Set by the gateway or the transport itself; a policy header would break the MCP session.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "accept",
        "connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
# A header or variable whose name holds one of these words carries a credential.
_CREDENTIAL_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "apikey",
        "credential",
        "credentials",
        "cookie",
        "key",
        "pass",
        "passwd",
        "password",
        "pat",
        "secret",
        "token",
    }
)
# Values shaped like well-known tokens, wherever they are written (a command line too).
TOKEN_SHAPES = re.compile(
    r"(sk-(ant-)?[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35})"
)

_FIELDS = ("path", "session_ttl", "decision_reuse", "api", "egress", "authorization_servers", "servers", "grants")
_SERVER_FIELDS = ("name", "url", "command", "env", "headers", "timeout")
_GRANT_FIELDS = ("tenant", "key", "allow", "deny", "calls_per_minute")


@dataclass(frozen=True, slots=True)
class McpServerSpec:
    name: str
    url: str = ""  # a Streamable HTTP upstream; "" for a stdio server
    command: tuple[str, ...] = ()  # a stdio server's program and arguments (${VAR} expanded at launch)
    env: tuple[tuple[str, str], ...] = ()  # stdio: variable -> template (${VAR} or a whole vault: reference)
    headers: tuple[tuple[str, str], ...] = ()  # http: lowercase name -> template, sent by the gateway
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    def to_proto(self) -> policy_pb2.McpServer:
        return policy_pb2.McpServer(
            name=self.name,
            url=self.url,
            command=self.command,
            env=dict(self.env),
            headers=dict(self.headers),
            timeout_s=self.timeout_s,
        )


@dataclass(frozen=True, slots=True)
class McpGrantSpec:
    """One tenant's grant (``tenant``) or one key's (``key_id``), never both."""

    tenant: str = ""
    key_id: str = ""
    allow: tuple[str, ...] | None = ()  # None (key grants only): the tenant's allow applies
    deny: tuple[str, ...] = ()
    calls_per_minute: int = 0  # per key; 0: no limit (a key's own value replaces its tenant's)

    def to_proto(self) -> policy_pb2.McpGrant:
        return policy_pb2.McpGrant(
            tenant=self.tenant,
            key_id=self.key_id,
            allow=self.allow or (),
            inherit_allow=self.allow is None,
            deny=self.deny,
            calls_per_minute=self.calls_per_minute,
        )


@dataclass(frozen=True, slots=True)
class McpSpec:
    path: str = DEFAULT_PATH
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    servers: tuple[McpServerSpec, ...] = ()
    grants: tuple[McpGrantSpec, ...] = ()
    # Where the MCP service listens: host and port, or a unix socket (then host is "" and port 0).
    api_host: str = DEFAULT_API[0]
    api_port: int = DEFAULT_API[1]
    api_socket_path: str = ""
    # Envoy's egress listener for the url servers: an IP address and a port.
    egress_host: str = DEFAULT_EGRESS[0]
    egress_port: int = DEFAULT_EGRESS[1]
    authorization_servers: tuple[str, ...] = ()  # RFC 9728 metadata's
    decision_reuse_s: int = DEFAULT_DECISION_REUSE_S  # Envoy's reuse of a caller's decision (whole seconds)

    def server(self, name: str) -> McpServerSpec | None:
        return next((s for s in self.servers if s.name == name), None)

    @property
    def api(self) -> str:
        """The MCP service's address as written: host:port ([v6]:port) or unix:/path."""
        if self.api_socket_path:
            return UNIX_PREFIX + self.api_socket_path
        return _host_port(self.api_host, self.api_port)

    @property
    def egress(self) -> str:
        return _host_port(self.egress_host, self.egress_port)

    @property
    def api_host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.api_host)
        except ValueError:
            return False
        return True

    @property
    def http_servers(self) -> tuple[McpServerSpec, ...]:
        """The url servers: each has a cluster and an egress route."""
        return tuple(s for s in self.servers if s.url)

    def to_proto(self) -> policy_pb2.Mcp:
        return policy_pb2.Mcp(
            path=self.path,
            session_ttl_s=self.session_ttl_s,
            servers=[s.to_proto() for s in self.servers],
            grants=[g.to_proto() for g in self.grants],
            api=self.api,
            egress=self.egress,
            authorization_servers=self.authorization_servers,
        )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- credentials: shared with `ccr-gateway import-mcp` ---------------------------------------------


def is_credential_name(name: str) -> bool:
    """Whether a header or environment variable of this name carries a credential
    (``Authorization``, ``X-Api-Key``, ``GITHUB_PERSONAL_ACCESS_TOKEN``; not ``LOG_LEVEL``)."""
    words = [w for w in re.split(r"[-_.]+", name.lower()) if w]
    return any(w in _CREDENTIAL_WORDS for w in words) or "apikey" in name.lower().replace("-", "").replace("_", "")


def header_allowed(name: str) -> bool:
    """Whether the policy may set this header on an upstream server (not one the transport owns)."""
    lower = name.lower()
    return bool(_HEADER_NAME.match(lower)) and not lower.startswith((":", "x-ccr-")) and lower not in _RESERVED_HEADERS


def env_name_valid(name: str) -> bool:
    return _ENV_NAME.match(name) is not None


def looks_like_token(text: str) -> bool:
    """Whether the text (outside its ${VAR} references) holds something shaped like a known token."""
    return TOKEN_SHAPES.search(_REFERENCE.sub("", text)) is not None


def has_reference(text: str) -> bool:
    return _REFERENCE.search(text) is not None


def credential_problem(name: str, value: str) -> str | None:
    """Why a header's or a variable's ``value`` cannot be written as is; None when it can. The
    message never repeats the value."""
    if is_reference(value):
        return None  # a whole vault: reference, checked on its own
    if looks_like_token(value):
        return "holds what looks like a token: write it as a ${VAR} reference (or a vault: reference)"
    if value and is_credential_name(name) and not has_reference(value):
        return (
            "is a credential and must not be written in the policy: write it as a ${VAR} reference, "
            'e.g. "Bearer ${TOKEN}" (set in the gateway\'s environment), or a vault: reference'
        )
    return None


# --- parsing ------------------------------------------------------------------------------------


def parse_mcp(
    check: Checker,
    at: Located,
    vault_configured: bool,
    path: str = "mcp",
    listener: tuple[str, int] | None = None,
) -> McpSpec | None:
    """The top-level ``mcp:``; None when it has problems (recorded in ``check``). ``vault_configured``:
    the policy has a ``vault:`` section (a vault: reference needs it); ``listener``: the gateway
    listener's address and port (the egress listener cannot take its port)."""
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS, required=("servers",))
    addresses = _addresses(check, fields, path, listener)
    endpoint = DEFAULT_PATH
    if "path" in fields:
        endpoint = _endpoint(check, fields["path"], join(path, "path")) or DEFAULT_PATH
    session_ttl_s = DEFAULT_SESSION_TTL_S
    if "session_ttl" in fields:
        ttl = _duration(check, fields["session_ttl"], join(path, "session_ttl"), 60, 7 * 24 * 3600)
        session_ttl_s = ttl if ttl is not None else session_ttl_s
    decision_reuse_s = DEFAULT_DECISION_REUSE_S
    if "decision_reuse" in fields:
        reuse_path = join(path, "decision_reuse")
        reuse = _duration(check, fields["decision_reuse"], reuse_path, 0, MAX_DECISION_REUSE_S)
        if reuse is not None and reuse != int(reuse):
            check.problem(fields["decision_reuse"], reuse_path, f"must be whole seconds, got {fields['decision_reuse'].value}")
        elif reuse is not None:
            decision_reuse_s = int(reuse)
    servers: list[McpServerSpec] = []
    written_names: set[str] = set()
    if "servers" in fields:
        servers_path = join(path, "servers")
        for index, item in enumerate(check.non_empty_sequence(fields["servers"], servers_path, "server")):
            name_at = item.value.get("name", (None, None))[1] if isinstance(item.value, dict) else None
            if name_at is not None and isinstance(name_at.value, str):
                if name_at.value in written_names:
                    check.problem(
                        name_at, join(join(servers_path, index), "name"), f"duplicate server {name_at.value!r}"
                    )
                written_names.add(name_at.value)
            server = _server(check, item, join(servers_path, index), vault_configured)
            if server is not None:
                servers.append(server)
    grants: list[McpGrantSpec] = []
    if "grants" in fields:
        grants = _grants(check, fields["grants"], join(path, "grants"), written_names)
    else:
        check.warning(at, join(path, "grants"), "no grants: no caller can see or call any MCP tool")
    authorization_servers: tuple[str, ...] = ()
    if "authorization_servers" in fields:
        authorization_servers = _authorization_servers(
            check, fields["authorization_servers"], join(path, "authorization_servers")
        )
    if len(check.problems) > before:
        return None
    spec = McpSpec(endpoint, session_ttl_s, tuple(servers), tuple(grants))
    return replace(spec, **addresses, authorization_servers=authorization_servers, decision_reuse_s=decision_reuse_s)


def _addresses(
    check: Checker, fields: dict[str, Located], path: str, listener: tuple[str, int] | None
) -> dict[str, object]:
    """``api`` and ``egress`` as McpSpec's fields (only those written)."""
    out: dict[str, object] = {}
    api: tuple[str, int, str] | None = None
    if "api" in fields:
        where = "where `ccr-gateway mcp-gateway` listens"
        api = parse_address(check, fields["api"], join(path, "api"), "127.0.0.1:9192", where)
        if api is not None:
            out.update(api_host=api[0], api_port=api[1], api_socket_path=api[2])
    if "egress" in fields:
        egress_path = join(path, "egress")
        where = "where Envoy's MCP egress listener listens"
        egress = parse_address(check, fields["egress"], egress_path, "127.0.0.1:9193", where, unix=False, ip_only=True)
        if egress is not None:
            host, port, _ = egress
            api_port = api[1] if api is not None else DEFAULT_API[1]
            api_host = api[0] if api is not None else DEFAULT_API[0]
            if listener is not None and port == listener[1] and _same_host(host, listener[0]):
                check.problem(fields["egress"], egress_path, f"port {port} is the gateway listener's")
            elif port == api_port and _same_host(host, api_host):
                check.problem(fields["egress"], egress_path, "is the MCP service's own address (mcp.api)")
            else:
                out.update(egress_host=host, egress_port=port)
    return out


def _same_host(a: str, b: str) -> bool:
    """Whether two bound addresses can collide (a wildcard collides with everything)."""
    return a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def _authorization_servers(check: Checker, at: Located, path: str) -> tuple[str, ...]:
    """RFC 9728's authorization_servers: issuer URLs (https; http for a loopback host), no query or
    fragment (RFC 8414), each once."""
    out: list[str] = []
    for index, item in enumerate(check.sequence(at, path)):
        item_path = join(path, index)
        text = check.string(item, item_path)
        if text is None:
            continue
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            check.problem(item, item_path, f"{text!r} is not a valid URL")
            continue
        loopback = parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
        if not parts.hostname or (parts.scheme != "https" and not loopback):
            check.problem(item, item_path, f"{text!r} must be an https:// URL (http:// for localhost only)")
        elif parts.query or parts.fragment or parts.username is not None:
            check.problem(item, item_path, f"{text!r}: an issuer URL has no query, fragment or credentials")
        elif text in out:
            check.problem(item, item_path, f"{text!r} is listed twice")
        else:
            out.append(text)
    return tuple(out)


def _endpoint(check: Checker, at: Located, path: str) -> str | None:
    text = check.string(at, path)
    if text is None:
        return None
    if not _PATH.match(text):
        check.problem(at, path, f"{text!r} must be a URL path like /mcp (letters, digits, . _ ~ -; no trailing /)")
        return None
    for taken in _TAKEN_PATHS:
        if text == taken or text.startswith(taken + "/"):
            check.problem(at, path, f"{text!r} is under {taken}, which the gateway already serves")
            return None
    return text


def _duration(check: Checker, at: Located, path: str, low_s: int, high_s: int) -> float | None:
    """A duration as written ("500ms", "30s", "2m", "1h"), in seconds."""
    text = at.value
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        shown = repr(text) if isinstance(text, str) else kind_of(text)
        check.problem(at, path, f"{shown} is not a duration (like 30s, 5m or 1h)")
        return None
    seconds = Decimal(match[1]) * _UNIT_S[match[2]]
    if not low_s <= seconds <= high_s:
        check.problem(at, path, f"must be between {_human(low_s)} and {_human(high_s)}, got {text}")
        return None
    return float(seconds)


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _server(check: Checker, at: Located, path: str, vault_configured: bool) -> McpServerSpec | None:
    before = len(check.problems)
    fields = check.mapping(at, path, _SERVER_FIELDS, required=("name",))
    name = None
    if "name" in fields:
        what = "server name (letters and digits, in runs joined by single - or _: github, my-files, team_db)"
        name = check.string(fields["name"], join(path, "name"), re.compile(SERVER_NAME_RE.pattern + "$"), what)
        if name is not None and len(name) > LONG_SERVER_NAME:
            check.warning(
                fields["name"],
                join(path, "name"),
                f"is {len(name)} characters long: Claude Code names a tool mcp__<gateway>__{name}__<tool> "
                "and the Anthropic API takes at most 64, which leaves its tools little room",
            )
    if isinstance(at.value, dict) and ("url" in fields) == ("command" in fields):
        message = "give url (a Streamable HTTP server) or command (a stdio server), not both"
        check.problem(
            at, path, message if "url" in fields else "needs url (a Streamable HTTP server) or command (stdio)"
        )
    url = _url(check, fields["url"], join(path, "url")) if "url" in fields else ""
    command = _command(check, fields["command"], join(path, "command")) if "command" in fields else ()
    headers: tuple[tuple[str, str], ...] = ()
    if "headers" in fields:
        if "command" in fields:
            check.problem(fields["headers"], join(path, "headers"), "only a url server takes headers (stdio: env)")
        else:
            headers = _templates(check, fields["headers"], join(path, "headers"), vault_configured, header=True)
    env: tuple[tuple[str, str], ...] = ()
    if "env" in fields:
        if "url" in fields:
            check.problem(fields["env"], join(path, "env"), "only a command (stdio) server takes env (url: headers)")
        else:
            env = _templates(check, fields["env"], join(path, "env"), vault_configured, header=False)
    timeout_s = DEFAULT_TIMEOUT_S
    if "timeout" in fields:
        timeout = _duration(check, fields["timeout"], join(path, "timeout"), 1, 3600)
        timeout_s = timeout if timeout is not None else timeout_s
    if len(check.problems) > before or name is None:
        return None
    return McpServerSpec(name, url or "", command, env, headers, timeout_s)


def _url(check: Checker, at: Located, path: str) -> str | None:
    text = check.string(at, path)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        check.problem(at, path, f"{text!r} is not a valid URL")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        check.problem(at, path, f"{text!r} must be an http:// or https:// URL with a host")
        return None
    if parts.username is not None or parts.fragment:
        check.problem(at, path, "must not carry credentials or a fragment: send credentials as headers")
        return None
    if has_reference(parts.scheme + parts.netloc + parts.path) or "${" in _REFERENCE.sub("", text):
        check.problem(at, path, "${VAR} references are allowed in the query only (credentials: headers)")
        return None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if credential_problem(key, value) is not None:
            check.problem(at, path, f"query parameter {key!r} {credential_problem(key, value)}")
            return None
    return text


def _command(check: Checker, at: Located, path: str) -> tuple[str, ...]:
    if not isinstance(at.value, list):
        check.problem(at, path, "must be a list: the program and its arguments, like [npx, -y, some-server]")
        return ()
    items = check.non_empty_sequence(at, path, "program")
    argv: list[str] = []
    for index, item in enumerate(items):
        item_path = join(path, index)
        # YAML reads `- 8080` as a number; a command line is text.
        value = (
            str(item.value) if isinstance(item.value, int | float) and not isinstance(item.value, bool) else item.value
        )
        if not isinstance(value, str) or (index == 0 and not value):
            check.problem(item, item_path, f"must be a string, got {kind_of(item.value)}")
        elif index == 0 and has_reference(value):
            check.problem(item, item_path, "the program is written as is (${VAR} references: in its arguments)")
        elif looks_like_token(value):
            check.problem(item, item_path, "holds what looks like a token: pass it in env as a ${VAR} reference")
        elif "${" in _REFERENCE.sub("", value):
            check.problem(item, item_path, "has a ${ without its closing } (or a name that is not a variable name)")
        else:
            argv.append(value)
    return tuple(argv)


def _templates(
    check: Checker, at: Located, path: str, vault_configured: bool, header: bool
) -> tuple[tuple[str, str], ...]:
    """Headers (names lowercased) or environment variables -> their templates, as written."""
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be a mapping, got {kind_of(at.value)}")
        return ()
    out: list[tuple[str, str]] = []
    for key, (key_at, value_at) in at.value.items():
        item_path = join(path, key)
        name = key.lower() if header else key
        if header and not header_allowed(name):
            check.problem(key_at, item_path, "is not a header the policy may set")
            continue
        if not header and not env_name_valid(key):
            check.problem(key_at, item_path, "is not an environment variable name")
            continue
        value = value_at.value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            check.problem(value_at, item_path, f"must be a string, got {kind_of(value)}")
            continue
        value = str(value)
        if header and ("\r" in value or "\n" in value):
            check.problem(value_at, item_path, "must not hold a line break")
            continue
        if is_reference(value):
            try:
                parse_reference(value)
            except ReferenceError as exc:
                check.problem(value_at, item_path, f"{value!r} {exc}")
                continue
            if not vault_configured:
                check.problem(value_at, item_path, "a vault: reference needs the policy's top-level vault: section")
                continue
        elif "${" in _REFERENCE.sub("", value):
            check.problem(value_at, item_path, "has a ${ without its closing } (or a name that is not a variable name)")
            continue
        problem = credential_problem(name, value)
        if problem is not None:
            check.problem(value_at, item_path, problem)
            continue
        out.append((name, value))
    return tuple(out)


def _grants(check: Checker, at: Located, path: str, servers: set[str]) -> list[McpGrantSpec]:
    out: list[McpGrantSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(check.sequence(at, path)):
        item_path = join(path, index)
        before = len(check.problems)
        fields = check.mapping(item, item_path, _GRANT_FIELDS)
        tenant = key_id = ""
        if isinstance(item.value, dict) and ("tenant" in fields) == ("key" in fields):
            which = "not both" if "tenant" in fields else "one of them"
            check.problem(item, item_path, f"a grant names a tenant or a key: {which}")
        if "tenant" in fields:
            tenant = check.string(fields["tenant"], join(item_path, "tenant")) or ""
            if tenant and tenant != tenant.strip():
                check.problem(fields["tenant"], join(item_path, "tenant"), "must not start or end with spaces")
        if "key" in fields:
            key_id = (
                check.string(
                    fields["key"],
                    join(item_path, "key"),
                    _KEY_ID,
                    "key id (the 8 characters of a-z, 2-7 after sk-ccr-; `ccr-gateway keys list` shows them)",
                )
                or ""
            )
        who = ("tenant", tenant) if tenant else ("key", key_id)
        if who[1]:
            at_who = fields["tenant" if tenant else "key"]
            if who in seen:
                check.problem(
                    at_who, join(item_path, who[0]), f"{who[0]} {who[1]!r} already has a grant (grants[{seen[who]}])"
                )
            else:
                seen[who] = index
        allow: tuple[str, ...] | None = None
        if "allow" in fields:
            allow = _patterns(check, fields["allow"], join(item_path, "allow"), servers)
        elif tenant:
            check.problem(item, join(item_path, "allow"), "is required for a tenant (a tenant without it gets nothing)")
        deny = _patterns(check, fields["deny"], join(item_path, "deny"), servers) if "deny" in fields else ()
        calls = 0
        if "calls_per_minute" in fields:
            calls = (
                check.integer(fields["calls_per_minute"], join(item_path, "calls_per_minute"), 1, MAX_CALLS_PER_MINUTE)
                or 0
            )
        if len(check.problems) == before and who[1]:
            out.append(McpGrantSpec(tenant, key_id, allow, deny, calls))
    return out


def _patterns(check: Checker, at: Located, path: str, servers: set[str]) -> tuple[str, ...]:
    out: list[str] = []
    for index, item in enumerate(check.sequence(at, path)):
        pattern = _pattern(check, item, join(path, index), servers)
        if pattern is not None:
            out.append(pattern)
    return tuple(out)


def _pattern(check: Checker, at: Located, path: str, servers: set[str]) -> str | None:
    """``server`` or ``server/tool``, either part a glob (fnmatch, case-sensitive); a server part
    without glob characters must name a server of ``mcp.servers``."""
    text = check.string(at, path)
    if text is None:
        return None
    if any(c.isspace() for c in text):
        check.problem(at, path, f"{text!r} must not hold spaces")
        return None
    server, slash, tool = text.partition("/")
    if not _GLOB_SERVER.match(server):
        check.problem(
            at, path, f"{text!r}: the server part {server!r} must be a server name or a glob of one (* ? [...])"
        )
        return None
    if slash and not tool:
        check.problem(at, path, f"{text!r} names no tool: write {server}/* for its tools, or {server} for the server")
        return None
    if not _brackets_closed(text):
        check.problem(at, path, f"{text!r} has a [ without its closing ]")
        return None
    if _GLOB_CHARS.isdisjoint(server):
        if server not in servers:
            hint = closest(server, tuple(sorted(servers)))
            suffix = f" (did you mean {hint!r}?)" if hint else ""
            check.problem(at, path, f"no server named {server!r} in mcp.servers{suffix}")
            return None
    elif not any(fnmatchcase(name, server) for name in servers):
        check.warning(at, path, f"{text!r} matches no server in mcp.servers")
    return text


def _brackets_closed(text: str) -> bool:
    """fnmatch reads a [ without its ] as a literal [: surely a typo in a policy."""
    index = 0
    while (start := text.find("[", index)) != -1:
        end = text.find("]", start + 2 if text[start + 1 : start + 2] in ("!", "]") else start + 1)
        if end == -1:
            return False
        index = end + 1
    return True
