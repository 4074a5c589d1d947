"""A local double of Consul's HTTP API, faithful where a watcher can tell the difference.

Covered: KV (get/put/delete, ``recurse``, ``keys``/``separator``, ``raw``, ``cas``, ``flags``, 512 KB
limit, tombstones), ``/v1/txn`` for KV, blocking queries (``index``/``wait`` parsed like Consul, 5m
default, 10m cap, wait/16 jitter, woken only by changes to what the query watches), agent service
registration with TTL/HTTP/TCP checks run by the "agent" (TTL expiry, HTTP polling,
DeregisterCriticalServiceAfter), ``/v1/health/service`` (``passing``, ``tag``, ``dc``),
``/v1/catalog/{register,deregister,services,datacenters}``, ``/v1/agent/{self,services,checks}``,
several datacenters (``?dc=``), ACL token enforcement (optional).

Indexes follow Consul's state store: one Raft index per datacenter, incremented per write; a
single-key read reports the KV table's index (the last KV write anywhere) but blocks only on its key;
``recurse`` reports the highest ModifyIndex under the prefix, tombstones included, or the table's
index when the prefix never held anything; health reports the service's own index. Reported indexes
are at least 1, as Consul makes them.

Test hooks (not in Consul): ``snapshot()``/``restore()`` (indexes go backwards and every blocking
query returns, like a real snapshot restore), ``reap_tombstones()``, ``force_index(n)`` (report n,
e.g. 0), ``fail_next(n, status)``, ``drop_next(n)`` (close the connection without an answer),
``ignore_index`` (answer blocking queries at once, like a misbehaving proxy), and ``requests`` (a
log of every request, to count them).

Known differences: no sessions/locks, no anti-entropy after a restore, no Raft or gossip; checks of
services registered through /v1/catalog/register keep the status given; DeregisterCriticalServiceAfter
has no 1-minute minimum and is reaped every ``reap_interval`` instead of every 30 s.

Run standalone: ``python -m tests.consul_double --port 8500``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

MAX_VALUE_BYTES = 512 * 1024
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
PASSING, WARNING, CRITICAL = "passing", "warning", "critical"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """Go's time.ParseDuration (without signs), which is what Consul uses for wait, TTL, Interval."""
    if text == "0":
        return 0.0
    if not text:
        raise ValueError("empty duration")
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total


def _ci(data: Any) -> dict[str, Any]:
    """Consul decodes request bodies case-insensitively and also takes snake_case keys."""
    if not isinstance(data, dict):
        return {}
    return {key.lower().replace("_", ""): value for key, value in data.items()}


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


@dataclass
class _Check:
    node: str
    check_id: str
    name: str
    status: str
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    notes: str = ""
    output: str = ""
    type: str = ""
    create_index: int = 0
    modify_index: int = 0
    # agent-run checks only
    ttl: float = 0.0
    http: str = ""
    tcp: str = ""
    method: str = "GET"
    interval: float = 0.0
    timeout: float = 10.0
    deregister_after: float = 0.0
    ttl_deadline: float = 0.0
    next_run: float = 0.0
    critical_since: float | None = None
    running: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": self.type,
            "Definition": {},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class _Datacenter:
    """One datacenter's state store: its own Raft index, KV, catalog."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.index = 0
        self.kv: dict[str, dict[str, Any]] = {}  # key -> entry (Value as bytes | None)
        self.tombstones: dict[str, int] = {}  # deleted key -> index of the delete
        self.kv_index = 0  # the kvs + tombstones tables' index
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}  # (node, service id) -> service
        self.checks: dict[tuple[str, str], _Check] = {}  # (node, check id) -> check
        self.service_index: dict[str, int] = {}  # service name -> index of its last change
        self.catalog_index = 0
        self.changed = asyncio.Event()

    def next_index(self) -> int:
        self.index += 1
        return self.index

    def notify(self) -> None:
        """Wake every blocking query of this datacenter; each re-checks what it watches."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def touch_services(self, names: set[str], index: int) -> None:
        for name in names:
            self.service_index[name] = index
        self.catalog_index = index

    def state(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kv": copy.deepcopy(self.kv),
            "tombstones": dict(self.tombstones),
            "kv_index": self.kv_index,
            "nodes": copy.deepcopy(self.nodes),
            "services": copy.deepcopy(self.services),
            "checks": copy.deepcopy(self.checks),
            "service_index": dict(self.service_index),
            "catalog_index": self.catalog_index,
        }

    def load(self, state: dict[str, Any]) -> None:
        for key, value in copy.deepcopy(state).items():
            setattr(self, key, value)


@dataclass(frozen=True)
class Snapshot:
    states: dict[str, dict[str, Any]]


