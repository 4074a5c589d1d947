"""GET /admin/v1/usage and /usage/series: parse, read the ledger, answer (views_usage does the rest).

The ledger is read through ``app[LEDGER]``, a function opening a ``UsageReader`` from the
settings: the composition root puts ``ccr_gateway.admin_ledger.open_reader`` there (the control
plane does not import the ledger's package). Without it, the usage operations answer 503.
A tenant-admin's answers are its own tenant's, whatever it asks (roles.tenant_scope).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from control_plane.admin import views_usage
from control_plane.admin.errors import AdminError
from control_plane.admin.http import json_response, query_of
from control_plane.admin.operations import Operation
from control_plane.admin.roles import Action, Principal, tenant_scope
from control_plane.admin.settings import AdminSettings
from control_plane.admin.views_usage import UsageReader

LedgerOpener = Callable[[AdminSettings], Awaitable[UsageReader]]
LEDGER: web.AppKey[LedgerOpener] = web.AppKey("ccr_admin_ledger_opener")
USAGE_SETTINGS: web.AppKey[AdminSettings] = web.AppKey("ccr_admin_usage_settings")


def now() -> datetime:
    return datetime.now(UTC)


def query(request: web.Request) -> dict[str, Any]:
    """The query as given, with what the server typed from the operation's schema over it."""
    return {**request.query, **query_of(request)}


async def open_reader(app: web.Application) -> UsageReader:
    opener = app.get(LEDGER)
    if opener is None:
        raise AdminError(503, "unavailable", "no usage ledger is wired into this admin API")
    return await opener(app[USAGE_SETTINGS])


async def usage(request: web.Request, principal: Principal) -> web.StreamResponse:
    asked = query(request)
    params = views_usage.usage_params(asked, now())
    tenant = tenant_scope(principal, asked.get("tenant") or None)
    reader = await open_reader(request.app)
    try:
        rows = await reader.usage(params.since, params.until, params.by, tenant)
    finally:
        await reader.close()
    if params.format == "csv":
        return web.Response(
            text=views_usage.usage_csv(params, rows),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
        )
    return json_response(views_usage.usage_body(params, rows, tenant))


async def series(request: web.Request, principal: Principal) -> web.StreamResponse:
    asked = query(request)
    params = views_usage.series_params(asked, now())
    tenant = tenant_scope(principal, asked.get("tenant") or None)
    reader = await open_reader(request.app)
    try:
        rows = await reader.series(params.since, params.until, params.step, params.by, tenant)
    finally:
        await reader.close()
    return json_response(views_usage.series_body(params, rows))


async def setup(app: web.Application, settings: AdminSettings) -> None:
    app[USAGE_SETTINGS] = settings


# --- declarations -----------------------------------------------------------------------------

_TIME = {"type": "string", "description": "ISO date or time (UTC unless an offset), or 24h, 7d, 30m, 2w ago"}
_COST = {"type": "string", "description": "USD, 6 decimals"}
_COUNT = {"type": "integer"}
_METRICS_SCHEMA = {
    **{name: _COST if name in views_usage.COSTS else _COUNT for name in views_usage.METRICS},
    "errors": {"type": ["integer", "null"], "description": "null where the daily rollup answered"},
}
_USAGE_SCHEMA = {
    "type": "object",
    "required": ["rows", "total", "next_cursor"],
    "properties": {
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"group": {"type": "object"}, **_METRICS_SCHEMA},
            },
        },
        "total": {"type": "object", "properties": _METRICS_SCHEMA},
        "next_cursor": {"type": ["string", "null"]},
        "since": {"type": "string"},
        "until": {"type": "string"},
        "by": {"type": "array", "items": {"type": "string"}},
        "tenant": {"type": ["string", "null"]},
        "time_zone": {"const": "UTC"},
    },
}
_SERIES_SCHEMA = {
    "type": "object",
    "required": ["step", "points"],
    "properties": {
        "step": {"enum": list(views_usage.STEPS)},
        "by": {"type": "string"},
        "since": {"type": "string"},
        "until": {"type": "string"},
        "time_zone": {"const": "UTC"},
        "points": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["t", "series", *views_usage.SERIES_METRICS],
                "properties": {
                    "t": {"type": "string"},
                    "series": {"type": ["string", "null"]},
                    **{
                        name: {"type": "number"} if name in views_usage.COSTS else _COUNT
                        for name in views_usage.SERIES_METRICS
                    },
                },
            },
        },
    },
}

OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/usage",
        Action.USAGE_READ,
        "Usage totals per group over a window (JSON pages, or CSV)",
        usage,
        "getUsage",
        query={
            "since": {**_TIME, "default": views_usage.DEFAULT_SINCE},
            "until": {**_TIME, "description": "exclusive; default now"},
            "by": {"type": "string", "description": "comma list of " + ", ".join(views_usage.BY_KEYS)},
            "tenant": {"type": "string", "description": "one tenant only (a tenant-admin: always its own)"},
            "format": {"enum": list(views_usage.FORMATS), "default": "json"},
            "cursor": {"type": "string"},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": views_usage.MAX_LIMIT,
                "default": views_usage.DEFAULT_LIMIT,
            },
        },
        responses={200: _USAGE_SCHEMA},
        # format=csv answers the same rows as text/csv: both declared, so a client (and
        # schemathesis) knows either may come back.
        content_types={200: {"application/json": _USAGE_SCHEMA, "text/csv": {"type": "string"}}},
        tags=("usage",),
    ),
    Operation(
        "GET",
        "/usage/series",
        Action.USAGE_READ,
        "Usage points per hour or day and per series, for charts",
        series,
        "getUsageSeries",
        query={
            "since": {**_TIME, "description": "default 24h (step=hour) or 30d (step=day)"},
            "until": {**_TIME, "description": "exclusive; default now"},
            "step": {"enum": list(views_usage.STEPS), "default": "day"},
            "by": {"enum": list(views_usage.SERIES_BY), "default": "none"},
            "tenant": {"type": "string", "description": "one tenant only (a tenant-admin: always its own)"},
        },
        responses={200: _SERIES_SCHEMA},
        tags=("usage",),
    ),
]
