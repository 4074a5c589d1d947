"""The policy endpoints: read it, validate and diff an edit, push it with check-and-set, and show
the last one the control plane rejected. views_policy decides; this module does the I/O.

Where the policy lives is the control plane's own source (settings): a file (``policy_path``) or
Consul KV (``consul_address`` + ``consul_prefix``). A push writes the place the control plane
watches, which then takes the policy as any edit (validation, rollout, audit ``policy.accepted``).

- File: the write re-reads the file under a lock and compares its sha256 with the expected
  version just before replacing it (a temporary file in the same directory, then os.replace: the
  control plane never reads half a policy). The lock covers this process; another writer between
  the re-read and the rename is the window any editor has.
- Consul: ``<prefix>policy`` written with Consul's check-and-set (``?cas=ModifyIndex``), as
  `ccr-gateway policy push` does: Consul itself refuses a write based on a stale index.

A push is audited (``policy.push``, the principal as actor) before the answer, fail closed: the
audit log is checked before anything is written (503, nothing written).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from control_plane.admin import views_policy
from control_plane.admin.auditing import AdminAudit
from control_plane.admin.errors import AdminError
from control_plane.admin.http import AUDIT, BODY, json_response
from control_plane.admin.operations import Operation
from control_plane.admin.roles import Action, Principal
from control_plane.admin.settings import AdminSettings


@dataclass(frozen=True, slots=True)
class Current:
    text: str
    version: str
    source: str  # "file:/path" | "consul:addr/prefix"
    name: str  # how the control plane names it in problems: the path, or consul:<key>


class PolicyStore(Protocol):
    async def read(self) -> Current: ...

    async def write(self, text: str, expected: str) -> str:
        """Write ``text`` if the version is still ``expected``; the new version. AdminError 409."""
        ...

    async def close(self) -> None: ...


class FilePolicy:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    def _read(self) -> tuple[bytes, str]:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise AdminError(503, "unavailable", f"cannot read the policy {self.path}: {exc.strerror}") from None
        return raw, views_policy.file_version(raw)

    async def read(self) -> Current:
        raw, version = await asyncio.to_thread(self._read)
        return Current(raw.decode("utf-8", errors="replace"), version, f"file:{self.path}", str(self.path))

    async def write(self, text: str, expected: str) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._write, text.encode(), expected)

    def _write(self, raw: bytes, expected: str) -> str:
        _, current = self._read()
        views_policy.check_version(current, expected)
        # Same directory: os.replace is then a rename, atomic; the file keeps its permissions.
        mode = self.path.stat().st_mode & 0o7777
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, self.path)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise AdminError(503, "unavailable", f"cannot write the policy {self.path}: {exc.strerror}") from None
        return views_policy.file_version(raw)

    async def close(self) -> None:
        """Nothing held open."""


class ConsulPolicy:
    """``<prefix>policy`` in Consul KV; the split-key layout is read (assembled as the control
    plane does) and replaced by one ``<prefix>policy`` key on push (its version is "0")."""

    def __init__(self, address: str, prefix: str, token: str | None) -> None:
        from control_plane.consul.kv import normalize_prefix

        self.address = address
        self.prefix = normalize_prefix(prefix)
        self.token = token
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from control_plane.consul.client import make_client  # py-consul only for a Consul policy

            self._client = make_client(self.address, self.token)
        return self._client

    @property
    def key(self) -> str:
        from control_plane.consul.kv import POLICY_KEY

        return self.prefix + POLICY_KEY

    def _unavailable(self, exc: BaseException) -> AdminError:
        return AdminError(503, "unavailable", f"Consul at {self.address}: {type(exc).__name__}: {exc}")

    async def read(self) -> Current:
        from control_plane.consul.client import REQUEST_TIMEOUT, TRANSIENT_ERRORS
        from control_plane.consul.kv import assemble

        try:
            _, entries = await self.client().kv.get(self.prefix, recurse=True, connections_timeout=REQUEST_TIMEOUT)
        except TRANSIENT_ERRORS as exc:
            raise self._unavailable(exc) from None
        entries = entries or []
        values = {entry["Key"]: entry.get("Value") for entry in entries}
        index = next((int(entry["ModifyIndex"]) for entry in entries if entry["Key"] == self.key), 0)
        document = assemble(values, self.prefix)
        text = document.text if document is not None else ""
        return Current(text, str(index), f"consul:{self.address}/{self.prefix}", f"consul:{self.key}")

    async def write(self, text: str, expected: str) -> str:
        from control_plane.consul.client import REQUEST_TIMEOUT, TRANSIENT_ERRORS

        if not expected.isdigit():
            raise AdminError(409, "conflict", f"{expected!r} is not a version of this policy (a ModifyIndex)")
        try:
            written = await self.client().kv.put(
                self.key, text.encode(), cas=int(expected), connections_timeout=REQUEST_TIMEOUT
            )
            if not written:
                current = await self.read()
                views_policy.check_version(current.version, expected)
                raise AdminError(409, "conflict", f"Consul refused the write based on ModifyIndex {expected}")
            _, entry = await self.client().kv.get(self.key, connections_timeout=REQUEST_TIMEOUT)
        except TRANSIENT_ERRORS as exc:
            raise self._unavailable(exc) from None
        return str(entry["ModifyIndex"]) if entry else expected

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


POLICY_STORE: web.AppKey[PolicyStore] = web.AppKey("ccr_admin_policy_store")
POLICY_SETTINGS: web.AppKey[AdminSettings] = web.AppKey("ccr_admin_policy_settings")
FALLBACK_AUDIT: web.AppKey[AdminAudit] = web.AppKey("ccr_admin_policy_audit")


def store_for(settings: AdminSettings) -> PolicyStore | None:
    if settings.consul_address:
        return ConsulPolicy(settings.consul_address, settings.consul_prefix, settings.consul_token)
    if settings.policy_path:
        return FilePolicy(settings.policy_path)
    return None


def _store(request: web.Request) -> PolicyStore:
    store = request.app.get(POLICY_STORE)
    if store is None:
        raise AdminError(503, "unavailable", "this admin API was started without the policy's location")
    return store


async def _body(request: web.Request) -> dict[str, Any]:
    """The body the server validated, else (a test app, no server) the request's own JSON."""
    if BODY in request:
        return dict(request[BODY] or {})
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise AdminError(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise AdminError(400, "invalid_request", "the body must be a JSON object")
    return body


async def get_policy(request: web.Request, principal: Principal) -> web.StreamResponse:
    current = await _store(request).read()
    result = views_policy.validate(current.text, current.name)
    return json_response(
        {
            "source": current.source,
            "version": current.version,
            "sha256": views_policy.file_version(current.text.encode()),
            "yaml": current.text,
            "valid": result["valid"],
        }
    )


async def validate_policy(request: web.Request, principal: Principal) -> web.StreamResponse:
    text = views_policy.yaml_of(await _body(request))
    store = request.app.get(POLICY_STORE)
    name = (await store.read()).name if store is not None else "<policy>"
    return json_response(views_policy.validate(text, name))


async def diff_policy(request: web.Request, principal: Principal) -> web.StreamResponse:
    text = views_policy.yaml_of(await _body(request))
    current = await _store(request).read()
    return json_response(
        {"diff": views_policy.unified_diff(current.text, text, current.source), "version": current.version}
    )


async def put_policy(request: web.Request, principal: Principal) -> web.StreamResponse:
    body = await _body(request)
    text = views_policy.yaml_of(body)
    expected = views_policy.expected_version_of(body)
    store = _store(request)
    current = await store.read()
    result = views_policy.validate(text, current.name)
    if not result["valid"]:
        raise views_policy.invalid_policy(result)
    views_policy.check_version(current.version, expected)  # early, before the audit log is opened
    if text == current.text:
        return json_response({"version": current.version, "changed": False})
    audit = request.app.get(AUDIT) or request.app[FALLBACK_AUDIT]
    await audit.ready()  # fail closed: nothing is written that the audit log could not record
    version = await store.write(text, expected)
    details = {
        "version": version,
        "previous_version": expected,
        "sha256": views_policy.file_version(text.encode()),
        "summary": result["summary"],
    }
    await audit.record(principal, "policy.push", current.source, details)
    return json_response({"version": version, "changed": True})


async def rejected_policy(request: web.Request, principal: Principal) -> web.StreamResponse:
    settings = request.app[POLICY_SETTINGS]
    status = await asyncio.to_thread(read_status_file, settings.status_file)
    source = settings.policy_path or f"consul:{settings.consul_address}/{settings.consul_prefix}"
    return json_response(views_policy.rejected_body(status, source))


def read_status_file(path: str) -> dict[str, Any] | None:
    """The control plane's status file (PolicyStatusFile); None when absent or unreadable."""
    if not path:
        return None
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


async def setup(app: web.Application, settings: AdminSettings) -> None:
    app[POLICY_SETTINGS] = settings
    store = store_for(settings)
    if store is not None:
        app[POLICY_STORE] = store
    # The server's audit log (http.AUDIT) when it has one; this one otherwise (a test app).
    app[FALLBACK_AUDIT] = AdminAudit.for_settings(settings)

    async def close(app: web.Application) -> None:
        if store is not None:
            await store.close()
        await app[FALLBACK_AUDIT].close()

    app.on_cleanup.append(close)


# --- declarations -----------------------------------------------------------------------------

_PROBLEM = {
    "type": "object",
    "required": ["line", "column", "path", "message"],
    "properties": {
        "line": {"type": "integer", "description": "1-based; 0: no position"},
        "column": {"type": "integer"},
        "path": {"type": "string"},
        "message": {"type": "string"},
    },
}
_YAML_BODY = {
    "type": "object",
    "required": ["yaml"],
    "properties": {"yaml": {"type": "string", "maxLength": views_policy.MAX_POLICY_BYTES}},
}

OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/policy",
        Action.POLICY_READ,
        "The current policy: its source, version, text and whether it is valid",
        get_policy,
        "getPolicy",
        responses={
            200: {
                "type": "object",
                "required": ["source", "version", "yaml", "valid"],
                "properties": {
                    "source": {"type": "string"},
                    "version": {"type": "string", "description": "file: sha256 of its bytes; Consul: ModifyIndex"},
                    "sha256": {"type": "string"},
                    "yaml": {"type": "string"},
                    "valid": {"type": "boolean"},
                },
            }
        },
        tags=("policy",),
    ),
    Operation(
        "POST",
        "/policy/validate",
        Action.POLICY_READ,
        "Validate a policy: every problem with its line and column",
        validate_policy,
        "validatePolicy",
        body=_YAML_BODY,
        responses={
            200: {
                "type": "object",
                "required": ["valid", "errors", "summary"],
                "properties": {
                    "valid": {"type": "boolean"},
                    "errors": {"type": "array", "items": _PROBLEM},
                    "warnings": {"type": "array", "items": _PROBLEM},
                    "summary": {"type": "string"},
                },
            }
        },
        tags=("policy",),
    ),
    Operation(
        "POST",
        "/policy/diff",
        Action.POLICY_READ,
        "Unified diff of a policy against the current one",
        diff_policy,
        "diffPolicy",
        body=_YAML_BODY,
        responses={
            200: {
                "type": "object",
                "required": ["diff"],
                "properties": {"diff": {"type": "string"}, "version": {"type": "string"}},
            }
        },
        tags=("policy",),
    ),
    Operation(
        "PUT",
        "/policy",
        Action.POLICY_PUSH,
        "Push a policy (check-and-set on expected_version; validated first, audited)",
        put_policy,
        "putPolicy",
        body={
            "type": "object",
            "required": ["yaml", "expected_version"],
            "properties": {
                "yaml": {"type": "string", "maxLength": views_policy.MAX_POLICY_BYTES},
                "expected_version": {"type": "string", "minLength": 1},
            },
        },
        responses={
            200: {
                "type": "object",
                "required": ["version"],
                "properties": {"version": {"type": "string"}, "changed": {"type": "boolean"}},
            }
        },
        tags=("policy",),
    ),
    Operation(
        "GET",
        "/policy/rejected",
        Action.POLICY_READ,
        "The last policy the control plane rejected, and why",
        rejected_policy,
        "getRejectedPolicy",
        responses={
            200: {
                "type": "object",
                "required": ["rejected"],
                "properties": {
                    "rejected": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "properties": {
                                    "at": {"type": "string"},
                                    "source": {"type": "string"},
                                    "error": {"type": "string"},
                                    "pending": {"type": "boolean"},
                                },
                            },
                        ]
                    }
                },
            }
        },
        tags=("policy",),
    ),
]