class _Abandoned(Exception):
    """A snapshot was restored while a query blocked: Consul returns it at once."""


class ConsulDouble:
    def __init__(
        self,
        datacenter: str = "dc1",
        *,
        node_name: str = "double-node",
        node_address: str = "127.0.0.1",
        node_meta: dict[str, str] | None = None,
        other_datacenters: tuple[str, ...] = (),
        acl_token: str | None = None,
        jitter: bool = True,
        reap_interval: float = 0.2,
    ) -> None:
        self.datacenter = datacenter
        self.node_name = node_name
        self.acl_token = acl_token
        self.jitter = jitter
        self.reap_interval = reap_interval
        self.dcs: dict[str, _Datacenter] = {}
        for name in (datacenter, *other_datacenters):
            self.add_datacenter(name)
        self._register_node(
            self.dcs[datacenter], {"Node": node_name, "Address": node_address, "NodeMeta": node_meta or {}}
        )
        self.requests: list[tuple[float, str, str, str]] = []  # (time, method, path, query)
        self._fail: list[tuple[int, str]] = []  # (status, path prefix) per request to fail
        self._drop: list[str] = []
        self._forced_index: int | None = None
        self.ignore_index = False
        self._generation = 0  # bumped by restore(): blocking queries return
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._check_tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * MAX_VALUE_BYTES)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = self._runner.addresses
        bound = sockets[0][1] if sockets else port
        self.url = f"http://{host}:{bound}"
        self._ticker = asyncio.create_task(self._tick_forever())
        return self.url

    async def stop(self) -> None:
        self._generation += 1
        for dc in self.dcs.values():
            dc.notify()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._check_tasks):
            task.cancel()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def address(self) -> str:
        return self.url

    # --- test hooks --------------------------------------------------------------------------

    def add_datacenter(self, name: str) -> None:
        self.dcs.setdefault(name, _Datacenter(name))

    def snapshot(self) -> Snapshot:
        return Snapshot({name: dc.state() for name, dc in self.dcs.items()})

    def restore(self, snapshot: Snapshot) -> None:
        """Like `consul snapshot restore`: state and indexes go back; blocking queries return."""
        for name, state in snapshot.states.items():
            self.dcs[name].load(state)
        self._generation += 1
        for dc in self.dcs.values():
            dc.notify()

    def reap_tombstones(self, datacenter: str | None = None) -> None:
        """Consul's tombstone GC: recurse indexes of prefixes that only held deleted keys go back."""
        dc = self.dcs[datacenter or self.datacenter]
        dc.tombstones.clear()

    def force_index(self, value: int | None) -> None:
        """Report this X-Consul-Index on every read (None: the real one)."""
        self._forced_index = value
        for dc in self.dcs.values():
            dc.notify()

    def fail_next(self, count: int = 1, status: int = 500, path: str = "/v1/") -> None:
        self._fail.extend([(status, path)] * count)

    def drop_next(self, count: int = 1, path: str = "/v1/") -> None:
        self._drop.extend([path] * count)

    def count(self, method: str = "GET", path: str = "", since: float = 0.0) -> int:
        return sum(1 for t, m, p, _ in self.requests if t >= since and m == method and p.startswith(path))

    def put(self, key: str, value: str | bytes | None, datacenter: str | None = None) -> int:
        """Write a key without HTTP (same rules and index as a PUT). Returns its ModifyIndex."""
        dc = self.dcs[datacenter or self.datacenter]
        data = value.encode() if isinstance(value, str) else value
        index = dc.next_index()
        self._kv_set(dc, key, data, 0, index)
        dc.notify()
        return index

    def delete(self, key: str, datacenter: str | None = None) -> None:
        dc = self.dcs[datacenter or self.datacenter]
        if key in dc.kv:
            index = dc.next_index()
            self._kv_delete(dc, key, index)
            dc.notify()

    def get(self, key: str, datacenter: str | None = None) -> bytes | None:
        entry = self.dcs[datacenter or self.datacenter].kv.get(key)
        return None if entry is None else entry["Value"]

    def set_check_status(self, check_id: str, status: str, output: str = "", node: str | None = None) -> None:
        dc = self.dcs[self.datacenter]
        self._set_status(dc, dc.checks[(node or self.node_name, check_id)], status, output)

    # --- plumbing ---------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/kv/{key:.*}", self._kv_get)
        r.add_put("/v1/kv/{key:.*}", self._kv_put)
        r.add_delete("/v1/kv/{key:.*}", self._kv_delete_handler)
        r.add_put("/v1/txn", self._txn)
        r.add_put("/v1/agent/service/register", self._agent_register)
        r.add_put("/v1/agent/service/deregister/{id}", self._agent_deregister)
        r.add_put("/v1/agent/check/{verb:pass|warn|fail}/{id}", self._agent_ttl)
        r.add_put("/v1/agent/check/update/{id}", self._agent_check_update)
        r.add_get("/v1/agent/self", self._agent_self)
        r.add_get("/v1/agent/services", self._agent_services)
        r.add_get("/v1/agent/checks", self._agent_checks)
        r.add_get("/v1/health/service/{name}", self._health_service)
        r.add_get("/v1/catalog/services", self._catalog_services)
        r.add_get("/v1/catalog/datacenters", self._catalog_datacenters)
        r.add_put("/v1/catalog/register", self._catalog_register)
        r.add_put("/v1/catalog/deregister", self._catalog_deregister)
        r.add_get("/v1/status/leader", self._status_leader)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((time.monotonic(), request.method, request.path, request.query_string))
        for position, path in enumerate(self._drop):
            if request.path.startswith(path):
                del self._drop[position]
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # nothing goes back on a dropped connection
        for position, (status, path) in enumerate(self._fail):
            if request.path.startswith(path):
                del self._fail[position]
                return web.Response(status=status, text="injected failure (consul double)")
        if self.acl_token is not None:
            token = request.headers.get("X-Consul-Token") or request.query.get("token")
            bearer = request.headers.get("Authorization", "")
            if bearer.startswith("Bearer "):
                token = token or bearer[7:]
            if token != self.acl_token:
                return web.Response(status=403, text="Permission denied")
        try:
            response = await handler(request)
        except _BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        except _Abandoned:
            return web.Response(status=500, text="query abandoned")
        response.headers.setdefault("X-Consul-Effective-Consistency", "leader")
        return response

    def _dc(self, request: web.Request) -> _Datacenter:
        name = request.query.get("dc") or self.datacenter
        if name not in self.dcs:
            raise web.HTTPInternalServerError(text="No path to datacenter")
        return self.dcs[name]

    def _reported(self, index: int) -> int:
        if self._forced_index is not None:
            return self._forced_index
        return max(index, 1)  # Consul never answers a blocking query with index 0

    def _read_response(self, index: int, body: Any, status: int = 200, raw: bytes | None = None) -> web.Response:
        headers = {
            "X-Consul-Index": str(self._reported(index)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
        if raw is not None:
            return web.Response(status=status, body=raw, headers=headers)
        if status == 404:
            return web.Response(status=404, headers=headers)
        return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)

    async def _blocking(
        self, request: web.Request, dc: _Datacenter, evaluate: Callable[[], tuple[int, Any, Any]]
    ) -> tuple[int, Any]:
        """Consul's blockingQuery: evaluate() -> (index to report, what the query watches, result).

        Returns at once without a positive ``index`` or when the reported index is past it; else
        waits until what the query watches changes (and its index is then past ``index``) or the
        wait (plus jitter) elapses. A restore abandons the wait."""
        min_index, wait = _query_params(request)
        index, watched, result = evaluate()
        if min_index == 0 or self._reported(index) > min_index or self.ignore_index:
            return index, result
        if wait <= 0:
            wait = DEFAULT_WAIT
        wait = min(wait, MAX_WAIT)
        if self.jitter:
            wait += random.uniform(0, wait / 16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        generation = self._generation
        while True:
            event = dc.changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                return index, result
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                index, _, result = evaluate()
                return index, result
            if self._generation != generation:
                index, _, result = evaluate()
                return index, result
            index, now_watched, result = evaluate()
            if now_watched != watched:
                watched = now_watched
                if self._reported(index) > min_index:
                    return index, result

    # --- KV ---------------------------------------------------------------------------------

    def _kv_set(self, dc: _Datacenter, key: str, value: bytes | None, flags: int, index: int) -> dict[str, Any]:
        entry = dc.kv.get(key)
        if entry is None:
            entry = {"LockIndex": 0, "Key": key, "Flags": flags, "Value": value, "CreateIndex": index}
            dc.kv[key] = entry
        entry.update(Flags=flags, Value=value, ModifyIndex=index)
        dc.tombstones.pop(key, None)
        dc.kv_index = index
        return entry

    def _kv_delete(self, dc: _Datacenter, key: str, index: int) -> None:
        del dc.kv[key]
        dc.tombstones[key] = index
        dc.kv_index = index

    @staticmethod
    def _entry_json(entry: dict[str, Any], with_value: bool = True) -> dict[str, Any]:
        out = {k: entry[k] for k in ("LockIndex", "Key", "Flags", "CreateIndex", "ModifyIndex")}
        out["Value"] = _b64(entry["Value"]) if with_value else None
        return out

    def _prefix_index(self, dc: _Datacenter, prefix: str) -> int:
        indexes = [e["ModifyIndex"] for k, e in dc.kv.items() if k.startswith(prefix)]
        indexes += [i for k, i in dc.tombstones.items() if k.startswith(prefix)]
        return max(indexes, default=0)

    async def _kv_get(self, request: web.Request) -> web.Response:
        dc = self._dc(request)
        key = request.match_info["key"]
        query = request.query
        if "recurse" in query or "keys" in query:
            prefix = key

            def evaluate() -> tuple[int, Any, Any]:
                own = self._prefix_index(dc, prefix)
                entries = sorted((k, e) for k, e in dc.kv.items() if k.startswith(prefix))
                return own or dc.kv_index, own, entries

            index, entries = await self._blocking(request, dc, evaluate)
            if not entries:
                return self._read_response(index, None, 404)
            if "keys" in query:
                separator = query.get("separator", "")
                keys: list[str] = []
                for k, _ in entries:
                    if separator:
                        cut = k.find(separator, len(prefix))
                        k = k[: cut + len(separator)] if cut >= 0 else k
                    if not keys or keys[-1] != k:
                        keys.append(k)
                return self._read_response(index, keys)
            return self._read_response(index, [self._entry_json(e) for _, e in entries])

        def evaluate_one() -> tuple[int, Any, Any]:
            entry = dc.kv.get(key)
            watched = entry["ModifyIndex"] if entry else dc.tombstones.get(key, 0)
            return dc.kv_index, watched, entry

        index, entry = await self._blocking(request, dc, evaluate_one)
        if entry is None:
            return self._read_response(index, None, 404)
        if "raw" in query:
            return self._read_response(index, None, raw=entry["Value"] or b"")
        return self._read_response(index, [self._entry_json(entry)])

    async def _kv_put(self, request: web.Request) -> web.Response:
        dc = self._dc(request)
        key = request.match_info["key"]
        query = request.query
        if "acquire" in query or "release" in query:
            raise _BadRequest("sessions are not supported by the consul double")
        body = await request.read()
        if len(body) > MAX_VALUE_BYTES:
            return web.Response(status=413, text=f"Value exceeds {MAX_VALUE_BYTES} byte limit")
        flags = _uint(query, "flags")
        cas = _uint(query, "cas") if "cas" in query else None
        entry = dc.kv.get(key)
        if cas is not None and ((cas == 0 and entry is not None) or (cas and (entry or {}).get("ModifyIndex") != cas)):
            return _json(False)
        self._kv_set(dc, key, body, flags, dc.next_index())
        dc.notify()
        return _json(True)

    async def _kv_delete_handler(self, request: web.Request) -> web.Response:
        dc = self._dc(request)
        key = request.match_info["key"]
        query = request.query
        if "recurse" in query:
            doomed = [k for k in dc.kv if k.startswith(key)]
        elif "cas" in query:
            entry = dc.kv.get(key)
            if entry is None or entry["ModifyIndex"] != _uint(query, "cas"):
                return _json(False)
            doomed = [key]
        else:
            doomed = [key] if key in dc.kv else []
        if doomed:
            index = dc.next_index()
            for k in doomed:
                self._kv_delete(dc, k, index)
            dc.notify()
        return _json(True)

    async def _txn(self, request: web.Request) -> web.Response:
        """KV verbs of /v1/txn, all or nothing, one Raft index for the whole transaction."""
        dc = self._dc(request)
        try:
            ops = json.loads(await request.read() or b"[]")
        except json.JSONDecodeError as exc:
            raise _BadRequest(f"Failed to parse body: {exc}") from None
        if not isinstance(ops, list) or len(ops) > 128:
            raise _BadRequest("Transaction contains too many operations" if isinstance(ops, list) else "bad body")
        kv = copy.deepcopy(dc.kv)
        tombstones = dict(dc.tombstones)
        index = dc.index + 1
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        wrote = False
        for position, op in enumerate(ops):
            spec = _ci(_ci(op).get("kv"))
            verb, key = spec.get("verb", ""), spec.get("key", "")
            entry = kv.get(key)
            value = base64.b64decode(spec["value"]) if spec.get("value") is not None else None
            cas = int(spec.get("index") or 0)
            fail = ""
            if verb in ("set", "cas"):
                if verb == "cas" and ((cas == 0 and entry) or (cas and (entry or {}).get("ModifyIndex") != cas)):
                    fail = f'failed to set key "{key}", index is stale'
                else:
                    if entry is None:
                        entry = {"LockIndex": 0, "Key": key, "CreateIndex": index}
                        kv[key] = entry
                    entry.update(Flags=int(spec.get("flags") or 0), Value=value, ModifyIndex=index)
                    tombstones.pop(key, None)
                    wrote = True
                    results.append({"KV": self._entry_json(entry, with_value=False)})
            elif verb == "get":
                if entry is None:
                    fail = f'key "{key}" doesn\'t exist'
                else:
                    results.append({"KV": self._entry_json(entry)})
            elif verb == "get-tree":
                results.extend({"KV": self._entry_json(e)} for k, e in sorted(kv.items()) if k.startswith(key))
            elif verb == "check-index":
                if entry is None or entry["ModifyIndex"] != cas:
                    fail = f"current modify index {(entry or {}).get('ModifyIndex', 0)} != {cas}"
                else:
                    results.append({"KV": self._entry_json(entry, with_value=False)})
            elif verb == "check-not-exists":
                if entry is not None:
                    fail = f'key "{key}" exists'
            elif verb in ("delete", "delete-cas", "delete-tree"):
                if verb == "delete-cas" and (entry is None or entry["ModifyIndex"] != cas):
                    fail = f'failed to delete key "{key}", index is stale'
                else:
                    doomed = [k for k in kv if k.startswith(key)] if verb == "delete-tree" else [key] * bool(entry)
                    for k in doomed:
                        del kv[k]
                        tombstones[k] = index
                        wrote = True
            else:
                fail = f"unknown KV verb {verb!r}"
            if fail:
                errors.append({"OpIndex": position, "What": fail})
        if errors:
            return web.Response(
                status=409, text=json.dumps({"Results": None, "Errors": errors}), content_type="application/json"
            )
        if wrote:
            dc.index = index
            dc.kv, dc.tombstones, dc.kv_index = kv, tombstones, index
            dc.notify()
        return _json({"Results": results, "Errors": None})

    # --- agent: services and their checks -------------------------------------------------------

    def _register_node(self, dc: _Datacenter, spec: dict[str, Any]) -> int:
        node = _ci(spec)
        name = node.get("node") or ""
        existing = dc.nodes.get(name)
        index = dc.next_index()
        record = {
            "ID": (existing or {}).get("ID") or node.get("id") or str(uuid.uuid4()),
            "Node": name,
            "Address": node.get("address") or (existing or {}).get("Address", ""),
            "Datacenter": dc.name,
            "TaggedAddresses": node.get("taggedaddresses") or {},
            "Meta": node.get("nodemeta") or (existing or {}).get("Meta") or {},
            "CreateIndex": (existing or {}).get("CreateIndex", index),
            "ModifyIndex": index,
        }
        dc.nodes[name] = record
        if existing is None:
            dc.checks[(name, "serfHealth")] = _Check(
                name,
                "serfHealth",
                "Serf Health Status",
                PASSING,
                output="Agent alive and reachable",
                create_index=index,
                modify_index=index,
            )
        dc.touch_services({s["Service"] for (n, _), s in dc.services.items() if n == name}, index)
        return index

    def _add_service(self, dc: _Datacenter, node: str, spec: dict[str, Any], index: int) -> dict[str, Any]:
        svc = _ci(spec)
        name = svc.get("name") or svc.get("service")
        if not name:
            raise _BadRequest("Missing service name")
        service_id = svc.get("id") or name
        weights = _ci(svc.get("weights"))
        existing = dc.services.get((node, service_id))
        service = {
            "ID": service_id,
            "Service": name,
            "Tags": list(svc.get("tags") or []),
            "Address": svc.get("address") or "",
            "Meta": dict(svc.get("meta") or {}),
            "Port": int(svc.get("port") or 0),
            "Weights": {"Passing": int(weights.get("passing", 1)), "Warning": int(weights.get("warning", 1))},
            "EnableTagOverride": bool(svc.get("enabletagoverride", False)),
            "CreateIndex": (existing or {}).get("CreateIndex", index),
            "ModifyIndex": index,
        }
        if service["Weights"]["Passing"] < 1:
            raise _BadRequest("Passing must be greater than 0")
        if svc.get("socketpath"):
            service["SocketPath"] = svc["socketpath"]
        if svc.get("locality"):
            locality = _ci(svc["locality"])
            service["Locality"] = {"Region": locality.get("region", ""), "Zone": locality.get("zone", "")}
        dc.services[(node, service_id)] = service
        touched = {name}
        if existing is not None:
            touched.add(existing["Service"])
        dc.touch_services(touched, index)
        return service

    def _add_check(
        self, dc: _Datacenter, node: str, spec: dict[str, Any], default_id: str, service: dict[str, Any] | None
    ) -> _Check:
        c = _ci(spec)
        check_id = c.get("checkid") or c.get("id") or default_id
        existing = dc.checks.get((node, check_id))
        index = dc.index
        check = _Check(
            node,
            check_id,
            c.get("name") or (f"Service '{service['Service']}' check" if service else check_id),
            c.get("status") or (existing.status if existing else CRITICAL),
            service_id=service["ID"] if service else "",
            service_name=service["Service"] if service else "",
            service_tags=list(service["Tags"]) if service else [],
            notes=c.get("notes") or "",
            output=existing.output if existing else "",
            create_index=existing.create_index if existing else index,
            modify_index=index,
        )
        if c.get("status") not in (None, PASSING, WARNING, CRITICAL):
            raise _BadRequest(f"Invalid check status: {c.get('status')!r}")
        now = time.monotonic()
        try:
            if c.get("ttl"):
                check.type, check.ttl = "ttl", go_duration(str(c["ttl"]))
                check.ttl_deadline = now + check.ttl
            elif c.get("http") or c.get("tcp"):
                check.type = "http" if c.get("http") else "tcp"
                check.http, check.tcp = c.get("http") or "", c.get("tcp") or ""
                check.method = c.get("method") or "GET"
                check.interval = go_duration(str(c.get("interval") or ""))
                check.timeout = go_duration(str(c["timeout"])) if c.get("timeout") else 10.0
                check.next_run = now  # the agent runs a new check right away
            if c.get("deregistercriticalserviceafter"):
                check.deregister_after = go_duration(str(c["deregistercriticalserviceafter"]))
        except ValueError as exc:
            raise _BadRequest(f"Invalid check: {exc}") from None
        if check.status == CRITICAL:
            check.critical_since = now
        dc.checks[(node, check_id)] = check
        return check

    async def _agent_register(self, request: web.Request) -> web.Response:
        dc = self.dcs[self.datacenter]
        try:
            spec = json.loads(await request.read() or b"{}")
        except json.JSONDecodeError as exc:
            raise _BadRequest(f"Request decode failed: {exc}") from None
        svc = _ci(spec)
        checks = list(svc.get("checks") or [])
        if svc.get("check"):
            checks.insert(0, svc["check"])
        service_id = svc.get("id") or svc.get("name")
        index = dc.next_index()
        # Re-registering replaces the service; checks not given again are dropped only on request.
        if request.query.get("replace-existing-checks") in ("true", "1"):
            for key in [k for k, c in dc.checks.items() if k[0] == self.node_name and c.service_id == service_id]:
                del dc.checks[key]
        service = self._add_service(dc, self.node_name, spec, index)
        for position, check in enumerate(checks):
            default = f"service:{service['ID']}" + (f":{position + 1}" if len(checks) > 1 else "")
            self._add_check(dc, self.node_name, check, default, service)
        dc.notify()
        return web.Response(status=200)

    def _remove_service(self, dc: _Datacenter, node: str, service_id: str) -> bool:
        service = dc.services.pop((node, service_id), None)
        if service is None:
            return False
        for key in [k for k, c in dc.checks.items() if k[0] == node and c.service_id == service_id]:
            del dc.checks[key]
        dc.touch_services({service["Service"]}, dc.next_index())
        dc.notify()
        return True

    async def _agent_deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if not self._remove_service(self.dcs[self.datacenter], self.node_name, service_id):
            return web.Response(
                status=404,
                text=f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.',
            )
        return web.Response(status=200)

    def _set_status(self, dc: _Datacenter, check: _Check, status: str, output: str) -> None:
        check.output = output
        if check.status == status:
            return  # the agent syncs output-only changes lazily; no write, no index change
        check.status = status
        check.critical_since = time.monotonic() if status == CRITICAL else None
        check.modify_index = dc.next_index()
        services = {s["Service"] for (n, sid), s in dc.services.items() if n == check.node}
        if check.service_id:
            services = {check.service_name}
        dc.touch_services(services, check.modify_index)
        dc.notify()

    async def _agent_ttl(self, request: web.Request) -> web.Response:
        dc = self.dcs[self.datacenter]
        check = dc.checks.get((self.node_name, request.match_info["id"]))
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        if check.type != "ttl":
            return web.Response(status=500, text=f"CheckID {check.check_id!r} does not have associated TTL")
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[request.match_info["verb"]]
        check.ttl_deadline = time.monotonic() + check.ttl
        self._set_status(dc, check, status, request.query.get("note", ""))
        return web.Response(status=200)

    async def _agent_check_update(self, request: web.Request) -> web.Response:
        dc = self.dcs[self.datacenter]
        check = dc.checks.get((self.node_name, request.match_info["id"]))
        if check is None or check.type != "ttl":
            return web.Response(status=404, text=f'Unknown check ID "{request.match_info["id"]}"')
        body = _ci(json.loads(await request.read() or b"{}"))
        status = body.get("status", "")
        if status not in (PASSING, WARNING, CRITICAL):
            raise _BadRequest(f'Invalid check status: "{status}"')
        check.ttl_deadline = time.monotonic() + check.ttl
        self._set_status(dc, check, status, body.get("output", ""))
        return web.Response(status=200)

    async def _agent_self(self, request: web.Request) -> web.Response:
        node = self.dcs[self.datacenter].nodes[self.node_name]
        return _json(
            {
                "Config": {
                    "Datacenter": self.datacenter,
                    "NodeName": self.node_name,
                    "NodeID": node["ID"],
                    "Version": "1.20.0-double",
                },
                "Member": {"Name": self.node_name, "Addr": node["Address"], "Status": 1},
                "Meta": node["Meta"],
            }
        )

    async def _agent_services(self, request: web.Request) -> web.Response:
        dc = self.dcs[self.datacenter]
        out = {}
        for (node, service_id), service in dc.services.items():
            if node == self.node_name:
                out[service_id] = {k: v for k, v in service.items() if not k.endswith("Index")}
                out[service_id]["Datacenter"] = self.datacenter
        return _json(out)

    async def _agent_checks(self, request: web.Request) -> web.Response:
        dc = self.dcs[self.datacenter]
        checks = {c.check_id: c.to_json() for (node, _), c in dc.checks.items() if node == self.node_name}
        checks.pop("serfHealth", None)
        return _json(checks)

    # --- the agent's check runner ------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        dc = self.dcs[self.datacenter]
        for check in list(dc.checks.values()):
            if check.node != self.node_name:
                continue
            if check.type == "ttl" and now >= check.ttl_deadline and check.status != CRITICAL:
                self._set_status(dc, check, CRITICAL, "TTL expired")
            elif check.type in ("http", "tcp") and check.interval and now >= check.next_run and not check.running:
                check.running = True
                check.next_run = now + check.interval
                task = asyncio.create_task(self._run_check(dc, check))
                self._check_tasks.add(task)
                task.add_done_callback(self._check_tasks.discard)
            if (
                check.deregister_after
                and check.service_id
                and check.critical_since is not None
                and now - check.critical_since >= check.deregister_after
            ):
                self._remove_service(dc, check.node, check.service_id)

    async def _run_check(self, dc: _Datacenter, check: _Check) -> None:
        try:
            if check.type == "tcp":
                host, _, port = check.tcp.rpartition(":")
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), check.timeout)
                    writer.close()
                    status, output = PASSING, f"TCP connect {check.tcp}: Success"
                except (OSError, TimeoutError) as exc:
                    status, output = CRITICAL, f"dial tcp {check.tcp}: {exc}"
            else:
                if self._http is None:
                    self._http = aiohttp.ClientSession()
                try:
                    timeout = aiohttp.ClientTimeout(total=check.timeout)
                    async with self._http.request(check.method, check.http, timeout=timeout) as response:
                        body = (await response.read())[:4096].decode(errors="replace")
                    code = response.status
                    status = PASSING if 200 <= code < 300 else WARNING if code == 429 else CRITICAL
                    output = f"HTTP {check.method} {check.http}: {code} {response.reason} Output: {body}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status, output = CRITICAL, f"Get {check.http!r}: {exc}"
            if dc.checks.get((check.node, check.check_id)) is check:
                self._set_status(dc, check, status, output)
        finally:
            check.running = False

    # --- health and catalog ----------------------------------------------------------------------

    def _entries(self, dc: _Datacenter, name: str, tag: list[str], passing: bool) -> list[dict[str, Any]]:
        out = []
        for (node_name, service_id), service in sorted(dc.services.items()):
            if service["Service"] != name or not set(tag) <= set(service["Tags"]):
                continue
            checks = [
                c for (n, _), c in sorted(dc.checks.items()) if n == node_name and (c.service_id in ("", service_id))
            ]
            if passing and any(c.status != PASSING for c in checks):
                continue
            node = {k: v for k, v in dc.nodes[node_name].items()}
            svc = {k: v for k, v in service.items()}
            out.append({"Node": node, "Service": svc, "Checks": [c.to_json() for c in checks]})
        return out

    async def _health_service(self, request: web.Request) -> web.Response:
        dc = self._dc(request)
        name = request.match_info["name"]
        passing = "passing" in request.query and request.query.get("passing") not in ("false", "0")
        tag = request.query.getall("tag", [])

        def evaluate() -> tuple[int, Any, Any]:
            index = dc.service_index.get(name, dc.catalog_index)
            return index, index, self._entries(dc, name, tag, passing)

        index, entries = await self._blocking(request, dc, evaluate)
        return self._read_response(index, entries)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        dc = self._dc(request)

        def evaluate() -> tuple[int, Any, Any]:
            services: dict[str, list[str]] = {"consul": []}
            for service in dc.services.values():
                tags = services.setdefault(service["Service"], [])
                tags.extend(t for t in service["Tags"] if t not in tags)
            return dc.catalog_index, dc.catalog_index, services

        index, services = await self._blocking(request, dc, evaluate)
        return self._read_response(index, services)

    async def _catalog_datacenters(self, request: web.Request) -> web.Response:
        return _json(sorted(self.dcs))

    async def _catalog_register(self, request: web.Request) -> web.Response:
        """Register a node (and a service, checks) anywhere: how other nodes, datacenters and
        localities come into the double (and into real Consul without an agent per node)."""
        body = _ci(json.loads(await request.read() or b"{}"))
        name = body.get("datacenter") or request.query.get("dc") or self.datacenter
        if name not in self.dcs:
            return web.Response(status=500, text="No path to datacenter")
        dc = self.dcs[name]
        if not body.get("node") or not body.get("address"):
            raise _BadRequest("Must provide node and address")
        node = body["node"]
        if not (body.get("skipnodeupdate") and node in dc.nodes):
            self._register_node(dc, body)
        if body.get("service"):
            self._add_service(dc, node, body["service"], dc.next_index())
        checks = list(body.get("checks") or [])
        if body.get("check"):
            checks.insert(0, body["check"])
        for check in checks:
            spec = _ci(check)
            owner = dc.services.get((node, spec["serviceid"])) if spec.get("serviceid") else None
            made = self._add_check(dc, node, check, spec.get("checkid") or "check", owner)
            made.modify_index = dc.next_index()
            on_node = {s["Service"] for (n, _), s in dc.services.items() if n == node}
            dc.touch_services({owner["Service"]} if owner else on_node, made.modify_index)
        dc.notify()
        return _json(True)

    async def _catalog_deregister(self, request: web.Request) -> web.Response:
        body = _ci(json.loads(await request.read() or b"{}"))
        dc = self.dcs.get(body.get("datacenter") or self.datacenter)
        if dc is None:
            return web.Response(status=500, text="No path to datacenter")
        node = body.get("node", "")
        if body.get("serviceid"):
            self._remove_service(dc, node, body["serviceid"])
        elif body.get("checkid"):
            check = dc.checks.pop((node, body["checkid"]), None)
            if check is not None:
                index = dc.next_index()
                dc.touch_services({check.service_name} if check.service_id else set(), index)
                dc.notify()
        elif node in dc.nodes:
            for n, sid in [k for k in dc.services if k[0] == node]:
                self._remove_service(dc, n, sid)
            del dc.nodes[node]
            for key in [k for k in dc.checks if k[0] == node]:
                del dc.checks[key]
            dc.catalog_index = dc.next_index()
            dc.notify()
        return _json(True)

    async def _status_leader(self, request: web.Request) -> web.Response:
        return _json("127.0.0.1:8300")


