"""A local double of the part of Vault's HTTP API the gateway uses, faithful where a client can tell.

Covered: KV v2 (``GET/POST/PUT /v1/<mount>/data/<path>`` with ``?version=``, ``options.cas``;
``GET /v1/<mount>/metadata/<path>``), tokens (``auth/token/lookup-self``, ``renew-self``,
``create``), AppRole (enabling it, roles, ``role-id``, ``secret-id``, ``login``), Kubernetes login
(roles and their accepted JWTs are test hooks: the double cannot ask a cluster's TokenReview API),
``sys/leases/renew``, ACL policies in HCL (``path "x/*" { capabilities = [...] }`` only) and the
error envelope ``{"errors": [...]}``: 403 ``permission denied`` (no, unknown, expired token or a
path the token's policies do not grant), 404 with ``"errors": []`` for a missing secret, 400 for a
check-and-set mismatch, an invalid AppRole login or an unknown lease.

Tokens carry a TTL measured on ``clock`` (a test passes a fake one); an expired token is refused
like an unknown one. The root token (``root_token``, default "root") never expires.

Test hooks (not in Vault): ``put_secret()``, ``kubernetes_role()``, ``add_lease()``,
``fail_next(n, status)``, ``requests`` (a log of (method, path) of every request), ``stop()``/
``start()`` on the same port (Vault down and back).

Known differences: no sealing, no namespaces, no response wrapping, no soft delete/undelete/destroy
of KV versions, no ``max_versions`` trimming, HCL policies limited to the form above; error texts
are Vault's where a client reads them (the contract tests check the substrings that matter).

Run standalone: ``python -m tests.vault_double --port 8200``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fnmatch
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ccr.v1.secret_ref import SecretRef
from ccr.v1.vault_client import PermissionDenied, SecretVersion, TokenInfo, Unavailable

PERMISSION_DENIED = "permission denied"
CAS_MISMATCH = "check-and-set parameter did not match the current version"
_HCL_RULE = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}')
_DURATION = re.compile(r"^(\d+)(s|m|h)?$")
_UNIT = {None: 1, "s": 1, "m": 60, "h": 3600}


class ManualClock:
    """A clock the test moves (``now += ...``), for the double's TTLs and the readers' caches."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeVaultClient:
    """VaultClient's calls, in memory: for the readers' unit tests (the double is for the client's)."""

    values: dict[SecretRef, str] = field(default_factory=dict)
    ttl: float = 0.0  # the token's
    renewable: bool = True
    down: bool = False
    calls: list[str] = field(default_factory=list)
    version: int = 1

    def login(self) -> TokenInfo:
        self.calls.append("login")
        if self.down:
            raise Unavailable("cannot reach Vault")
        return TokenInfo(self.ttl, self.renewable)

    def renew_token(self) -> TokenInfo:
        self.calls.append("renew")
        return TokenInfo(self.ttl, self.renewable)

    def read(self, ref: SecretRef) -> SecretVersion:
        self.calls.append("read")
        if self.down:
            raise Unavailable("cannot reach Vault")
        if ref not in self.values:
            raise PermissionDenied("permission denied")
        return SecretVersion({ref.field: self.values[ref]}, self.version)


def seconds(value: Any, default: int = 0) -> int:
    """A TTL as Vault takes it: an integer of seconds or "30s", "5m", "1h"."""
    if value in (None, ""):
        return default
    if isinstance(value, int):
        return value
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"invalid duration {value!r}")
    return int(match[1]) * _UNIT[match[2]]


def _json(payload: Any, status: int = 200) -> web.Response:
    # Vault's Content-Type is exactly "application/json" (no charset); hvac compares it as is.
    return web.Response(body=json.dumps(payload).encode(), status=status, headers={"Content-Type": "application/json"})


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Token:
    id: str
    accessor: str
    policies: list[str]
    ttl: int  # seconds granted at creation or last renewal; 0: never expires (root)
    renewable: bool
    issued: float
    expires: float | None  # clock time; None: never
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Version:
    data: dict[str, Any]
    created: float


