"""Several upstream MCP servers merged into one: names, URIs, capabilities, paginated lists.

Naming (docs/mcp.md, "Names"). Every tool and prompt is shown as ``<server>__<name>``; every
resource URI (and resource-template URI template) as ``ccr-mcp://<server>/<original URI>``.

- A server name is letters and digits in runs joined by single ``-`` or ``_``
  (``SERVER_NAME_RE``): it never contains ``__`` and never ends in ``_``. So in
  ``<server>__<name>`` the *first* ``__`` is always the separator, whatever the upstream's own name
  holds (even ``__`` of its own): ``split_name`` is exact, and two different (server, name) pairs
  can never join to the same string (no collisions across servers, by construction).
- A URI is wrapped, not re-encoded: the prefix is literal text ending in ``/`` and a server name has
  no ``/``, so stripping it returns the original byte for byte; and because the prefix holds no
  ``{``, a URI template stays a template whose expansion is the prefix plus the original expansion.
  The result is a valid RFC 3986 URI whenever the original was (the original becomes its path).

The merged lists are served from pages cached per (server, kind, upstream cursor), fetched by the
I/O layer on demand (``NeedPage``) with the gateway's own upstream session. A merged cursor is
opaque to the client and holds the position in the merged walk: server, that server's upstream
cursor, and the offset within that upstream page, so it survives a refresh of other servers.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from extproc.mcp.jsonrpc import INVALID_PARAMS, ProtocolError, negotiate_version

SEPARATOR = "__"
SERVER_NAME_RE = re.compile(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")
URI_SCHEME = "ccr-mcp"
DEFAULT_PAGE_SIZE = 100


class Kind(Enum):
    """The four merged lists: (list method, result member, item member renamed, capability)."""

    TOOLS = ("tools/list", "tools", "name", "tools")
    PROMPTS = ("prompts/list", "prompts", "name", "prompts")
    RESOURCES = ("resources/list", "resources", "uri", "resources")
    RESOURCE_TEMPLATES = ("resources/templates/list", "resourceTemplates", "uriTemplate", "resources")

    @property
    def method(self) -> str:
        return self.value[0]

    @property
    def member(self) -> str:
        return self.value[1]

    @property
    def key_field(self) -> str:
        return self.value[2]

    @property
    def capability(self) -> str:
        return self.value[3]


KIND_BY_METHOD: dict[str, Kind] = {k.method: k for k in Kind}
KIND_BY_LIST_CHANGED: dict[str, tuple[Kind, ...]] = {
    "notifications/tools/list_changed": (Kind.TOOLS,),
    "notifications/prompts/list_changed": (Kind.PROMPTS,),
    "notifications/resources/list_changed": (Kind.RESOURCES, Kind.RESOURCE_TEMPLATES),
}


# --- names and URIs -------------------------------------------------------------------------------


def valid_server_name(server: str) -> bool:
    return SERVER_NAME_RE.fullmatch(server) is not None


def join_name(server: str, name: str) -> str:
    if not valid_server_name(server):
        raise ValueError(f"invalid MCP server name {server!r} (letters, digits, single - or _ between)")
    return f"{server}{SEPARATOR}{name}"


def split_name(prefixed: str) -> tuple[str, str] | None:
    """``<server>__<name>`` -> (server, name); None when the name is not one of ours."""
    server, sep, name = prefixed.partition(SEPARATOR)
    if not sep or not valid_server_name(server):
        return None
    return server, name


def uri_prefix(server: str) -> str:
    if not valid_server_name(server):
        raise ValueError(f"invalid MCP server name {server!r}")
    return f"{URI_SCHEME}://{server}/"


def join_uri(server: str, uri: str) -> str:
    return uri_prefix(server) + uri


def split_uri(prefixed: str) -> tuple[str, str] | None:
    """``ccr-mcp://<server>/<uri>`` -> (server, uri); None when the URI is not one of ours."""
    head = f"{URI_SCHEME}://"
    if not prefixed.startswith(head):
        return None
    server, sep, uri = prefixed[len(head) :].partition("/")
    if not sep or not valid_server_name(server):
        return None
    return server, uri


