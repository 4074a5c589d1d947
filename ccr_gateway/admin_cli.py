"""`ccr-gateway admin keys create|list|revoke`: the Admin API's own keys, on the admin key store
directly (the first key has to come from somewhere: this runs where the control plane's store is).

  admin keys create --role admin|operator|viewer|tenant-admin [--tenant T] --name N
  admin keys list [--format table|json]
  admin keys revoke ID

The store: ``--sqlite PATH`` (default $XDG_DATA_HOME/ccr-gateway/admin.db) or ``--postgres DSN``
(default $CCR_ADMIN_POSTGRES). create and revoke are audited (fail closed, as `keys`), ``--actor``
or $CCR_AUDIT_ACTOR or the OS user as who, in the log the key CLI writes ($CCR_AUDIT_POSTGRES, else
$CCR_AUTH_POSTGRES, else the local file). Exit codes: 0 ok, 1 store or audit unusable / no such
key, 2 a bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from audit.hooks import AuditKeyError, AuditLog, AuditUnavailable, admin_change, enabled, for_key_store
from control_plane.admin.principals import (
    ADMIN_POSTGRES_ENV,
    AdminKeyNotFound,
    AdminKeyStore,
    AdminKeyStoreUnavailable,
    default_admin_path,
    new_admin_key_record,
    open_admin_key_store,
)
from control_plane.admin.roles import Role

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "The Admin API's own keys (docs/admin-api.md)."
    area = parser.add_subparsers(dest="admin_area", required=True, metavar="AREA")
    keys = area.add_parser("keys", help="admin keys: create | list | revoke")
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_mutually_exclusive_group()
    where.add_argument("--sqlite", metavar="PATH", help=f"the admin key store (default {default_admin_path()})")
    where.add_argument("--postgres", metavar="DSN", help=f"PostgreSQL instead (default ${ADMIN_POSTGRES_ENV})")
    store.add_argument("--actor", help="who, for the audit log (default $CCR_AUDIT_ACTOR, else the OS user)")
    sub = keys.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", parents=[store], help="make an admin key and print it (once)")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--tenant", help="the tenant of a tenant-admin (required for that role, only for it)")
    create.add_argument("--name", required=True, help="whose key, e.g. alice or ci")
    listing = sub.add_parser("list", parents=[store], help="the admin keys, without secrets")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    revoke = sub.add_parser("revoke", parents=[store], help="stop an admin key working (and its console sessions)")
    revoke.add_argument("key_id", metavar="ID")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dsn = args.postgres or (None if args.sqlite else os.environ.get(ADMIN_POSTGRES_ENV))
    store = open_admin_key_store(args.sqlite, dsn)
    try:
        return asyncio.run(_run(args, store))
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc))


async def _run(args: argparse.Namespace, store: AdminKeyStore) -> int:
    changes = args.admin_command in ("create", "revoke")
    audit = for_key_store(os.environ.get("CCR_AUTH_POSTGRES")) if changes and enabled() else None
    try:
        if audit is not None:
            await audit.ready()  # fail closed: nothing changes that the log could not record
        if args.admin_command == "create":
            role = Role(args.role)
            presented, record = new_admin_key_record(args.name, role, args.tenant, time.time())
            await store.create(record)
            details = {"name": record.name, "role": role.value, "tenant": record.tenant}
            await _audited(audit, "admin_key.create", record.key_id, store.description, details, args.actor)
            print(f"created admin key {record.key_id} ({role.value}, {record.name}):\n\n    {presented}\n")
            print("Store it now: it is not shown again.", file=sys.stderr)
        elif args.admin_command == "revoke":
            record = await store.revoke(args.key_id, time.time())
            details = {"name": record.name, "role": record.role.value}
            await _audited(audit, "admin_key.revoke", record.key_id, store.description, details, args.actor)
            print(f"revoked admin key {record.key_id} ({record.role.value}, {record.name})")
        else:
            records = [record.public() for record in await store.list()]
            if args.format == "json":
                print(json.dumps(records, indent=2))
            else:
                print(_table(records))
        return EXIT_OK
    except (AuditKeyError, AuditUnavailable) as exc:
        return _fail(EXIT_FAILED, f"audit log: {exc}; nothing changed")
    except AdminKeyStoreUnavailable as exc:
        return _fail(EXIT_FAILED, str(exc))
    except AdminKeyNotFound as exc:
        return _fail(EXIT_FAILED, f"no admin key {exc.args[0]!r} in {store.description}")
    finally:
        await store.close()
        if audit is not None:
            await audit.close()


async def _audited(
    audit: AuditLog | None, action: str, key_id: str, source: str, details: dict, who: str | None
) -> None:
    try:
        await admin_change(audit, action, key_id, source, details, who)
    except (AuditKeyError, AuditUnavailable) as exc:
        raise AdminKeyStoreUnavailable(f"{action} {key_id} was done but NOT audited: {exc}") from None


def _fail(code: int, message: str) -> int:
    print(f"ccr-gateway admin: {message}", file=sys.stderr)
    return code


def _table(records: list[dict]) -> str:
    header = ("ID", "NAME", "ROLE", "TENANT", "STATE")
    rows = [header] + [(r["id"], r["name"], r["role"], r["tenant"] or "-", r["state"]) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
