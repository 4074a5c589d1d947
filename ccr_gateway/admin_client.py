"""`ccr-gateway keys ... --admin URL`: create, list, show, update, revoke and rotate a virtual key
through a control plane's Admin API instead of the local store. The admin key comes from the
environment (``--admin-key-env``, default $CCR_ADMIN_KEY), never the command line; the API audits
each change with that key's holder as the actor. Exit codes as `keys`: 0 ok, 1 the API refused or
could not be reached, 2 a bad option (the API's 400 included)."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from extproc.auth.keys_cli import _LIMITS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parse_duration

TIMEOUT = 30.0


class ApiFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """The few calls the key commands make; JSON in and out, the contract's errors raised."""

    def __init__(self, base_url: str, admin_key: str, ca_file: str | None = None) -> None:
        self.base = base_url.rstrip("/") + "/admin/v1"
        self.admin_key = admin_key
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = self.base + path
        given = {name: value for name, value in (query or {}).items() if value is not None}
        if given:
            url += "?" + urllib.parse.urlencode(given)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.admin_key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            raise ApiFailure(exc.code, _message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiFailure(0, f"cannot reach the Admin API at {self.base}: {exc}") from None
        return json.loads(raw) if raw else None


def _message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code}"
    details = "; ".join(f"{d.get('path')}: {d.get('message')}" for d in body.get("details") or [])
    return f"{body.get('message')} ({body.get('code')}, HTTP {error.code})" + (f": {details}" if details else "")


def run_keys(args: argparse.Namespace) -> int:
    admin_key = os.environ.get(args.admin_key_env, "")
    if not admin_key:
        return _fail(EXIT_USAGE, f"--admin needs the admin key in ${args.admin_key_env}")
    client = AdminClient(args.admin, admin_key, args.admin_ca)
    try:
        return _ACTIONS[args.keys_command](args, client)
    except ApiFailure as exc:
        return _fail(EXIT_USAGE if exc.status == 400 else EXIT_FAILED, str(exc))
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc))


def _fail(code: int, message: str) -> int:
    print(f"ccr-gateway keys: {message}", file=sys.stderr)
    return code


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in _LIMITS:
        value = getattr(args, name)
        if value is not None:
            body[name] = [m.strip() for m in value.split(",") if m.strip()] if name == "models" else value
    return body


def _create(args: argparse.Namespace, client: AdminClient) -> int:
    body = {"tenant": args.tenant, "name": args.name, **_limits(args)}
    if args.expires:
        body["expires_in_seconds"] = parse_duration(args.expires)
    made = client.call("POST", "/keys", body)
    record = made["record"]
    print(f"created key {record['id']} for tenant {record['tenant']} ({record['name']}):\n\n    {made['key']}\n")
    print("Store it now: it is not shown again (rotate the key if it is lost).", file=sys.stderr)
    return EXIT_OK


def _list(args: argparse.Namespace, client: AdminClient) -> int:
    keys: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.call("GET", "/keys", query={"tenant": args.tenant, "cursor": cursor, "limit": 200})
        keys += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    if args.format == "json":
        print(json.dumps(keys, indent=2))
    else:
        print(_table(keys))
    return EXIT_OK


def _show(args: argparse.Namespace, client: AdminClient) -> int:
    key = client.call("GET", f"/keys/{urllib.parse.quote(args.key_id, safe='')}")
    if args.format == "json":
        print(json.dumps(key, indent=2))
    else:
        width = max(len(name) for name in key)
        for name, value in key.items():
            print(f"{name:<{width}}  {'-' if value is None else value}")
    return EXIT_OK


def _update(args: argparse.Namespace, client: AdminClient) -> int:
    body = _limits(args)
    if args.name is not None:
        body["name"] = args.name
    if args.expires is not None:
        body["expires_in_seconds"] = None if args.expires == "never" else parse_duration(args.expires)
    if not body:
        return _fail(EXIT_USAGE, "update: give at least one of --name, --models, --rpm, ... --expires")
    key = client.call("PATCH", f"/keys/{urllib.parse.quote(args.key_id, safe='')}", body)
    print(f"updated key {key['id']}: {', '.join(sorted(body))}")
    return EXIT_OK


def _revoke(args: argparse.Namespace, client: AdminClient) -> int:
    key = client.call("POST", f"/keys/{urllib.parse.quote(args.key_id, safe='')}/revoke")
    print(f"revoked key {key['id']} ({key['tenant']}, {key['name']})")
    return EXIT_OK


def _rotate(args: argparse.Namespace, client: AdminClient) -> int:
    grace = parse_duration(args.grace)
    made = client.call("POST", f"/keys/{urllib.parse.quote(args.key_id, safe='')}/rotate", {"grace_seconds": grace})
    record = made["record"]
    print(f"rotated key {record['id']} ({record['tenant']}, {record['name']}):\n\n    {made['key']}\n")
    print(f"The old secret works for {args.grace} more. The new one is not shown again.", file=sys.stderr)
    return EXIT_OK


_ACTIONS = {"create": _create, "list": _list, "show": _show, "update": _update, "revoke": _revoke, "rotate": _rotate}


def _table(keys: list[dict[str, Any]]) -> str:
    header = ("ID", "TENANT", "NAME", "STATE", "MODELS", "RPM", "TPM", "PARALLEL", "BUDGET", "EXPIRES")
    rows = [header]
    for key in keys:
        budget = "-" if key["budget_usd"] is None else f"${key['budget_usd']:g}/{key['budget_period'] or 'total'}"
        rows.append(
            (
                key["id"],
                key["tenant"],
                key["name"],
                key["state"],
                ",".join(key["models"]) or "any",
                *("-" if key[name] is None else str(key[name]) for name in ("rpm", "tpm", "max_parallel")),
                budget,
                key["expires_at"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
