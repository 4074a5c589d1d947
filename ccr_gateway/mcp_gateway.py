"""`ccr-gateway mcp-gateway`: the MCP gateway service (extproc/mcp_service.py) as a process.

Composition only: the policy from the control plane (the same xDS subscription as an ext_proc
worker, ``RoutingTable.mcp``), the session store and call counter (in this process, or Redis with
``--redis``), the usage sink the ext_proc worker would use (ccr_gateway.ledger_wiring), the audit
log (audit.hooks.AuditLog, appended off the request path), Prometheus on ``--metrics``, spans to
the policy's ``tracing:`` collector (extproc.tracing_export, as an ext_proc worker does; service
name ``<service_name>-mcp``). Served until SIGINT/SIGTERM, then stdio servers are shut down as the
MCP spec says (close stdin, SIGTERM, SIGKILL) and the sinks flushed.

The service believes the x-ccr-tenant / x-ccr-key headers: it must listen where only the
gateway's Envoy can reach it (a Unix socket, or loopback), like the batch API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from audit.chain import Draft
from audit.hooks import AUDIT_FAILURES, AuditLog, enabled
from audit.keys import AuditKeyError
from audit.stores import AuditUnavailable, open_audit_store
from ccr.v1.env_refs import EnvError, expand_env, redact_url
from ccr_gateway.ledger_wiring import add_worker_arguments, open_sink
from extproc.mcp_observe import Recorder, ToolCall
from extproc.mcp_service import McpService, ServiceConfig, start
from extproc.mcp_store import DEFAULT_PREFIX

if TYPE_CHECKING:
    from extproc.routing_table import RoutingTable
    from extproc.tracing_export import TracingFollower

log = logging.getLogger("ccr.mcp.gateway")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the MCP endpoint behind Envoy: one MCP server merging the policy's MCP servers, with "
        "the caller's grants, limits, usage and audit. Listen only where the gateway's Envoy can reach "
        "it: the caller comes from headers the gateway sets."
    )
    parser.add_argument("--listen", required=True, metavar="ADDRESS", help="host:port or unix:PATH to serve on")
    parser.add_argument("--control-plane", default="127.0.0.1:18000", help="xDS address of the control plane")
    parser.add_argument(
        "--control-plane-tls-ca", metavar="PEM", help="TLS to the control plane: the CA its certificate chains to"
    )
    parser.add_argument(
        "--control-plane-tls-cert", metavar="PEM", help="this service's client certificate for the control plane"
    )
    parser.add_argument("--control-plane-tls-key", metavar="PEM", help="its private key")
    parser.add_argument(
        "--egress",
        metavar="HOST:PORT",
        help="Envoy's MCP egress listener: HTTP servers are reached through it (header x-ccr-mcp-server); "
        "default: each server's url directly",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="keep sessions and call counts in Redis, shared by replicas (${VAR} and vault: expanded); "
        "default: in this process",
    )
    parser.add_argument("--redis-prefix", default=DEFAULT_PREFIX, help="key prefix in Redis (default %(default)s)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics on /metrics there")
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="write no audit entry per tool call (default: the audit log of $CCR_AUDIT_POSTGRES, else "
        "the local file; $CCR_AUDIT=off also disables it)",
    )
    add_worker_arguments(parser)


MAX_AUDIT_BATCH = 256  # tool call entries written in one audit transaction
# How long the writer lets tool calls gather before a transaction: a transaction and its fsync
# cost ~0.4 ms of CPU for one entry, ~0.1 ms per entry for ten (docs/performance.md, MCP). Entries
# are at most this much later in the log; the usage ledger's own writer batches every 0.5 s.
AUDIT_BATCH_WINDOW_S = 0.1


class ToolCallAudit:
    """One audit entry per tool call, appended in order by one background task: a call never waits
    on the audit store, and a store that is down costs a warning and a counted failure (the rule
    of audit.hooks.PolicyAudit: an audit outage is not a gateway outage)."""

    def __init__(self, audit: AuditLog, window_s: float = AUDIT_BATCH_WINDOW_S) -> None:
        self.audit = audit
        self.window_s = window_s
        self.host = socket.gethostname()
        self._queue: asyncio.Queue[Draft] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None

    def tool_call(self, call: ToolCall) -> None:
        caller = f"key:{call.key_id}" if call.key_id else f"tenant:{call.tenant}" if call.tenant else "anonymous"
        draft = Draft(
            caller, "mcp.tool_call", f"{call.server}/{call.tool}", "mcp-gateway", self.host, "", call.audit_details()
        )
        try:
            self._queue.put_nowait(draft)
        except asyncio.QueueFull:
            AUDIT_FAILURES.labels(draft.action).inc()
            log.warning("audit: tool call %s/%s not recorded: the queue is full", call.server, call.tool)
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        # What queued up during the window, and while the last write ran, goes in one transaction:
        # one fsync for a batch, not one per call (the SQLite audit log's FULL sync was 0.5-0.7 ms
        # per call).
        while not self._queue.empty():
            await asyncio.sleep(self.window_s)
            drafts = [self._queue.get_nowait() for _ in range(min(self._queue.qsize(), MAX_AUDIT_BATCH))]
            try:
                await self.audit.append_many(drafts)
            except (AuditKeyError, AuditUnavailable) as exc:
                log.warning("audit: %d tool calls not recorded: %s", len(drafts), exc)
            except Exception:
                for draft in drafts:
                    AUDIT_FAILURES.labels(draft.action).inc()
                log.exception("audit: %d tool calls not recorded", len(drafts))

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.audit.close()


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{flag} takes HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    from ccr_gateway.cli import _tls_files
    from ccr_gateway.cli import run as run_loop

    try:
        tls = _tls_files(
            args.control_plane_tls_cert,
            args.control_plane_tls_key,
            args.control_plane_tls_ca,
            "--control-plane-tls-cert, --control-plane-tls-key and --control-plane-tls-ca",
        )
        if tls and args.control_plane.startswith("unix:"):
            raise ValueError(f"--control-plane-tls-* need a TCP --control-plane, not {args.control_plane}")
        metrics = _host_port(args.metrics, "--metrics") if args.metrics else None
        if args.egress:
            _host_port(args.egress, "--egress")
        if not args.listen.startswith("unix:"):
            _host_port(args.listen, "--listen")
    except ValueError as exc:
        print(f"ccr-gateway mcp-gateway: {exc}", file=sys.stderr, flush=True)
        return 2
    status: list[int] = [0]
    run_loop(_serve(args, tls, metrics, status))
    return status[0]


async def _serve(
    args: argparse.Namespace, tls: tuple[str, str, str] | None, metrics: tuple[str, int] | None, status: list[int]
) -> None:
    from extproc.policy_client import PolicySubscriber
    from extproc.server import TlsFiles

    stores: dict[str, Any] = {}
    redis = None
    if args.redis:
        from extproc.mcp_store import RedisCallCounter, RedisSessionStore, open_redis

        try:
            url = await asyncio.to_thread(expand_env, args.redis)
        except EnvError as exc:
            print(f"ccr-gateway mcp-gateway: --redis: {exc}", file=sys.stderr, flush=True)
            status[0] = 2
            return
        redis = open_redis(url)
        stores = {
            "store": RedisSessionStore(redis, args.redis_prefix),
            "counter": RedisCallCounter(redis, args.redis_prefix),
        }
    audit = ToolCallAudit(AuditLog(open_audit_store())) if enabled() and not args.no_audit else None
    service = McpService(ServiceConfig(egress=args.egress), recorder=Recorder(open_sink(args), audit), **stores)
    if metrics is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics[1], addr=metrics[0])
    credentials = TlsFiles(*tls).grpc_channel_credentials() if tls else None
    follower: TracingFollower | None = None  # made on the first policy that traces

    def install(table: RoutingTable) -> None:
        nonlocal follower
        service.install(table.mcp)
        if table.tracing is not None and follower is None:
            # Imported only then, as in an ext_proc worker: the OTLP messages are MBs.
            from extproc.tracing_export import TracingFollower

            follower = TracingFollower(role="mcp")
        if follower is not None:
            follower.install(table.tracing)

    subscriber = PolicySubscriber(
        args.control_plane,
        install,
        node_id=f"mcp-gateway-{socket.gethostname()}-{os.getpid()}",
        credentials=credentials,
    )
    try:
        runner, address = await start(service.app(), args.listen)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        print(f"ccr-gateway mcp-gateway: cannot listen on {args.listen}: {reason}", file=sys.stderr, flush=True)
        await service.close()
        status[0] = 1
        return
    subscription = asyncio.create_task(subscriber.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    where = address if address.startswith("unix:") else f"http://{address}"
    print(
        f"MCP gateway listening on {where} (policy from {args.control_plane}"
        + (f", sessions in Redis {redact_url(args.redis)}" if args.redis else "")
        + ")",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        subscription.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await subscription
        service.close_streams()
        await runner.cleanup()
        await service.close()
        if follower is not None:
            follower.close()  # the last requests' spans, sent within a moment
        if redis is not None:
            await redis.aclose()
