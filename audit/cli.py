"""`ccr-gateway audit verify|export|list`: check and ship the tamper-evident audit log.

  audit verify [--postgres DSN | --sqlite PATH] [--key-file F]
  audit export [--since 1d | --since 2025-01-02T00:00:00Z] [--format jsonl]
  audit list [--limit 20]

The store is PostgreSQL when ``--postgres``, ``$CCR_AUDIT_POSTGRES`` or ``$CCR_AUTH_POSTGRES`` says
so, else the local file (audit.stores). verify prints one line: ``ok: N entries, head seq S`` (exit
0) or ``FAILED at seq S: reason`` (exit 1, the first break: an edited, inserted, reordered or
deleted entry, or a wrong key). Exit codes: 0 ok, 1 verify failed or the store/key could not be
used, 2 a bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta

import orjson

from audit.chain import verify
from audit.keys import KEY_FILE_ENV, AuditKeyError, load_key
from audit.stores import AuditStore, AuditUnavailable, default_audit_path, open_audit_store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "The audit log: policy, key and admin changes, hash-chained."
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_mutually_exclusive_group()
    where.add_argument("--sqlite", metavar="PATH", help=f"the local audit log (default {default_audit_path()})")
    where.add_argument(
        "--postgres",
        metavar="DSN",
        help="PostgreSQL (default $CCR_AUDIT_POSTGRES, else $CCR_AUTH_POSTGRES; ${VAR} from the environment)",
    )
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = sub.add_parser("verify", parents=[store], help="check the hash chain: exit 1 naming the first broken entry")
    check.add_argument("--key-file", metavar="F", help=f"the HMAC key (default ${KEY_FILE_ENV}, $CCR_AUDIT_KEY)")
    export = sub.add_parser("export", parents=[store], help="entries as JSON lines, for a SIEM")
    export.add_argument("--since", metavar="WHEN", help="a duration back from now (90m, 1d, 2w) or an ISO time (UTC)")
    export.add_argument("--format", choices=("jsonl",), default="jsonl")
    listing = sub.add_parser("list", parents=[store], help="the newest entries, one line each")
    listing.add_argument("--limit", type=int, default=20, metavar="N")
    listing.add_argument("--since", metavar="WHEN", help="as for export")
    parser.set_defaults(func=run)


def since_time(text: str, now: datetime | None = None) -> str:
    """``1d``, ``90m`` (back from now) or an ISO time -> the ISO UTC string entries are stored with."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is not None:
        moment = (now or datetime.now(UTC)) - timedelta(seconds=float(match[1]) * _SECONDS[match[2]])
    else:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since {text!r}: expected a duration like 90m, 1d, 2w or an ISO time") from None
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run(args: argparse.Namespace) -> int:
    try:
        since = since_time(args.since) if getattr(args, "since", None) else None
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc))
    store = open_audit_store(postgres=args.postgres, sqlite=args.sqlite)
    return asyncio.run(_run(args, store, since))


async def _run(args: argparse.Namespace, store: AuditStore, since: str | None) -> int:
    try:
        if args.audit_command == "verify":
            return await _verify(args, store)
        entries = await store.entries(since)
        if args.audit_command == "export":
            out = sys.stdout.buffer
            for entry in entries:
                out.write(orjson.dumps(entry.to_json()) + b"\n")
            out.flush()
        else:
            for entry in entries[-args.limit :] if args.limit > 0 else entries:
                version = f" xds={entry.xds_version}" if entry.xds_version else ""
                print(f"{entry.seq:>6} {entry.at} {entry.actor} {entry.action} {entry.target}{version} @{entry.host}")
        return EXIT_OK
    except (AuditUnavailable, AuditKeyError) as exc:
        return _fail(EXIT_FAILED, str(exc))
    finally:
        await store.close()


async def _verify(args: argparse.Namespace, store: AuditStore) -> int:
    # A verifier never invents a key: a new one would only say "wrong key".
    key = load_key(args.key_file, create=False)
    head = await store.head()
    entries = await store.entries()
    broken = verify(key, entries, head)
    if broken is not None:
        print(f"audit verify: FAILED at {broken} ({store.description})")
        return EXIT_FAILED
    print(f"audit verify: ok: {len(entries)} entries, head seq {head.seq} {head.hash[:16]} ({store.description})")
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"ccr-gateway audit: {message}", file=sys.stderr)
    return code
