"""GET /audit: the hash-chained audit log (audit.stores), filtered, newest first. Reading it
does not verify the chain: `ccr-gateway audit verify` does, with the key."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from control_plane.admin import http, views_audit
from control_plane.admin.http import json_response, query_of
from control_plane.admin.operations import Operation
from control_plane.admin.roles import Action, Principal
from control_plane.admin.views_common import CURSOR_SCHEMA, limit_schema


async def list_audit(request: web.Request, principal: Principal) -> web.Response:
    query = query_of(request)
    since = views_audit.since_bound(query.get("since"), datetime.now(UTC))
    entries = await request.app[http.AUDIT].entries(since)
    return json_response(
        views_audit.listing(
            entries, query.get("action"), query.get("actor"), query.get("cursor"), query.get("limit", 50)
        )
    )


OPERATIONS = [
    Operation(
        "GET",
        "/audit",
        Action.AUDIT_READ,
        "Audit log entries, newest first (since: ISO time or 24h/7d; action: exact or a prefix*)",
        list_audit,
        "listAudit",
        query={
            "since": {"type": "string"},
            "action": {"type": "string"},
            "actor": {"type": "string"},
            "cursor": CURSOR_SCHEMA,
            "limit": limit_schema(),
        },
        responses={200: views_audit.LIST_SCHEMA},
        tags=("audit",),
    )
]
