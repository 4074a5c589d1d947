"""GET /admin/v1/status: the control plane's status file, each Envoy admin (settings.envoy_admins)
and the ledger, read concurrently and shaped by views_status.

Nothing here answers a 5xx for a part that is down: an Envoy admin that does not answer is listed
unreachable, an unreadable status file gives null policy fields, a ledger that cannot be read gives
null lag and hit ratio. Each Envoy admin has ENVOY_TIMEOUT to answer.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from control_plane.admin import views_status
from control_plane.admin.errors import AdminError
from control_plane.admin.http import json_response
from control_plane.admin.operations import Operation
from control_plane.admin.roles import Action, Principal
from control_plane.admin.routes_policy import read_status_file
from control_plane.admin.routes_usage import LEDGER
from control_plane.admin.settings import AdminSettings

log = logging.getLogger("ccr.admin.status")

ENVOY_TIMEOUT = 2.0
STATUS_SETTINGS: web.AppKey[AdminSettings] = web.AppKey("ccr_admin_status_settings")


async def fetch_admin(session: aiohttp.ClientSession, url: str) -> views_status.EnvoyAdmin:
    base = url.rstrip("/")
    stats_url = f"{base}/stats?format=json&filter={urllib.parse.quote(views_status.STATS_FILTER)}"
    try:
        async with asyncio.timeout(ENVOY_TIMEOUT):
            async with session.get(f"{base}/clusters?format=json") as answer:
                answer.raise_for_status()
                clusters = await answer.json(content_type=None)
            async with session.get(stats_url) as answer:
                stats = await answer.json(content_type=None) if answer.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
        return views_status.EnvoyAdmin(url, None, None, f"{type(exc).__name__}: {exc}".rstrip(": "))
    if not isinstance(clusters, dict):
        return views_status.EnvoyAdmin(url, None, None, "/clusters?format=json did not answer a JSON object")
    return views_status.EnvoyAdmin(url, clusters, stats if isinstance(stats, dict) else {})


async def ledger_figures(app: web.Application, now: datetime) -> dict[str, Any]:
    """The newest record's time and the last hour's requests and cache hits; {} when unknown."""
    opener = app.get(LEDGER)
    if opener is None:
        return {}
    try:
        reader = await opener(app[STATUS_SETTINGS])
        try:
            newest = await reader.newest_record()
            since = now - timedelta(seconds=views_status.CACHE_WINDOW_SECONDS)
            rows = await reader.usage(since, now, (), None)
        finally:
            await reader.close()
    except AdminError as exc:  # the ledger is down: its figures are unknown, the status still answers
        log.info("status: the ledger cannot be read: %s", exc.message)
        return {}
    requests = sum(int(row.get("requests") or 0) for row in rows)
    hits = sum(int(row.get("cache_hits") or 0) for row in rows)
    return {"newest_record": newest, "cache_requests": requests, "cache_hits": hits}


async def status(request: web.Request, principal: Principal) -> web.StreamResponse:
    settings = request.app[STATUS_SETTINGS]
    now = datetime.now(UTC)
    async with aiohttp.ClientSession() as session:
        admins, document, figures = await asyncio.gather(
            asyncio.gather(*(fetch_admin(session, url) for url in settings.envoy_admins)),
            asyncio.to_thread(read_status_file, settings.status_file),
            ledger_figures(request.app, now),
        )
    return json_response(views_status.status_body(document, list(admins), now=now, **figures))


async def setup(app: web.Application, settings: AdminSettings) -> None:
    app[STATUS_SETTINGS] = settings


_NULLABLE_NUMBER = {"type": ["number", "null"]}
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/status",
        Action.STATUS_READ,
        "Policy in force, xDS clients' ACKs, Envoy clusters (red/amber/green), cache hit ratio, ledger lag",
        status,
        "getStatus",
        responses={
            200: {
                "type": "object",
                "required": ["policy", "gateways", "clusters", "cache", "ledger"],
                "properties": {
                    "policy": {
                        "type": "object",
                        "properties": {
                            "version": {"type": ["string", "null"]},
                            "generation": {"type": ["string", "null"]},
                            "accepted_at": {"type": ["string", "null"]},
                            "source": {"type": ["string", "null"]},
                            "rejection_pending": {"type": "boolean"},
                        },
                    },
                    "gateways": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "node": {"type": "string"},
                                "group": {"type": "string"},
                                "acked_version": {"type": ["string", "null"]},
                                "acked": {"type": "object"},
                                "nacked": {"type": ["string", "null"]},
                            },
                        },
                    },
                    "envoy": {"type": "array", "items": {"type": "object"}},
                    "clusters": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "gateway": {"type": "string"},
                                "hosts": {"type": "integer"},
                                "healthy": {"type": "integer"},
                                "ejected": {"type": "integer"},
                                "circuit_breaker": {"type": "object"},
                                "circuit_breaker_open": {"type": "array", "items": {"type": "string"}},
                                "state": {"enum": ["green", "amber", "red"]},
                            },
                        },
                    },
                    "cache": {"type": "object", "properties": {"hit_ratio": _NULLABLE_NUMBER}},
                    "ledger": {"type": "object", "properties": {"lag_seconds": _NULLABLE_NUMBER}},
                },
            }
        },
        tags=("status",),
    ),
]
