"""Virtual keys over HTTP: thin adapters around views_keys (shapes) and a ``KeyAdmin``
(key_admin: the same create/update/revoke/rotate, and audit actions, as `ccr-gateway keys`).

The keys are reached through ``app[KEYS]``, a function opening a ``KeyAdmin`` from the settings:
the composition root puts ``ccr_gateway.admin_keys.open_key_admin`` there (the control plane does
not import ext_proc's key store). It is opened once, at setup, and closed with the app; without
it, the key operations answer 503. The key store is the one the gateways read
(settings.keys_sqlite / keys_postgres); a change made here reaches every gateway as one made with
the CLI does (PostgreSQL NOTIFY, or the SQLite poll).
A tenant-admin sees its own tenant's keys only: another tenant's key is a 404, as if it did not
exist, so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from control_plane.admin import http, views_keys
from control_plane.admin.http import ApiError, body_of, json_response, query_of
from control_plane.admin.key_admin import Key, KeyAdmin, KeyChange, KeyNotFound, KeyRejected, KeysUnavailable
from control_plane.admin.operations import Operation
from control_plane.admin.roles import Action, Principal, Role, sees, tenant_scope
from control_plane.admin.settings import AdminSettings
from control_plane.admin.views_common import CURSOR_SCHEMA, limit_schema

log = logging.getLogger("ccr.admin")
KeyAdminOpener = Callable[[AdminSettings], KeyAdmin]
KEYS: web.AppKey[KeyAdminOpener] = web.AppKey("ccr_admin_key_admin_opener")
KEY_ADMIN: web.AppKey[KeyAdmin] = web.AppKey("ccr_admin_key_admin")
POLICY_TENANTS: web.AppKey[PolicyTenants] = web.AppKey("ccr_admin_policy_tenants")
T = TypeVar("T")


async def setup(app: web.Application, settings: AdminSettings) -> None:
    app[POLICY_TENANTS] = PolicyTenants(settings)
    opener = app.get(KEYS)
    if opener is None:
        return  # _keys answers 503
    app[KEY_ADMIN] = opener(settings)  # connects on first use: a store down now is a 503 later

    async def close(app: web.Application) -> None:
        await app[KEY_ADMIN].close()

    app.on_cleanup.append(close)


def _keys(request: web.Request) -> KeyAdmin:
    keys = request.app.get(KEY_ADMIN)
    if keys is None:
        raise ApiError(503, "no key store is wired into this admin API")
    return keys


async def _visible(request: web.Request, principal: Principal) -> Key:
    """The key of the path's id if the principal may see it; 404 otherwise (also for one of
    another tenant)."""
    key = await _call(_keys(request).get(request.match_info["id"]))
    if key is None or not sees(principal, key.tenant):
        raise ApiError(404, "no such key")
    return key


async def _call(awaitable: Awaitable[T]) -> T:
    """A KeyAdmin call, its failures as the contract's errors."""
    try:
        return await awaitable
    except KeysUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    except KeyNotFound:
        raise ApiError(404, "no such key") from None
    except KeyRejected as exc:
        raise views_keys.format_error(exc) from None


async def _audited(request: web.Request, principal: Principal, change: KeyChange) -> None:
    details = {**change.details, "via": "admin-api"}
    await request.app[http.AUDIT].record(principal, change.action, change.key_id, details, _keys(request).description)


async def list_keys(request: web.Request, principal: Principal) -> web.Response:
    query = query_of(request)
    tenant = tenant_scope(principal, query.get("tenant"))
    keys = await _call(_keys(request).list_keys(tenant))
    return json_response(views_keys.listing(keys, query.get("cursor"), query.get("limit", 50), time.time()))


async def create_key(request: web.Request, principal: Principal) -> web.Response:
    now = time.time()
    tenant, name, limits = views_keys.create_request(body_of(request), now)
    if principal.role is Role.TENANT_ADMIN and tenant != principal.tenant:
        raise ApiError(403, "a tenant-admin creates keys for its own tenant only")
    await request.app[http.AUDIT].ready()  # fail closed: nothing is created that could not be audited
    change = await _call(_keys(request).create(tenant, name, now, limits))
    await _audited(request, principal, change)
    return json_response({"key": change.presented, "record": views_keys.render(change.key, now)}, 201)


async def get_key(request: web.Request, principal: Principal) -> web.Response:
    return json_response(views_keys.render(await _visible(request, principal), time.time()))


async def update_key(request: web.Request, principal: Principal) -> web.Response:
    now = time.time()
    changes = views_keys.patch_request(body_of(request), now)
    key = await _visible(request, principal)
    await request.app[http.AUDIT].ready()
    change = await _call(_keys(request).update(key.id, changes))
    await _audited(request, principal, change)
    return json_response(views_keys.render(change.key, now))


