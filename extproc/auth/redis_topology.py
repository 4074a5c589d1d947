"""Which Redis deployment a limits URL names, parsed without I/O (``redis_limits.connect`` builds the
client from it):

    redis://[[user]:password@]host:port/db          one server; any URL redis-py takes (rediss://, unix://)
    redis+sentinel://[[user]:password@]host:port,host:port/service[/db]
                                                    the master the sentinels name for ``service``
    redis+cluster://[[user]:password@]host:port,host:port
                                                    a Redis Cluster, found from any of these nodes

The credentials are those of the data nodes (the master, the cluster's nodes); the sentinels are
asked without them. A port left out is 26379 for a sentinel, 6379 otherwise. Error messages show
the URL with its password masked, and the parsed target does not print it either.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import unquote


class Topology(enum.StrEnum):
    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


SCHEMES = {
    "redis": Topology.SINGLE,
    "rediss": Topology.SINGLE,
    "unix": Topology.SINGLE,
    "redis+sentinel": Topology.SENTINEL,
    "redis+cluster": Topology.CLUSTER,
}
DEFAULT_PORTS = {Topology.SENTINEL: 26379, Topology.CLUSTER: 6379}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed limits URL. For ``SINGLE`` only the topology is filled: redis-py parses the URL."""

    topology: Topology
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    topology = SCHEMES.get(scheme.lower()) if sep else None
    if topology is None:
        raise _error(url, f"the scheme must be one of {', '.join(SCHEMES)}")
    if topology is Topology.SINGLE:
        return RedisTarget(topology)
    # Everything before the last "@" is user info, so a password may hold "/", "?" or "#".
    userinfo, at, location = rest.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    if "?" in location or "#" in location:
        raise _error(url, "query options are not supported here; pass them to connect()")
    hosts, _, path = location.partition("/")
    nodes = tuple(_node(url, part, DEFAULT_PORTS[topology]) for part in hosts.split(","))
    segments = path.split("/") if path else []
    if topology is Topology.CLUSTER:
        if segments not in ([], ["0"]):
            raise _error(url, "a cluster has only database 0 and takes no path")
        return RedisTarget(topology, nodes, username=username, password=password)
    if not segments or not segments[0] or len(segments) > 2:
        raise _error(url, "expected /<service name>[/<db>] after the sentinels")
    db = _db(url, segments[1]) if len(segments) == 2 and segments[1] else 0
    return RedisTarget(topology, nodes, unquote(segments[0]), db, username, password)


def redact(url: str) -> str:
    """The URL with the password (whatever follows the first ':' of the user info) masked."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, location = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}{sep}{user}:***@{location}"


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    # As redis-py reads redis://: "user@" is a user name, ":secret@" a password alone.
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _node(url: str, text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:6379
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise _error(url, f"bad IPv6 address {text!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _error(url, "every node needs a host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _error(url, f"bad port {port_text!r}")
    return host, int(port_text)


def _db(url: str, text: str) -> int:
    if not text.isdigit():
        raise _error(url, f"the database must be a number, got {text!r}")
    return int(text)


def _error(url: str, reason: str) -> ValueError:
    return ValueError(f"Redis URL {redact(url)!r}: {reason}")