@dataclass
class Secret:
    versions: list[Version] = field(default_factory=list)
    created: float = 0.0
    updated: float = 0.0


class VaultError(Exception):
    def __init__(self, status: int, *errors: str) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors)


class VaultDouble:
    def __init__(self, root_token: str = "root", clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.root_token = root_token
        self.tokens: dict[str, Token] = {}
        self.acl: dict[str, list[tuple[str, frozenset[str]]]] = {}  # policy name -> (glob, capabilities)
        self.secrets: dict[tuple[str, str], Secret] = {}  # (mount, path) -> versions
        self.kv_mounts = {"secret"}
        self.auth_mounts: set[str] = {"token"}
        self.approles: dict[str, dict[str, Any]] = {}  # role name -> settings, role_id, secret ids
        self.k8s_roles: dict[str, tuple[str, int, list[str]]] = {}  # role -> (jwt, ttl, policies)
        self.leases: dict[str, tuple[float, bool]] = {}  # lease id -> (expiry, renewable)
        self.requests: list[tuple[str, str]] = []
        self._failures: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # threaded_double's, for stop/start from tests
        self._issue(root_token, ["root"], 0, False)

    # --- test hooks ------------------------------------------------------------------------------

    def put_secret(self, path: str, data: dict[str, Any], mount: str = "secret") -> int:
        """Write a new version (no token, no CAS); returns its version number."""
        return self._write(mount, path, data, None)

    def kubernetes_role(self, role: str, jwt: str, ttl: int = 3600, policies: tuple[str, ...] = ("default",)) -> None:
        self.auth_mounts.add("kubernetes")
        self.k8s_roles[role] = (jwt, ttl, list(policies))

    def add_lease(self, lease_id: str, ttl: int, renewable: bool = True) -> None:
        self.leases[lease_id] = (self.clock() + ttl, renewable)

    def fail_next(self, count: int, status: int = 503) -> None:
        self._failures.extend([status] * count)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._envelope])
        app.router.add_route("*", "/v1/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port or self.port or 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    def call(self, coroutine: Any) -> Any:
        """Run one of start()/stop() on threaded_double's loop (Vault down and back in a test)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- HTTP ------------------------------------------------------------------------------------

    @web.middleware
    async def _envelope(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self._failures:
            status = self._failures.pop(0)
            return _json({"errors": ["Vault is sealed" if status == 503 else "injected"]}, status=status)
        try:
            return await handler(request)
        except VaultError as exc:
            return _json({"errors": exc.errors}, status=exc.status)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        method = request.method
        body: dict[str, Any] = {}
        if method in ("POST", "PUT") and request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise VaultError(400, "failed to parse JSON input") from None
        if method == "POST" and path in ("auth/approle/login", "auth/kubernetes/login"):
            return self._answer(self._login(path.split("/")[1], body))
        if path == "sys/health":
            return _json({"initialized": True, "sealed": False, "standby": False})
        token = self._token(request)
        if path == "auth/token/lookup-self" and method == "GET":
            return self._answer({"data": self._lookup(token)})
        if path == "auth/token/renew-self" and method in ("POST", "PUT"):
            return self._answer(self._renew_token(token, body.get("increment")))
        if path == "auth/token/create" and method in ("POST", "PUT"):
            return self._answer(self._create_token(token, body))
        if path == "sys/leases/renew" and method in ("POST", "PUT"):
            return self._answer(self._renew_lease(body))
        if path.startswith("sys/policies/acl/") and method in ("POST", "PUT"):
            self._require_root(token)
            self.acl[path.rsplit("/", 1)[1]] = _parse_hcl(body.get("policy", ""))
            return web.Response(status=204)
        if path.startswith("sys/auth/") and method in ("POST", "PUT"):
            self._require_root(token)
            kind = body.get("type", "")
            if kind not in ("approle", "kubernetes"):
                raise VaultError(400, f"plugin not found in the catalog: {kind}")
            mount = path[len("sys/auth/") :].strip("/")
            if mount in self.auth_mounts:
                raise VaultError(400, f"path is already in use at {mount}/")
            self.auth_mounts.add(mount)
            return web.Response(status=204)
        if path.startswith("auth/approle/role/"):
            return self._approle_admin(token, method, path[len("auth/approle/role/") :], body)
        mount, kind, rest = _kv_path(path, self.kv_mounts)
        if kind == "data" and method == "GET":
            self._allow(token, path, "read")
            return self._answer({"data": self._read(mount, rest, request.query.get("version"))})
        if kind == "data" and method in ("POST", "PUT"):
            self._allow(token, path, "update")
            if not isinstance(body.get("data"), dict):
                raise VaultError(400, "no data provided")
            cas = (body.get("options") or {}).get("cas")
            version = self._write(mount, rest, body["data"], None if cas is None else int(cas))
            return self._answer({"data": self._version_metadata(self.secrets[(mount, rest)], version)})
        if kind == "metadata" and method == "GET":
            self._allow(token, path, "read")
            return self._answer({"data": self._metadata(mount, rest)})
        self._allow(token, path, "read")  # an unknown route answers 404 only to a token that may look
        raise VaultError(404, f"no handler for route {path!r}. route entry not found.")

    def _answer(self, payload: dict[str, Any]) -> web.Response:
        envelope = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": None,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }
        envelope.update(payload)
        return _json(envelope)

    # --- tokens and ACL --------------------------------------------------------------------------

    def _issue(self, token_id: str | None, policies: list[str], ttl: int, renewable: bool) -> Token:
        token_id = token_id or f"hvs.{uuid.uuid4().hex}"
        now = self.clock()
        token = Token(token_id, uuid.uuid4().hex[:24], policies, ttl, renewable, now, now + ttl if ttl else None)
        self.tokens[token_id] = token
        return token

    def _token(self, request: web.Request) -> Token:
        token_id = request.headers.get("X-Vault-Token", "")
        if not token_id and request.headers.get("Authorization", "").startswith("Bearer "):
            token_id = request.headers["Authorization"][len("Bearer ") :]
        token = self.tokens.get(token_id)
        if token is None:
            raise VaultError(403, PERMISSION_DENIED)
        if token.expires is not None and self.clock() >= token.expires:
            del self.tokens[token_id]
            raise VaultError(403, PERMISSION_DENIED)
        return token

    def _require_root(self, token: Token) -> None:
        if "root" not in token.policies:
            raise VaultError(403, PERMISSION_DENIED)

    def _allow(self, token: Token, path: str, capability: str) -> None:
        if "root" in token.policies:
            return
        for name in token.policies:
            for pattern, capabilities in self.acl.get(name, []):
                if fnmatch.fnmatchcase(path, pattern) and capability in capabilities and "deny" not in capabilities:
                    return
        raise VaultError(403, PERMISSION_DENIED)

    def _auth(self, token: Token) -> dict[str, Any]:
        return {
            "auth": {
                "client_token": token.id,
                "accessor": token.accessor,
                "policies": token.policies,
                "token_policies": token.policies,
                "metadata": token.meta or None,
                "lease_duration": token.ttl,
                "renewable": token.renewable,
                "entity_id": "",
                "token_type": "service",
                "orphan": True,
            }
        }

    def _lookup(self, token: Token) -> dict[str, Any]:
        now = self.clock()
        ttl = max(0, int(token.expires - now)) if token.expires is not None else 0
        return {
            "id": token.id,
            "accessor": token.accessor,
            "policies": token.policies,
            "ttl": ttl,
            "creation_ttl": token.ttl,
            "creation_time": int(token.issued),
            "expire_time": _iso(token.expires) if token.expires is not None else None,
            "renewable": token.renewable,
            "meta": token.meta or None,
            "type": "service",
            "orphan": True,
            "path": "auth/token/create" if "root" not in token.policies else "auth/token/root",
        }

    def _renew_token(self, token: Token, increment: Any) -> dict[str, Any]:
        if not token.renewable:
            raise VaultError(400, "lease is not renewable")
        ttl = seconds(increment, token.ttl) or token.ttl
        token.expires = self.clock() + ttl
        token.ttl = ttl
        return self._auth(token)

    def _create_token(self, parent: Token, body: dict[str, Any]) -> dict[str, Any]:
        policies = list(body.get("policies") or parent.policies)
        if "root" in policies and "root" not in parent.policies:
            raise VaultError(400, "child policies must be subset of parent")
        ttl = seconds(body.get("ttl"), 2764800)
        renewable = body.get("renewable", True) is not False
        return self._auth(self._issue(body.get("id"), policies, ttl, renewable))

    def _renew_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        lease_id = body.get("lease_id", "")
        found = self.leases.get(lease_id)
        if found is None or found[0] <= self.clock():
            raise VaultError(400, "lease not found")
        if not found[1]:
            raise VaultError(400, "lease is not renewable")
        ttl = seconds(body.get("increment"), 3600) or 3600
        self.leases[lease_id] = (self.clock() + ttl, True)
        return {"lease_id": lease_id, "renewable": True, "lease_duration": ttl}

    # --- auth methods ----------------------------------------------------------------------------

    def _login(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method not in self.auth_mounts:
            raise VaultError(403, PERMISSION_DENIED)  # Vault: no auth method mounted there
        if method == "approle":
            role_id, secret_id = body.get("role_id", ""), body.get("secret_id", "")
            if not role_id:
                raise VaultError(400, "missing role_id")
            role = next((r for r in self.approles.values() if r["role_id"] == role_id), None)
            if role is None or secret_id not in role["secret_ids"]:
                raise VaultError(400, "invalid role or secret ID")
            token = self._issue(None, role["policies"], role["ttl"], True)
            token.meta = {"role_name": role["name"]}
            return self._auth(token)
        role_name, jwt = body.get("role", ""), body.get("jwt", "")
        if not role_name or not jwt:
            raise VaultError(400, "missing role" if not role_name else "missing jwt")
        role_entry = self.k8s_roles.get(role_name)
        if role_entry is None:
            raise VaultError(400, f'invalid role name "{role_name}"')
        if jwt != role_entry[0]:
            raise VaultError(403, PERMISSION_DENIED)
        token = self._issue(None, role_entry[2], role_entry[1], True)
        token.meta = {"role": role_name, "service_account_name": "ccr-gateway"}
        return self._auth(token)

    def _approle_admin(self, token: Token, method: str, rest: str, body: dict[str, Any]) -> web.Response:
        self._require_root(token)
        if "approle" not in self.auth_mounts:
            raise VaultError(404, f"no handler for route 'auth/approle/role/{rest}'. route entry not found.")
        name, _, action = rest.partition("/")
        if not action and method in ("POST", "PUT"):
            role = self.approles.setdefault(name, {"name": name, "role_id": str(uuid.uuid4()), "secret_ids": set()})
            role["policies"] = list(body.get("token_policies") or body.get("policies") or ["default"])
            role["ttl"] = seconds(body.get("token_ttl"), 2764800)
            return web.Response(status=204)
        role = self.approles.get(name)
        if role is None:
            raise VaultError(400, f'role "{name}" does not exist')  # Vault's words for role-id/secret-id
        if action == "role-id" and method == "GET":
            return self._answer({"data": {"role_id": role["role_id"]}})
        if action == "secret-id" and method in ("POST", "PUT"):
            secret_id = str(uuid.uuid4())
            role["secret_ids"].add(secret_id)
            return self._answer(
                {"data": {"secret_id": secret_id, "secret_id_accessor": str(uuid.uuid4()), "secret_id_ttl": 0}}
            )
        raise VaultError(405, "unsupported operation")

    # --- KV v2 -----------------------------------------------------------------------------------

    def _write(self, mount: str, path: str, data: dict[str, Any], cas: int | None) -> int:
        secret = self.secrets.get((mount, path))
        current = len(secret.versions) if secret is not None else 0
        if cas is not None and cas != current:
            raise VaultError(400, CAS_MISMATCH)
        now = self.clock()
        if secret is None:
            secret = self.secrets[(mount, path)] = Secret(created=now)
        secret.versions.append(Version(dict(data), now))
        secret.updated = now
        return len(secret.versions)

    def _version_metadata(self, secret: Secret, version: int) -> dict[str, Any]:
        return {
            "created_time": _iso(secret.versions[version - 1].created),
            "custom_metadata": None,
            "deletion_time": "",
            "destroyed": False,
            "version": version,
        }

    def _read(self, mount: str, path: str, version_text: str | None) -> dict[str, Any]:
        secret = self.secrets.get((mount, path))
        if secret is None:
            raise VaultError(404)
        version = int(version_text) if version_text not in (None, "", "0") else len(secret.versions)
        if not 1 <= version <= len(secret.versions):
            raise VaultError(404)
        return {"data": secret.versions[version - 1].data, "metadata": self._version_metadata(secret, version)}

    def _metadata(self, mount: str, path: str) -> dict[str, Any]:
        secret = self.secrets.get((mount, path))
        if secret is None:
            raise VaultError(404)
        return {
            "cas_required": False,
            "created_time": _iso(secret.created),
            "current_version": len(secret.versions),
            "custom_metadata": None,
            "delete_version_after": "0s",
            "max_versions": 0,
            "oldest_version": 0,
            "updated_time": _iso(secret.updated),
            "versions": {
                str(n): {"created_time": _iso(v.created), "deletion_time": "", "destroyed": False}
                for n, v in enumerate(secret.versions, 1)
            },
        }


def _kv_path(path: str, mounts: set[str]) -> tuple[str, str, str]:
    """("secret", "data", "providers/openai") for "secret/data/providers/openai"; kind "" when the
    path is under no KV v2 mount."""
    for mount in sorted(mounts, key=len, reverse=True):
        for kind in ("data", "metadata"):
            prefix = f"{mount}/{kind}/"
            if path.startswith(prefix) and len(path) > len(prefix):
                return mount, kind, path[len(prefix) :]
    return "", "", path


def _parse_hcl(text: str) -> list[tuple[str, frozenset[str]]]:
    rules = []
    for pattern, capabilities in _HCL_RULE.findall(text):
        names = frozenset(c.strip().strip('"') for c in capabilities.split(",") if c.strip())
        rules.append((pattern.replace("+", "*"), names))
    return rules


@contextlib.asynccontextmanager
async def running_double(**kwargs: Any) -> AsyncIterator[VaultDouble]:
    double = VaultDouble(**kwargs)
    await double.start()
    try:
        yield double
    finally:
        await double.stop()


@contextlib.contextmanager
def threaded_double(**kwargs: Any) -> Iterator[VaultDouble]:
    """The double on a loop of its own thread, for synchronous clients (hvac) and subprocesses."""
    double = VaultDouble(**kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="vault-double", daemon=True)
    thread.start()
    double.loop = loop
    asyncio.run_coroutine_threadsafe(double.start(), loop).result(10)
    try:
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.vault_double", description="A local double of Vault")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--root-token", default="root")
    args = parser.parse_args(argv)

    async def serve() -> None:
        double = VaultDouble(args.root_token)
        print(f"vault double on {await double.start(args.host, args.port)}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
