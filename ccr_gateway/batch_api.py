"""`ccr-gateway batch-api`: the Message Batches HTTP API (Anthropic and OpenAI) as a service.

Composition only: a store (PostgreSQL when a DSN is given, else the local SQLite file) and
batches.api_service's app, served until SIGINT/SIGTERM. The service believes the tenant header,
so it must listen where only the gateway's Envoy can reach it (docs/batches.md, "HTTP API").
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import sys
from pathlib import Path

from batches.api_http import DEFAULT_TENANT_HEADER, ServiceConfig
from batches.api_service import build_app, start
from batches.store import BatchStore

DEFAULT_LISTEN = "127.0.0.1:9180"


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/ccr-gateway/batches.db``, i.e. ``~/.local/share/ccr-gateway/batches.db``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ccr-gateway" / "batches.db"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the Anthropic Message Batches API and the OpenAI Files + Batch API. Listen only where "
        "the gateway's Envoy can reach it: the tenant comes from a header the gateway sets."
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help="address to serve on (default: %(default)s)"
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--tenant-header",
        default=DEFAULT_TENANT_HEADER,
        help="the header the gateway sets to the caller's tenant (default: %(default)s)",
    )
    parser.add_argument(
        "--require-tenant",
        action="store_true",
        help="answer 401 to requests without the tenant header (the gateway requires keys)",
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="where clients reach the gateway, for results_url (default: from each request's host)",
    )
    parser.add_argument(
        "--mixed-models",
        action="store_true",
        help="let one OpenAI batch name several models (OpenAI refuses that; the gateway can route them)",
    )


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the batch store is (shared by `batch-api`, `batch-worker` and `batch`)."""
    stores = parser.add_mutually_exclusive_group()
    stores.add_argument(
        "--postgres",
        default=os.environ.get("CCR_BATCH_POSTGRES"),
        metavar="DSN",
        help="PostgreSQL DSN shared with the batch workers (default $CCR_BATCH_POSTGRES)",
    )
    stores.add_argument("--sqlite", metavar="PATH", help=f"SQLite file (default {default_store_path()})")


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen takes HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def open_store(args: argparse.Namespace) -> BatchStore:
    if args.postgres and not args.sqlite:
        from batches.pg_store import PostgresBatchStore, redact_dsn

        return PostgresBatchStore(args.postgres, description=redact_dsn(args.postgres))
    from batches.sqlite_store import SqliteBatchStore

    return SqliteBatchStore(args.sqlite or default_store_path())


def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"ccr-gateway batch-api: {exc}", file=sys.stderr)
        return 2
    config = ServiceConfig(
        tenant_header=args.tenant_header.lower(),
        require_tenant=args.require_tenant,
        public_url=args.public_url,
        one_model=not args.mixed_models,
    )
    return asyncio.run(_serve(open_store(args), config, host, port))


async def _serve(store: BatchStore, config: ServiceConfig, host: str, port: int) -> int:
    try:
        try:
            await store.get_batch("startup-probe")  # opens and migrates the store: its errors now, not per request
        except Exception as exc:
            print(f"ccr-gateway batch-api: cannot open the store {store.description}: {exc}", file=sys.stderr)
            return 1
        try:
            runner, bound = await start(build_app(store, config), host, port)
        except OSError as exc:  # most often the port is taken: one line, not aiohttp's traceback
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            print(f"ccr-gateway batch-api: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"batch API listening on http://{host}:{bound} (store: {store.description})", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        return 0
    finally:
        await store.close()
