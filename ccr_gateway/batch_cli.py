"""`ccr-gateway batch list | show | cancel`: the batch store seen and acted on by an operator.

Reads the same store as `batch-api` and `batch-worker` (`--postgres DSN`, else the local SQLite file).
A cancel is an admin action: audited (fail closed, like `keys revoke`), then applied through the
store's `request_cancel` exactly as the APIs' cancel endpoints apply it (queued items canceled at
once, sent ones finish).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from audit.hooks import AdminAudit, AuditKeyError, AuditUnavailable
from batches.model import Batch, Counts
from batches.store import BatchStore
from ccr_gateway.batch_api import add_store_arguments, open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "The Message Batches in the batch store: list | show | cancel."
    sub = parser.add_subparsers(dest="batch_command", required=True, metavar="{list,show,cancel}")
    listing = sub.add_parser("list", help="a tenant's batches, newest first; or every running batch (--active)")
    add_store_arguments(listing)
    listing.add_argument("--tenant", default="", help="whose batches (default: the anonymous tenant)")
    listing.add_argument("--active", action="store_true", help="every running batch, of every tenant")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", help="one batch: status, counts and times")
    add_store_arguments(show)
    show.add_argument("batch_id")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    cancel = sub.add_parser("cancel", help="cancel a batch: queued items at once, sent ones finish (audited)")
    add_store_arguments(cancel)
    cancel.add_argument("batch_id")
    cancel.add_argument("--actor", help="who, for the audit log (default $CCR_AUDIT_ACTOR, else the OS user)")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args, open_store(args)))
    except (AuditKeyError, AuditUnavailable) as exc:
        print(f"ccr-gateway batch cancel: the audit log is not usable, nothing changed: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, store: BatchStore) -> int:
    try:
        if args.batch_command == "list":
            return await _list(args, store)
        batch = await store.get_batch(args.batch_id)
        if batch is None:
            print(f"ccr-gateway batch: no batch {args.batch_id} in {store.description}", file=sys.stderr)
            return 1
        if args.batch_command == "show":
            summary = describe(batch, await store.counts(batch.id))
            print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
            return 0
        return await _cancel(args, store, batch)
    finally:
        await store.close()


async def _list(args: argparse.Namespace, store: BatchStore) -> int:
    if args.active:
        batches = [b for b in [await store.get_batch(a.batch_id) for a in await store.active_batches()] if b]
    else:
        batches = list((await store.list_batches(args.tenant, limit=max(1, args.limit))).batches)
    rows = [describe(batch, await store.counts(batch.id)) for batch in batches[: max(1, args.limit)]]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'id':<32} {'tenant':<16} {'api':<9} {'status':<10} {'total':>7} {'done':>7}  created")
    for row in rows:
        done = row["succeeded"] + row["errored"] + row["expired"] + row["canceled"]
        print(
            f"{row['id']:<32} {row['tenant'] or '-':<16} {row['api']:<9} {row['status']:<10}"
            f" {row['total']:>7} {done:>7}  {row['created_at']}"
        )
    return 0


async def _cancel(args: argparse.Namespace, store: BatchStore, batch: Batch) -> int:
    async with AdminAudit(args.actor) as audit:  # fail closed: no unaudited cancel
        _, result = await store.request_cancel(batch.id, now=time.time())
        counts = await store.counts(batch.id)
        print(f"{batch.id}: {result.value}; {counts.canceled} canceled, {counts.sent} still finishing")
        details = {"result": result.value, "tenant": batch.tenant, "canceled": counts.canceled}
        try:
            await audit.record("batch.cancel", batch.id, store.description, details)
        except (AuditKeyError, AuditUnavailable) as exc:  # usable a moment ago
            print(f"ccr-gateway batch cancel: done, but NOT audited: {exc}", file=sys.stderr)
            return 1
    return 0


def describe(batch: Batch, counts: Counts) -> dict[str, Any]:
    """A batch for an operator: the API-neutral status and counts, times in UTC."""
    return {
        "id": batch.id,
        "tenant": batch.tenant,
        "api": batch.api.value,
        "endpoint": batch.endpoint,
        "lane": batch.lane,
        "status": batch.status.value,
        "total": batch.total,
        "queued": counts.queued,
        "sent": counts.sent,
        "succeeded": counts.succeeded,
        "errored": counts.errored,
        "expired": counts.expired,
        "canceled": counts.canceled,
        "created_at": _utc(batch.created_at),
        "expires_at": _utc(batch.expires_at),
        "cancel_requested_at": _utc(batch.cancel_requested_at),
        "ended_at": _utc(batch.ended_at),
    }


def _utc(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
