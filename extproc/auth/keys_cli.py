"""`ccr-gateway keys create|list|show|update|revoke|rotate`: the virtual keys clients present.

  keys create --tenant T --name N [--models a,b] [--rpm R] [--tpm T] [--max-parallel P]
              [--budget-usd B [--budget-period day|week|month]] [--expires 30d]
  keys list [--tenant T] [--format table|json]
  keys show ID [--format table|json]
  keys update ID [the limit options of create]
  keys revoke ID
  keys rotate ID [--grace 24h]
  keys ... --admin URL [--admin-key-env CCR_ADMIN_KEY]   through a control plane's Admin API

A key is printed once, by create and rotate; lists and show never print a secret or a hash. The
store is the local SQLite file (``--sqlite PATH``, the default) or PostgreSQL (``--postgres DSN``,
default $CCR_AUTH_POSTGRES, ``${VAR}`` expanded from the environment). Exit codes: 0 ok, 1 the
store could not be used or has no such key, 2 a bad option.

create, update, revoke and rotate are appended to the audit log (docs/audit.md; never a secret),
``--actor`` or $CCR_AUDIT_ACTOR or the OS user as who. They fail closed: with the audit log
unusable (no key, store unreachable) nothing is changed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from audit.hooks import AuditKeyError, AuditLog, AuditUnavailable, admin_change, enabled, for_key_store
from extproc.auth import key_changes
from extproc.auth.key_store import KeyNotFound, KeyStore, KeyStoreUnavailable, default_keys_path, open_key_store
from extproc.auth.keys import BUDGET_PERIODS, KeyFormatError, KeyRecord, public_fields

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
POSTGRES_ENV = "CCR_AUTH_POSTGRES"
ADMIN_KEY_ENV = "CCR_ADMIN_KEY"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CHANGES = ("create", "update", "revoke", "rotate")  # audited
_LIMITS = ("models", "rpm", "rph", "rpd", "tpm", "tpd", "max_parallel", "budget_usd", "budget_period")


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``30d``, ``2w`` -> seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 24h, 30d, 2w")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Virtual keys: what clients present, whose they are, and their limits."
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_mutually_exclusive_group()
    where.add_argument("--sqlite", metavar="PATH", help=f"the local key store (default {default_keys_path()})")
    where.add_argument(
        "--postgres",
        metavar="DSN",
        help=f"PostgreSQL instead, e.g. postgresql://gw:${{PGPASSWORD}}@db/ccr (default ${POSTGRES_ENV}; ${{VAR}} from the environment)",
    )
    store.add_argument("--actor", help="who, for the audit log (default $CCR_AUDIT_ACTOR, else the OS user)")
    # Through a control plane's Admin API instead of the store (ccr_gateway.keys_command runs it;
    # the API audits with the admin key's holder as the actor, so --actor does not apply there).
    where.add_argument("--admin", metavar="URL", help="through the Admin API at URL, e.g. https://cp:9190")
    store.add_argument(
        "--admin-key-env",
        default=ADMIN_KEY_ENV,
        metavar="NAME",
        help=f"with --admin: the variable holding the admin key (default {ADMIN_KEY_ENV})",
    )
    store.add_argument("--admin-ca", metavar="PEM", help="with --admin over HTTPS: the CA its certificate chains to")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[store], help="make a key and print it (once)")
    create.add_argument("--tenant", required=True, help="who the key belongs to (usage and budgets are per tenant)")
    create.add_argument("--name", required=True, help="what the key is for, e.g. ci-bot or alice-laptop")
    _add_limit_arguments(create)
    create.add_argument("--expires", metavar="DURATION", help="stop working after this long: 90s, 30m, 24h, 30d, 2w")

    listing = sub.add_parser("list", parents=[store], help="the keys, without secrets")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--format", choices=("table", "json"), default="table")

    show = sub.add_parser("show", parents=[store], help="one key, without its secret")
    show.add_argument("key_id", metavar="ID")
    show.add_argument("--format", choices=("table", "json"), default="table")

    update = sub.add_parser("update", parents=[store], help="change a key's name, models, limits or expiry")
    update.add_argument("key_id", metavar="ID")
    update.add_argument("--name")
    _add_limit_arguments(update)
    update.add_argument("--expires", metavar="DURATION", help="from now; 'never' removes the expiry")

    revoke = sub.add_parser("revoke", parents=[store], help="stop a key working (within a second on every gateway)")
    revoke.add_argument("key_id", metavar="ID")

    rotate = sub.add_parser("rotate", parents=[store], help="give a key a new secret and print it (once)")
    rotate.add_argument("key_id", metavar="ID")
    rotate.add_argument(
        "--grace",
        default="24h",
        metavar="DURATION",
        help="how long the old secret keeps working (default 24h; 0s: none)",
    )
    parser.set_defaults(func=run)


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", metavar="A,B", help="only these models (default any)")
    parser.add_argument("--rpm", type=int, metavar="N", help="requests per minute")
    parser.add_argument("--rph", type=int, metavar="N", help="requests per hour")
    parser.add_argument("--rpd", type=int, metavar="N", help="requests per day")
    parser.add_argument("--tpm", type=int, metavar="N", help="tokens per minute (input + output)")
    parser.add_argument("--tpd", type=int, metavar="N", help="tokens per day")
    parser.add_argument("--max-parallel", type=int, metavar="N", help="requests in flight at once")
    parser.add_argument("--budget-usd", type=float, metavar="USD", help="spend allowed per budget period")
    parser.add_argument("--budget-period", choices=BUDGET_PERIODS, help="when the budget resets (default never)")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "admin", None):
        return _fail(EXIT_USAGE, "--admin is served by `ccr-gateway keys` (ccr_gateway.keys_command)")
    dsn = args.postgres or (None if args.sqlite else os.environ.get(POSTGRES_ENV))
    store = open_key_store(sqlite_path=args.sqlite, postgres_dsn=dsn)
    args.audit = for_key_store(dsn) if args.keys_command in _CHANGES and enabled() else None
    try:
        return asyncio.run(_run(args, store))
    except (KeyFormatError, ValueError) as exc:
        return _fail(EXIT_USAGE, str(exc))


async def _run(args: argparse.Namespace, store: KeyStore) -> int:
    try:
        if args.audit is not None:
            await args.audit.ready()  # fail closed: no change that the audit log could not record
        return await _ACTIONS[args.keys_command](args, store)
    except (AuditKeyError, AuditUnavailable) as exc:
        return _fail(EXIT_FAILED, f"audit log: {exc}; nothing changed")
    except KeyStoreUnavailable as exc:
        return _fail(EXIT_FAILED, str(exc))
    except KeyNotFound as exc:
        return _fail(EXIT_FAILED, f"no key {exc.args[0]!r} in {store.description}")
    finally:
        await store.close()
        if args.audit is not None:
            await args.audit.close()


def _fail(code: int, message: str) -> int:
    print(f"ccr-gateway keys: {message}", file=sys.stderr)
    return code


def _limit_changes(args: argparse.Namespace) -> dict[str, object]:
    """The limit options given, as VirtualKey fields (options left out are not in the dict)."""
    changes: dict[str, object] = {}
    for name in _LIMITS:
        value = getattr(args, name)
        if value is not None:
            changes[name] = tuple(m.strip() for m in value.split(",") if m.strip()) if name == "models" else value
    return changes


async def _create(args: argparse.Namespace, store: KeyStore) -> int:
    now = time.time()
    limits = _limit_changes(args)
    if args.expires:
        limits["expires_at"] = now + parse_duration(args.expires)
    change = await key_changes.create(store, args.tenant, args.name, now, limits)
    await _audited(args, store, change)
    stored = change.record
    print(
        f"created key {stored.key_id} for tenant {stored.key.tenant} ({stored.key.name}):\n\n    {change.presented}\n"
    )
    print("Store it now: it is not shown again (rotate the key if it is lost).", file=sys.stderr)
    return EXIT_OK


async def _list(args: argparse.Namespace, store: KeyStore) -> int:
    records = await store.list(args.tenant)
    if args.format == "json":
        print(json.dumps([public_fields(record) for record in records], indent=2))
    else:
        print(_table(records))
    return EXIT_OK


async def _show(args: argparse.Namespace, store: KeyStore) -> int:
    record = await store.get(args.key_id)
    if record is None:
        raise KeyNotFound(args.key_id)
    if args.format == "json":
        print(json.dumps(public_fields(record), indent=2))
    else:
        width = max(len(name) for name in public_fields(record))
        for name, value in public_fields(record).items():
            print(f"{name:<{width}}  {_shown(name, value)}")
    return EXIT_OK


async def _update(args: argparse.Namespace, store: KeyStore) -> int:
    changes = _limit_changes(args)
    if args.name is not None:
        changes["name"] = args.name
    if args.expires is not None:
        changes["expires_at"] = None if args.expires == "never" else time.time() + parse_duration(args.expires)
    if not changes:
        return _fail(EXIT_USAGE, "update: give at least one of --name, --models, --rpm, ... --expires")
    change = await key_changes.update(store, args.key_id, changes)
    await _audited(args, store, change)
    print(f"updated key {change.key_id}: {', '.join(sorted(changes))}")
    return EXIT_OK


async def _revoke(args: argparse.Namespace, store: KeyStore) -> int:
    change = await key_changes.revoke(store, args.key_id)
    await _audited(args, store, change)
    record = change.record
    print(f"revoked key {record.key_id} ({record.key.tenant}, {record.key.name})")
    return EXIT_OK


async def _rotate(args: argparse.Namespace, store: KeyStore) -> int:
    grace = parse_duration(args.grace)
    change = await key_changes.rotate(store, args.key_id, grace)
    await _audited(args, store, change)
    record = change.record
    print(f"rotated key {record.key_id} ({record.key.tenant}, {record.key.name}):\n\n    {change.presented}\n")
    until = f"until {_shown('previous_secret_valid_until', record.previous_valid_until)}" if grace else "no longer"
    print(f"The old secret works {until}. The new one is not shown again.", file=sys.stderr)
    return EXIT_OK


async def _audited(args: argparse.Namespace, store: KeyStore, change: key_changes.Change) -> None:
    """After the store change succeeded. ``details`` never hold the secret or its hash."""
    audit: AuditLog | None = args.audit
    try:
        await admin_change(audit, change.action, change.key_id, store.description, change.details, args.actor)
    except (AuditKeyError, AuditUnavailable) as exc:  # it was there a moment ago (ready())
        raise KeyStoreUnavailable(f"{change.action} {change.key_id} was done but NOT audited: {exc}") from None


_ACTIONS = {
    "create": _create,
    "list": _list,
    "show": _show,
    "update": _update,
    "revoke": _revoke,
    "rotate": _rotate,
}


def _state(record: KeyRecord, now: float) -> str:
    return record.key.usable_at(now) or "active"


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith(("_at", "_until")):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list):
        return ",".join(value) or "any"
    return str(value)


def _table(records: list[KeyRecord]) -> str:
    now = time.time()
    header = ("ID", "TENANT", "NAME", "STATE", "MODELS", "RPM", "TPM", "PARALLEL", "BUDGET", "EXPIRES")
    rows = [header]
    for record in records:
        key = record.key
        budget = "-" if key.budget_usd is None else f"${key.budget_usd:g}/{key.budget_period or 'total'}"
        rows.append(
            (
                key.key_id,
                key.tenant,
                key.name,
                _state(record, now),
                _shown("models", list(key.models)),
                _shown("rpm", key.rpm),
                _shown("tpm", key.tpm),
                _shown("max_parallel", key.max_parallel),
                budget,
                _shown("expires_at", key.expires_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
