"""Virtual keys as the Admin API shows and takes them. Sans-IO: keys (key_admin.Key) and dicts
in, dicts out.

``K`` never holds a secret or a hash (there is none in a Key anyway); the presented key appears
once, in the answer to create and rotate (routes_keys). Bounds in the
schemas are the stores' own (PostgreSQL's ``integer`` columns, no NUL in ``text``), so a value the
schema lets through can always be stored: bad input is a 400, never a store error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.admin.key_admin import BUDGET_PERIODS, Key, KeyRejected
from control_plane.admin.views_common import NULLABLE_CURSOR, Invalid, decode_cursor, encode_cursor, iso, page

INT32_MAX = 2_147_483_647
MAX_SECONDS = 100 * 365 * 86400  # an expiry or grace beyond a century is a typo
TEXT = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[^\\x00-\\x1f\\x7f]*[^\\s\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$",
}
_COUNT = {"type": ["integer", "null"], "minimum": 1, "maximum": INT32_MAX}
COUNTS = ("rpm", "rph", "rpd", "tpm", "tpd", "max_parallel")
LIMIT_PROPERTIES: dict[str, Any] = {
    "models": {"type": ["array", "null"], "items": TEXT, "maxItems": 500},
    **{name: _COUNT for name in COUNTS},
    "budget_usd": {"type": ["number", "null"], "minimum": 0, "maximum": 1e12},
    "budget_period": {"enum": [*BUDGET_PERIODS, None]},
    "expires_in_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
}
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tenant", "name"],
    "properties": {"tenant": TEXT, "name": TEXT, **LIMIT_PROPERTIES},
    "additionalProperties": False,
}
PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "properties": {"name": TEXT, **LIMIT_PROPERTIES},
    "additionalProperties": False,
}
ROTATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"grace_seconds": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS, "default": 86400}},
    "additionalProperties": False,
}
_NULLABLE_INT = {"type": ["integer", "null"]}
KEY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        *("id", "tenant", "name", "models", *COUNTS, "budget_usd", "budget_period"),
        *("created_at", "expires_at", "revoked", "state"),
    ],
    "properties": {
        "id": {"type": "string"},
        "tenant": {"type": "string"},
        "name": {"type": "string"},
        "models": {"type": "array", "items": {"type": "string"}},
        **{name: _NULLABLE_INT for name in COUNTS},
        "budget_usd": {"type": ["number", "null"]},
        "budget_period": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "expires_at": {"type": ["string", "null"]},
        "revoked": {"type": "boolean"},
        "state": {"enum": ["active", "revoked", "expired"]},
    },
}
CREATED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", "record"],
    "properties": {"key": {"type": "string"}, "record": KEY_SCHEMA},
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data", "next_cursor"],
    "properties": {"data": {"type": "array", "items": KEY_SCHEMA}, "next_cursor": NULLABLE_CURSOR},
}
TENANTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "keys", "active_keys", "in_policy"],
                "properties": {
                    "name": {"type": "string"},
                    "keys": {"type": "integer"},
                    "active_keys": {"type": "integer"},
                    "in_policy": {"type": "boolean"},
                },
            },
        }
    },
}
_CURSOR_SHAPE = (str, float, str)


def render(key: Key, now: float) -> dict[str, Any]:
    """``K``: the key's limits and state, never its secret or hash."""
    return {
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "models": list(key.models),
        **{name: getattr(key, name) for name in COUNTS},
        "budget_usd": key.budget_usd,
        "budget_period": key.budget_period,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked": key.revoked,
        "state": key.unusable_at(now) or "active",
    }


def limit_changes(body: Mapping[str, Any], now: float) -> dict[str, object]:
    """The VirtualKey fields a create or patch body sets (null clears: no limit, any model, no
    expiry); ``expires_in_seconds`` becomes an absolute ``expires_at``."""
    changes: dict[str, object] = {}
    for name, value in body.items():
        if name == "models":
            changes["models"] = tuple(value or ())
        elif name == "expires_in_seconds":
            changes["expires_at"] = None if value is None else now + float(value)
        elif name == "budget_usd" and value is not None:
            changes[name] = float(value)
        elif name in LIMIT_PROPERTIES or name == "name":
            changes[name] = value.strip() if name == "name" else value
    return changes


def create_request(body: Mapping[str, Any], now: float) -> tuple[str, str, dict[str, object]]:
    """(tenant, name, the limits for ``KeyAdmin.create``) from a validated create body;
    Invalid where the fields disagree (a budget period without a budget)."""
    limits = {name: value for name, value in limit_changes(body, now).items() if value is not None}
    limits.pop("name", None)
    if "budget_period" in limits and "budget_usd" not in limits:
        raise Invalid("budget_period needs budget_usd", [{"path": "budget_period", "message": "needs budget_usd"}])
    return body["tenant"].strip(), body["name"].strip(), limits


def patch_request(body: Mapping[str, Any], now: float) -> dict[str, object]:
    return limit_changes(body, now)


def format_error(error: KeyRejected) -> Invalid:
    """Values the key format refuses (e.g. a budget period left without a budget by a patch)."""
    return Invalid(str(error), [{"path": "(body)", "message": str(error)}])


def sort_key(key: Key) -> list[Any]:
    return [key.tenant, float(key.created_at), key.id]


def listing(keys: Iterable[Key], cursor: str | None, limit: int, now: float) -> dict[str, Any]:
    """``{"data": [K], "next_cursor"}``: by tenant, then age, then id."""
    ordered = sorted(keys, key=sort_key)
    chunk, last = page(ordered, sort_key, decode_cursor(cursor, _CURSOR_SHAPE), limit)
    return {"data": [render(key, now) for key in chunk], "next_cursor": encode_cursor(last) if last else None}


def tenants(keys: Iterable[Key], in_policy: Iterable[str], now: float) -> dict[str, Any]:
    """Every tenant with keys or in the policy: how many keys, how many usable now."""
    counts: dict[str, list[int]] = {}
    for key in keys:
        count = counts.setdefault(key.tenant, [0, 0])
        count[0] += 1
        count[1] += key.unusable_at(now) is None
    named = set(in_policy)
    for name in named:
        counts.setdefault(name, [0, 0])
    return {
        "data": [
            {"name": name, "keys": total, "active_keys": active, "in_policy": name in named}
            for name, (total, active) in sorted(counts.items())
        ]
    }