class _BadRequest(Exception):
    pass


def _json(value: Any) -> web.Response:
    return web.Response(text=json.dumps(value), content_type="application/json")


def _uint(query: Any, name: str) -> int:
    text = query.get(name, "0") or "0"
    if not text.isdigit():
        raise _BadRequest(f"Invalid {name}")
    return int(text)


def _query_params(request: web.Request) -> tuple[int, float]:
    """Consul's parseWait: a Go duration and an unsigned integer, else 400."""
    query = request.query
    wait = 0.0
    if query.get("wait"):
        try:
            wait = go_duration(query["wait"])
        except ValueError:
            raise _BadRequest("Invalid wait time") from None
    index = 0
    if query.get("index"):
        if not query["index"].isdigit():
            raise _BadRequest("Invalid index")
        index = int(query["index"])
    return index, wait


@contextlib.asynccontextmanager
async def running_double(**kwargs: Any) -> AsyncIterator[ConsulDouble]:
    double = ConsulDouble(**kwargs)
    await double.start()
    try:
        yield double
    finally:
        await double.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.consul_double", description="A local double of Consul's HTTP API"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--other-datacenter", action="append", default=[], help="another datacenter (repeatable)")
    parser.add_argument("--acl-token", help="require this token on every request")
    args = parser.parse_args(argv)

    async def serve() -> None:
        double = ConsulDouble(args.datacenter, other_datacenters=tuple(args.other_datacenter), acl_token=args.acl_token)
        url = await double.start(args.host, args.port)
        print(f"consul double listening on {url} (datacenter {args.datacenter})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await double.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
