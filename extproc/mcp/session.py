"""One client's gateway session: its upstream sessions, the ids in flight, expiry; to and from bytes.

The session is a plain mutable record, changed only by ``extproc.mcp.router`` (which says when it
changed, so the caller knows to store it). It holds everything a second gateway replica needs to
carry on a client's session (issue 23: "a client session survives landing on another replica"):

- the negotiated revision and what the client declared at initialize (replayed when an upstream
  session has to be opened or re-opened, lazily, on first use of that server);
- per upstream: its session id (``Mcp-Session-Id`` it gave us, None for a stateless server or a
  stdio one) and revision; and whether we already re-initialized it once since its last success;
- requests in flight to upstreams, keyed by the id we gave them upstream (``<session>:<n>``:
  unique across sessions, so one stdio process can serve many sessions without id clashes),
  with the client's own id and progress token to restore on the way back;
- requests an upstream sent to the client (sampling, elicitation, roots/list), keyed by the id we
  gave them client-side (``s<n>``), with the upstream's own id to restore on the client's answer.

Time is passed in (seconds, any monotonic-enough clock shared by replicas, e.g. unix time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from extproc.mcp.jsonrpc import RequestId, is_request_id

FORMAT_VERSION = 1
DEFAULT_IDLE_TTL_S = 3600.0


class SessionDecodeError(ValueError):
    """Stored bytes that are not a session we wrote: treat as an unknown session (404)."""


@dataclass
class UpstreamSession:
    session_id: str | None
    protocol_version: str
    reinitialized: bool = False  # re-opened once after a 404 and not yet used successfully since


@dataclass
class InFlight:
    """A client request forwarded upstream, by the id we gave it there."""

    server: str
    client_id: RequestId
    method: str
    progress_token: RequestId | None = None
    name: str | None = None  # the tool/prompt/URI, unprefixed (for audit and retries)


@dataclass
class ServerRequest:
    """A request an upstream sent to the client, by the id we gave it client-side."""

    server: str
    upstream_id: RequestId
    progress_token: RequestId | None = None


class LostUpstream(Enum):
    REINITIALIZE = "reinitialize"  # open a fresh upstream session and send the request again
    GIVE_UP = "give_up"  # it was re-opened already: answer the client with an error


@dataclass
class Session:
    id: str
    protocol_version: str
    created_at: float
    last_seen: float
    idle_ttl_s: float = DEFAULT_IDLE_TTL_S
    client_info: dict[str, Any] = field(default_factory=dict)
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    initialized: bool = False  # the client sent notifications/initialized
    upstreams: dict[str, UpstreamSession] = field(default_factory=dict)
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    server_requests: dict[str, ServerRequest] = field(default_factory=dict)
    counter: int = 0
    # last_seen as last written to the store (not serialised itself: it is last_seen on read).
    _stored_last_seen: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._stored_last_seen = self.last_seen

    # --- time -------------------------------------------------------------------------------------

    def expired(self, now: float) -> bool:
        return now >= self.last_seen + self.idle_ttl_s

    def touch(self, now: float) -> bool:
        """Extend the idle expiry; True when the stored copy is now stale enough to write back.

        The record is rewritten only once ``last_seen`` moved by a tenth of the TTL (at most a
        minute), not on every request: a replica reading the stored copy may then see a session
        expire that much early, never late, and a busy session costs no store write per call.
        """
        if now <= self.last_seen:
            return False  # a replica with a slower clock never moves expiry back
        worth_storing = now - self._stored_last_seen >= min(60.0, self.idle_ttl_s / 10)
        self.last_seen = now
        if worth_storing:
            self._stored_last_seen = now
        return worth_storing

    # --- ids ----------------------------------------------------------------------------------------

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def forward_id(self, entry: InFlight) -> str:
        """Record a request going upstream; return the id (and progress token) it carries there."""
        upstream_id = f"{self.id}:{self._next()}"
        self.in_flight[upstream_id] = entry
        return upstream_id

    def finish(self, upstream_id: object) -> InFlight | None:
        return self.in_flight.pop(upstream_id, None) if isinstance(upstream_id, str) else None

    def in_flight_for_client_id(self, client_id: object) -> tuple[str, InFlight] | None:
        for upstream_id, entry in self.in_flight.items():
            # JSON ids compare by type too: "1" and 1 are different requests.
            if type(entry.client_id) is type(client_id) and entry.client_id == client_id:
                return upstream_id, entry
        return None

    def in_flight_for_progress(self, upstream_token: object) -> InFlight | None:
        # The upstream-side progress token is the upstream request id (see router.forward).
        return self.in_flight.get(upstream_token) if isinstance(upstream_token, str) else None

    def server_request_id(self, entry: ServerRequest) -> str:
        gateway_id = f"s{self._next()}"
        self.server_requests[gateway_id] = entry
        return gateway_id

    # --- upstream sessions --------------------------------------------------------------------------

    def upstream_opened(self, server: str, session_id: str | None, protocol_version: str) -> None:
        """The I/O layer finished initialize + notifications/initialized with ``server``."""
        previous = self.upstreams.get(server)
        self.upstreams[server] = UpstreamSession(
            session_id, protocol_version, reinitialized=previous.reinitialized if previous else False
        )

    def upstream_succeeded(self, server: str) -> None:
        if (upstream := self.upstreams.get(server)) is not None:
            upstream.reinitialized = False

    def upstream_lost(self, server: str) -> LostUpstream:
        """The upstream answered 404 for its session (it restarted, or expired us).

        Re-initialize once; if the fresh session is lost again before any success, stop and tell
        the client, rather than loop against a server that keeps forgetting us.
        """
        upstream = self.upstreams.pop(server, None)
        if upstream is not None and upstream.reinitialized:
            return LostUpstream.GIVE_UP
        # A marker, not an open session (no revision): the next upstream_opened keeps its flag,
        # so a second loss before any success is the one that gives up.
        self.upstreams[server] = UpstreamSession(None, "", reinitialized=True)
        return LostUpstream.REINITIALIZE

    def upstream_open(self, server: str) -> UpstreamSession | None:
        upstream = self.upstreams.get(server)
        return upstream if upstream is not None and upstream.protocol_version else None

    # --- bytes (Redis later) ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": FORMAT_VERSION,
                "id": self.id,
                "pv": self.protocol_version,
                "ca": self.created_at,
                "ls": self.last_seen,
                "ttl": self.idle_ttl_s,
                "ci": self.client_info,
                "cc": self.client_capabilities,
                "init": self.initialized,
                "n": self.counter,
                "up": {k: [u.session_id, u.protocol_version, u.reinitialized] for k, u in self.upstreams.items()},
                "fl": {
                    k: [f.server, f.client_id, f.method, f.progress_token, f.name] for k, f in self.in_flight.items()
                },
                "sr": {k: [r.server, r.upstream_id, r.progress_token] for k, r in self.server_requests.items()},
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        try:
            raw = orjson.loads(data)
            if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
                raise SessionDecodeError("not a session of this format")
            session = cls(
                id=_str(raw["id"]),
                protocol_version=_str(raw["pv"]),
                created_at=float(raw["ca"]),
                last_seen=float(raw["ls"]),
                idle_ttl_s=float(raw["ttl"]),
                client_info=_dict(raw["ci"]),
                client_capabilities=_dict(raw["cc"]),
                initialized=bool(raw["init"]),
                counter=int(raw["n"]),
            )
            for name, (sid, pv, again) in _dict(raw["up"]).items():
                session.upstreams[name] = UpstreamSession(_opt_str(sid), _str(pv), bool(again))
            for uid, (server, cid, method, token, item) in _dict(raw["fl"]).items():
                session.in_flight[uid] = InFlight(_str(server), _id(cid), _str(method), _opt_id(token), _opt_str(item))
            for gid, (server, uid, token) in _dict(raw["sr"]).items():
                session.server_requests[gid] = ServerRequest(_str(server), _id(uid), _opt_id(token))
            return session
        except SessionDecodeError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SessionDecodeError(f"corrupt session: {exc}") from exc


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


def _id(value: Any) -> RequestId:
    if not is_request_id(value):
        raise TypeError("expected a request id")
    return value  # type: ignore[no-any-return]


def _opt_id(value: Any) -> RequestId | None:
    return None if value is None else _id(value)


def new_session(
    session_id: str,
    protocol_version: str,
    now: float,
    *,
    client_info: dict[str, Any] | None = None,
    client_capabilities: dict[str, Any] | None = None,
    idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
) -> Session:
    return Session(
        id=session_id,
        protocol_version=protocol_version,
        created_at=now,
        last_seen=now,
        idle_ttl_s=idle_ttl_s,
        client_info=client_info or {},
        client_capabilities=client_capabilities or {},
    )