async def revoke_key(request: web.Request, principal: Principal) -> web.Response:
    key = await _visible(request, principal)
    await request.app[http.AUDIT].ready()
    change = await _call(_keys(request).revoke(key.id))
    await _audited(request, principal, change)
    return json_response(views_keys.render(change.key, time.time()))


async def rotate_key(request: web.Request, principal: Principal) -> web.Response:
    grace = float(body_of(request).get("grace_seconds", 86400))
    key = await _visible(request, principal)
    await request.app[http.AUDIT].ready()
    change = await _call(_keys(request).rotate(key.id, grace))
    await _audited(request, principal, change)
    return json_response({"key": change.presented, "record": views_keys.render(change.key, time.time())})


async def list_tenants(request: web.Request, principal: Principal) -> web.Response:
    scope = tenant_scope(principal, None)
    keys = await _call(_keys(request).list_keys(scope))
    named = await request.app[POLICY_TENANTS].names()
    if scope is not None:
        named = {name for name in named if name == scope} | {scope}
    return json_response(views_keys.tenants(keys, named, time.time()))


class PolicyTenants:
    """The tenants the policy names (``tenants:``), for ``in_policy``: the file re-read when it
    changed, Consul read at most every few seconds. Unreadable: no names, logged, never an error
    (the keys still list)."""

    CONSUL_SECONDS = 5.0

    def __init__(self, settings: AdminSettings) -> None:
        self.settings = settings
        self._seen: tuple[Any, frozenset[str]] | None = None

    async def names(self) -> frozenset[str]:
        try:
            if self.settings.policy_path:
                return await self._from_file(self.settings.policy_path)
            if self.settings.consul_address:
                return await self._from_consul()
        except Exception as exc:  # a policy being edited is not the key list's problem
            log.warning("admin API: cannot read the policy's tenants: %s", exc)
        return frozenset()

    async def _from_file(self, path: str) -> frozenset[str]:
        from control_plane.policy import load_policy_file

        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._seen is None or self._seen[0] != stamp:
            policy = await asyncio.to_thread(load_policy_file, path)
            self._seen = (stamp, frozenset(tenant.name for tenant in policy.routing.tenants))
        return self._seen[1]

    async def _from_consul(self) -> frozenset[str]:
        from control_plane.consul.kv import ConsulPolicySource

        now = time.monotonic()
        if self._seen is None or now - self._seen[0] > self.CONSUL_SECONDS:
            settings = self.settings
            source = ConsulPolicySource(
                settings.consul_address, settings.consul_prefix, settings.consul_token, write_status=False
            )
            try:
                policy = await source.load_once()
            finally:
                await source.close()
            names = frozenset(tenant.name for tenant in policy.routing.tenants) if policy is not None else frozenset()
            self._seen = (now, names)
        return self._seen[1]


_LIST_QUERY = {"tenant": {"type": "string"}, "cursor": CURSOR_SCHEMA, "limit": limit_schema()}
OPERATIONS = [
    Operation(
        "GET", "/keys", Action.KEYS_READ, "List virtual keys (a tenant-admin: its own)", list_keys, "listKeys",
        query=_LIST_QUERY, responses={200: views_keys.LIST_SCHEMA}, tags=("keys",),
    ),
    Operation(
        "POST", "/keys", Action.KEYS_CREATE, "Create a virtual key (its secret is shown this once)", create_key,
        "createKey", body=views_keys.CREATE_SCHEMA, responses={201: views_keys.CREATED_SCHEMA}, tags=("keys",),
    ),
    Operation(
        "GET", "/keys/{id}", Action.KEYS_READ, "One virtual key, without its secret", get_key, "getKey",
        responses={200: views_keys.KEY_SCHEMA}, tags=("keys",),
    ),
    Operation(
        "PATCH", "/keys/{id}", Action.KEYS_UPDATE, "Change a key's name, models, limits, budget or expiry (null clears)",
        update_key, "updateKey", body=views_keys.PATCH_SCHEMA, responses={200: views_keys.KEY_SCHEMA}, tags=("keys",),
    ),
    Operation(
        "POST", "/keys/{id}/revoke", Action.KEYS_REVOKE, "Revoke a key (every gateway refuses it within a second)",
        revoke_key, "revokeKey", responses={200: views_keys.KEY_SCHEMA}, tags=("keys",),
    ),
    Operation(
        "POST", "/keys/{id}/rotate", Action.KEYS_ROTATE, "A new secret; the old one works for grace_seconds",
        rotate_key, "rotateKey", body=views_keys.ROTATE_SCHEMA, responses={200: views_keys.CREATED_SCHEMA},
        tags=("keys",),
    ),
    Operation(
        "GET", "/tenants", Action.KEYS_READ, "Tenants with keys or in the policy", list_tenants, "listTenants",
        responses={200: views_keys.TENANTS_SCHEMA}, tags=("keys",),
    ),
]  # fmt: skip