def prefixed_item(kind: Kind, server: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream's list item as the client sees it (a copy; everything but its key kept)."""
    out = dict(item)
    key = out.get(kind.key_field)
    if isinstance(key, str):
        out[kind.key_field] = join_name(server, key) if kind.key_field == "name" else join_uri(server, key)
    return out


def prefix_content_uris(server: str, content: Any) -> Any:
    """URIs inside content blocks (tool results, prompt messages) made readable through the gateway.

    ``resource_link`` blocks carry ``uri``; embedded ``resource`` blocks carry ``resource.uri``.
    Anything else passes through untouched.
    """
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for block in content:
        if not isinstance(block, dict):
            out.append(block)
            continue
        kind, resource = block.get("type"), block.get("resource")
        if kind == "resource_link" and isinstance(block.get("uri"), str):
            block = {**block, "uri": join_uri(server, block["uri"])}
        elif kind == "resource" and isinstance(resource, dict) and isinstance(resource.get("uri"), str):
            block = {**block, "resource": {**resource, "uri": join_uri(server, resource["uri"])}}
        out.append(block)
    return out


# --- upstream servers and cached pages ------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamInfo:
    """What one upstream said at initialize (the gateway's own probe session)."""

    name: str
    protocol_version: str
    capabilities: Mapping[str, Any]
    server_info: Mapping[str, Any] = field(default_factory=dict)
    instructions: str | None = None

    @classmethod
    def from_initialize_result(cls, name: str, result: Mapping[str, Any]) -> UpstreamInfo:
        caps = result.get("capabilities")
        info = result.get("serverInfo")
        instructions = result.get("instructions")
        return cls(
            name=name,
            protocol_version=str(result.get("protocolVersion", "")),
            capabilities=caps if isinstance(caps, dict) else {},
            server_info=info if isinstance(info, dict) else {},
            instructions=instructions if isinstance(instructions, str) else None,
        )

    def offers(self, kind: Kind) -> bool:
        return kind.capability in self.capabilities


@dataclass(frozen=True)
class Page:
    items: tuple[Mapping[str, Any], ...]
    next_cursor: str | None


@dataclass(frozen=True)
class MergedPage:
    items: tuple[dict[str, Any], ...]
    next_cursor: str | None

    def result(self, kind: Kind) -> dict[str, Any]:
        out: dict[str, Any] = {kind.member: list(self.items)}
        if self.next_cursor is not None:
            out["nextCursor"] = self.next_cursor
        return out


@dataclass(frozen=True)
class NeedPage:
    """The walk reached a page not yet fetched: fetch it with the gateway's session, then retry."""

    server: str
    kind: Kind
    upstream_cursor: str | None

    def request_params(self) -> dict[str, Any]:
        return {} if self.upstream_cursor is None else {"cursor": self.upstream_cursor}


class Lookup(Enum):
    NOT_FOUND = "not_found"  # the server's whole list is cached and the name is not in it
    UNKNOWN = "unknown"  # not all of the list is cached: let the upstream answer


PageKey = tuple[str, Kind, str | None]
Permit = Callable[[str, Mapping[str, Any]], bool]


def encode_cursor(kind: Kind, server: str, upstream_cursor: str | None, offset: int) -> str:
    raw = orjson.dumps({"k": kind.name, "s": server, "c": upstream_cursor, "o": offset})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(token: object, kind: Kind) -> tuple[str, str | None, int] | None:
    """A merged cursor -> (server, upstream cursor, offset); None when it is not one we issued
    for this list (spec: "Invalid cursors SHOULD result in an error with code -32602")."""
    if not isinstance(token, str) or len(token) > 4096:
        return None
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("k") != kind.name:
        return None
    server, ucursor, offset = raw.get("s"), raw.get("c"), raw.get("o")
    if not isinstance(server, str) or not (ucursor is None or isinstance(ucursor, str)):
        return None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    return server, ucursor, offset


@dataclass(frozen=True)
class Catalog:
    """The upstreams in policy order (the merged lists' order) and the pages fetched so far.

    Immutable: ``with_page`` and ``invalidate`` return a new catalog, so a reader never sees a list
    half-refreshed and a snapshot can be shared between requests without locks.
    """

    servers: tuple[UpstreamInfo, ...]
    pages: Mapping[PageKey, Page] = field(default_factory=dict)

    def server(self, name: str) -> UpstreamInfo | None:
        return next((s for s in self.servers if s.name == name), None)

    def with_page(
        self, server: str, kind: Kind, upstream_cursor: str | None, result: Mapping[str, Any]
    ) -> Catalog | ProtocolError:
        """Store one upstream list result; an ill-shaped one is refused (and not cached)."""
        items = result.get(kind.member)
        next_cursor = result.get("nextCursor")
        if not isinstance(items, list) or not (next_cursor is None or isinstance(next_cursor, str)):
            return ProtocolError(-32603, f"upstream {server!r} sent an invalid {kind.method} result", 200)
        kept = tuple(i for i in items if isinstance(i, dict) and isinstance(i.get(kind.key_field), str))
        pages = dict(self.pages)
        pages[(server, kind, upstream_cursor)] = Page(kept, next_cursor)
        return Catalog(self.servers, pages)

    def invalidate(self, server: str, kinds: tuple[Kind, ...]) -> Catalog:
        """After an upstream's list_changed: drop its pages of those kinds (fetched again on demand)."""
        pages = {k: v for k, v in self.pages.items() if not (k[0] == server and k[1] in kinds)}
        return Catalog(self.servers, pages)

    def page(
        self,
        kind: Kind,
        cursor: object,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        reach: Callable[[str], bool] = lambda _s: True,
        permit: Permit = lambda _s, _i: True,
    ) -> MergedPage | NeedPage | ProtocolError:
        """One page of the merged list: at most ``limit`` items the caller may see."""
        offering = [s.name for s in self.servers if s.offers(kind)]
        if cursor is None:
            index, ucursor, offset = 0, None, 0
        else:
            decoded = decode_cursor(cursor, kind)
            if decoded is None or decoded[0] not in offering:
                return ProtocolError(INVALID_PARAMS, "Invalid params: unknown or expired cursor", 200)
            index, ucursor, offset = offering.index(decoded[0]), decoded[1], decoded[2]
        items: list[dict[str, Any]] = []
        seen: set[PageKey] = set()
        while index < len(offering):
            server = offering[index]
            key = (server, kind, ucursor)
            page = self.pages.get(key)
            if not reach(server) or key in seen:  # not the caller's, or an upstream cursor cycle
                index, ucursor, offset = index + 1, None, 0
                continue
            if page is None:
                if items:  # a short page now beats a fetch; the cursor resumes right here
                    return MergedPage(tuple(items), encode_cursor(kind, server, ucursor, 0))
                return NeedPage(server, kind, ucursor)
            seen.add(key)
            while offset < len(page.items):
                if len(items) == limit:
                    return MergedPage(tuple(items), encode_cursor(kind, server, ucursor, offset))
                item = page.items[offset]
                offset += 1
                if permit(server, item):
                    items.append(prefixed_item(kind, server, item))
            if page.next_cursor is not None:
                ucursor, offset = page.next_cursor, 0
            else:
                index, ucursor, offset = index + 1, None, 0
        return MergedPage(tuple(items), None)

    def find(self, kind: Kind, server: str, key: str) -> Mapping[str, Any] | Lookup:
        """One upstream item by its own name/URI, from the cached pages of that server."""
        ucursor: str | None = None
        seen: set[str | None] = set()
        while (page := self.pages.get((server, kind, ucursor))) is not None and ucursor not in seen:
            seen.add(ucursor)
            for item in page.items:
                if item.get(kind.key_field) == key:
                    return item
            if page.next_cursor is None:
                return Lookup.NOT_FOUND
            ucursor = page.next_cursor
        return Lookup.UNKNOWN

    def initialize_result(
        self,
        requested_version: object,
        server_info: Mapping[str, Any],
        *,
        gateway_emits_list_changed: bool = False,
        reach: Callable[[str], bool] = lambda _s: True,
    ) -> dict[str, Any]:
        """The merged ``InitializeResult``: a capability only when an upstream the caller may reach
        offers it; ``listChanged`` only when one of those upstreams sends the notification (we relay
        it) or the gateway itself does (a policy reload changes the lists).

        Not advertised, on purpose: ``logging`` (setLevel would have to fan out to every upstream),
        ``tasks`` (2025-11-25, experimental; needs the task ids mapped) and ``experimental``.
        """
        servers = [s for s in self.servers if reach(s.name)]
        caps: dict[str, Any] = {}
        for cap in ("prompts", "resources", "tools"):
            offering = [s.capabilities[cap] for s in servers if cap in s.capabilities]
            if not offering:
                continue
            entry: dict[str, Any] = {}
            if cap == "resources" and any(isinstance(c, dict) and c.get("subscribe") for c in offering):
                entry["subscribe"] = True
            if gateway_emits_list_changed or any(isinstance(c, dict) and c.get("listChanged") for c in offering):
                entry["listChanged"] = True
            caps[cap] = entry
        if any("completions" in s.capabilities for s in servers):
            caps["completions"] = {}
        result: dict[str, Any] = {
            "protocolVersion": negotiate_version(requested_version),
            "capabilities": caps,
            "serverInfo": dict(server_info),
        }
        notes = [
            f"## {s.name} (tools and prompts prefixed {s.name}{SEPARATOR})\n{s.instructions}"
            for s in servers
            if s.instructions
        ]
        if notes:
            result["instructions"] = "\n\n".join(notes)
        return result
