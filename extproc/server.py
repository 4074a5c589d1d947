"""The ext_proc gRPC service: the stream loop and nothing else (decisions live in processor.py).

The same grpc.aio server also answers Envoy's usage access log (extproc.usage_log) and ext_authz
checks (extproc.authz), so a worker serves every gRPC role on one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage, StreamAccessLogsResponse
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from prometheus_client import start_http_server

from ccr.v1 import tracing
from ccr.v1.contract import UPSTREAM_PHASE_METADATA
from extproc import hop_server
from extproc.attempt import AttemptProcessor
from extproc.auth.decision import Authenticator
from extproc.authz import AuthorizationService
from extproc.cache.inflight import Flights
from extproc.cache.store import CacheStore
from extproc.metrics import BUILD, SESSIONS
from extproc.policy_client import PolicySubscriber
from extproc.processor import RequestProcessor
from extproc.responses_store import ResponseStore
from extproc.routing_table import RoutingTable
from extproc.state import GatewayState
from extproc.usage_log import UsageLogService
from extproc.usage_sink import NullSink, UsageSink

if TYPE_CHECKING:
    from extproc.tracing_export import TracingFollower

log = logging.getLogger("ccr.extproc")

DRAIN_SECONDS = 10.0  # SIGTERM: how long in-flight requests get to finish
DRAIN_SETTLE_SECONDS = 0.2
USAGE_LOG_FLUSH_SECONDS = 0.2  # Envoy flushes its usage log every 100 ms (usage_capture)

# Keeps this worker in a service catalog while the block runs: (service name, listen address,
# healthy?) -> context. Handed in by the composition root (Consul registration), so that ext_proc
# itself knows no catalog.
Registrar = Callable[[str, str, Callable[[], bool]], AbstractAsyncContextManager[None]]


def _unregistered(name: str, listen: str, healthy: Callable[[], bool]) -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class ExternalProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.in_flight = 0  # requests being processed: a draining worker waits for these only

    async def Process(
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ProcessingResponse]:
        # The ext_proc in a chain cluster's upstream filters says so in its gRPC metadata.
        metadata = context.invocation_metadata() or ()
        upstream = any(tuple(item) == UPSTREAM_PHASE_METADATA for item in metadata)
        processor = AttemptProcessor(self.state) if upstream else RequestProcessor(self.state)
        # Envoy's span of this stream (its ext_proc call, or the attempt's) is in the metadata.
        opened = tracing.begin("ccr.attempt" if upstream else "ccr.ext_proc", traceparent_of(metadata))
        self.in_flight += 1
        try:
            async for request in request_iterator:
                response = processor.handle(request)
                if type(response) is not ProcessingResponse and inspect.isawaitable(response):
                    # a keyed request's limits, in Redis
                    response = await cast(RequestProcessor, processor).awaited(response)
                yield response
        finally:
            self.in_flight -= 1
            tracing.end(opened)


def traceparent_of(metadata: Iterable[Any]) -> str | None:
    """The W3C trace context Envoy sends in a gRPC call's metadata (ext_proc, ext_authz)."""
    return next((item[1] for item in metadata if item[0] == "traceparent"), None)


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key and the CA the peer's certificate must chain to (PEM files): mTLS on
    the worker's TCP ports (docs/security-tls.md, "Internal mTLS"), or toward the control plane."""

    cert: str
    key: str
    ca: str

    def _read(self) -> tuple[bytes, bytes, bytes]:
        with open(self.cert, "rb") as cert, open(self.key, "rb") as key, open(self.ca, "rb") as ca:
            return cert.read(), key.read(), ca.read()

    def grpc_server_credentials(self) -> grpc.ServerCredentials:
        """Envoy (ext_proc, ext_authz, the usage log) must show a certificate signed by the CA."""
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def grpc_channel_credentials(self) -> grpc.ChannelCredentials:
        """This worker as the control plane's client: its certificate, the server's checked by name."""
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def hop_server_context(self) -> ssl.SSLContext:
        """The decision hop's TLS: HTTP/1.1 only, and a client certificate signed by the CA required."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])
        return context


@dataclass(frozen=True)
class ExtProcConfig:
    listen: str  # "unix:/path/extproc.sock" or "host:port"
    control_plane: str = "127.0.0.1:18000"
    metrics_port: int = 0
    hop_listen: str = ""  # the decision hop's HTTP server (extproc.hop_server); "" = none
    hop_cluster: str = ""  # the Envoy cluster of this worker's hop alone ("": the shared one)
    tls: TlsFiles | None = None  # mTLS on listen and hop_listen (both TCP then)
    control_plane_tls: TlsFiles | None = None  # mTLS to the control plane (TCP then)

    def __post_init__(self) -> None:
        # A Unix socket is guarded by file permissions; TLS there would be a mistake in the command
        # line (a certificate nobody checks), not a deployment: refused, not ignored.
        if self.tls is not None:
            for flag, address in (("--listen", self.listen), ("--hop-listen", self.hop_listen)):
                if address.startswith("unix:"):
                    raise ValueError(f"--tls-cert/--tls-key/--tls-client-ca need a TCP {flag}, not {address}")
        if self.control_plane_tls is not None and self.control_plane.startswith("unix:"):
            raise ValueError(f"--control-plane-tls-* need a TCP --control-plane, not {self.control_plane}")


async def serve(
    config: ExtProcConfig,
    ready: asyncio.Event | None = None,
    register: Registrar = _unregistered,
    sink: UsageSink | None = None,
    auth: Authenticator | None = None,
    cache: CacheStore | None = None,
    flights: Flights | None = None,
    responses: ResponseStore | None = None,
) -> None:
    """``sink`` takes the usage records this worker makes (from the counting copy of Envoy's usage
    log); the composition root picks it (the ledger's publisher or local store), default NullSink.
    It is closed once the usage log streams have ended, so what they delivered last is kept.
    ``auth``: the worker's key cache and limiter, opened (and closed) by the caller; default: no
    keys, every request anonymous unless the policy requires keys. ``cache``: the response cache's
    store, opened and closed by the caller; default none: nothing cached, whatever the policy says;
    ``flights``: its in-flight deduplication (default: this worker's alone)."""
    sink = sink if sink is not None else NullSink()
    state = GatewayState(auth, cache, flights)
    state.keep_responses(responses)  # stored responses (opened and closed by the caller); None: none kept
    BUILD.labels(_version()).set(1)
    state.hop_cluster = config.hop_cluster

    has_policy = asyncio.Event()

    tracing_follower: TracingFollower | None = None

    def install(table: RoutingTable) -> None:
        nonlocal tracing_follower
        state.table = table
        if table.tracing is not None and tracing_follower is None:
            # Imported on the first policy that traces: the OTLP messages are MBs of every worker.
            from extproc.tracing_export import TracingFollower

            tracing_follower = TracingFollower()
        if tracing_follower is not None:
            tracing_follower.install(table.tracing)
        has_policy.set()

    channel_credentials = config.control_plane_tls.grpc_channel_credentials() if config.control_plane_tls else None
    subscriber = PolicySubscriber(config.control_plane, install, credentials=channel_credentials)
    # The exact token counter loads on first use (extproc.tokens): a worker at rest stays small.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    processor = ExternalProcessor(state)
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    # Envoy's usage access log comes to the same sockets (one long-lived stream per Envoy thread).
    usage_streams_end = asyncio.Event()
    usage_log = _EndingUsageLog(UsageLogService(state, sink), usage_streams_end)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(usage_log, server)
    # ext_authz (docs/auth.md) for routes and sidecars that put it in front: the same state and keys.
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationService(state), server)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr="127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    subscription = asyncio.create_task(subscriber.run())
    gauges = asyncio.create_task(_sample_gauges(state))
    # Listen only once a policy is installed. Before that every request would get a 503, while a
    # refused connection sends Envoy's call to another worker (Envoy ejects this one and retries):
    # a restarted worker joins the rotation when it can serve, not before.
    log.info("waiting for the policy from %s before listening", config.control_plane)
    waiting = [asyncio.create_task(has_policy.wait()), asyncio.create_task(stop.wait())]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        task.cancel()
    if stop.is_set():  # stopped before any policy came: nothing to drain
        gauges.cancel()
        subscription.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await subscription
        await sink.close()
        log.info("ext_proc stopped before it had a policy")
        return
    if config.listen.startswith("unix:"):
        path = config.listen[len("unix:") :]
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a crashed run
    if config.tls is not None:
        server.add_secure_port(config.listen, config.tls.grpc_server_credentials())
    else:
        server.add_insecure_port(config.listen)
    await server.start()
    hop_tls = config.tls.hop_server_context() if config.tls is not None else None
    hop = await hop_server.start(config.hop_listen, state, hop_tls) if config.hop_listen else None
    log.info(
        "ext_proc listening on %s%s%s",
        config.listen,
        f", decision hop on {config.hop_listen}" if config.hop_listen else "",
        " (mTLS)" if config.tls is not None else "",
    )
    if ready is not None:
        ready.set()
    if os.environ.get("CCR_TRACEMALLOC"):
        _install_allocation_report(loop)
    # Healthy in the catalog once a policy is installed: before that every request would get a 503.
    async with register("ccr-extproc", config.listen, lambda: state.table is not None):
        await stop.wait()
    await _drain(server, processor, hop, usage_streams_end)
    if state.saver is not None:  # the last answers' records, before the caller closes the store
        await state.saver.drain()
    await sink.close()  # after the usage log streams ended: the records of the last requests are in it
    gauges.cancel()
    subscription.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await subscription
    if tracing_follower is not None:
        tracing_follower.close()  # the last requests' spans, sent within a moment
    log.info("ext_proc stopped")


def _version() -> str:
    try:
        return importlib.metadata.version("ccr-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


GAUGE_SAMPLE_S = 5.0


async def _sample_gauges(state: GatewayState) -> None:
    """Gauges of sizes, set every few seconds rather than on every change: nothing per request,
    and a value every process can see (under `up` metrics are summed from files, where a gauge
    computed at scrape time in one process would not appear)."""
    while True:
        SESSIONS.set(len(state.sessions))
        await asyncio.sleep(GAUGE_SAMPLE_S)


async def _drain(
    server: grpc.aio.Server,
    processor: ExternalProcessor,
    hop: hop_server.HopServer | None,
    usage_streams_end: asyncio.Event,
) -> None:
    """Stop accepting, then finish the requests in flight (streams included) for up to DRAIN_SECONDS.

    Closed listening sockets make Envoy's connects to this worker fail: its outlier detection
    (envoy/bootstrap.yaml) takes the worker out and new requests go to the others; a stream Envoy
    opens on a connection it already had still comes here, and is served. Envoy's usage log streams
    never end by themselves: once no request was in flight for a moment, and the last ones' usage
    had time to arrive, they are ended, so that the grace period is not spent waiting for them.
    """
    log.info("stopping: no new connections; finishing in-flight requests (up to %.0f s)", DRAIN_SECONDS)
    hop_drained = asyncio.create_task(hop.drain(DRAIN_SECONDS)) if hop is not None else None
    stopping = asyncio.create_task(server.stop(grace=DRAIN_SECONDS))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    # Quiet for a moment, not for an instant: a stream accepted just before the stop has not
    # reached its handler yet (in_flight counts it only from there).
    quiet_since: float | None = None
    while not stopping.done() and loop.time() < deadline:
        if processor.in_flight:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= DRAIN_SETTLE_SECONDS:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(USAGE_LOG_FLUSH_SECONDS)  # the usage of the last requests, still on its way
    usage_streams_end.set()
    await stopping  # every other stream ends by itself (one opened just now included), up to the grace
    if hop_drained is not None:
        await hop_drained


class _EndingUsageLog(als_pb2_grpc.AccessLogServiceServicer):
    """The usage log servicer, whose streams end when ``end`` is set (Envoy's never do)."""

    def __init__(self, inner: UsageLogService, end: asyncio.Event) -> None:
        self.inner = inner
        self.end = end

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[StreamAccessLogsMessage], context: grpc.aio.ServicerContext
    ) -> StreamAccessLogsResponse:
        return await self.inner.StreamAccessLogs(_until(request_iterator, self.end), context)


async def _until(
    messages: AsyncIterator[StreamAccessLogsMessage], end: asyncio.Event
) -> AsyncIterator[StreamAccessLogsMessage]:
    """``messages`` until they end or ``end`` is set, whichever comes first."""
    iterator = aiter(messages)
    ended = asyncio.ensure_future(end.wait())
    following: asyncio.Future[StreamAccessLogsMessage] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(iterator))
            await asyncio.wait((following, ended), return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                return
            try:
                yield following.result()
            except StopAsyncIteration:
                return
    finally:
        ended.cancel()
        if following is not None and not following.done():
            # Left behind when the stream closes under us (or cancelled as it ends on its own):
            # its end is retrieved here, else asyncio logs "Task exception was never retrieved".
            following.add_done_callback(lambda done: done.cancelled() or done.exception())
            following.cancel()


def _install_allocation_report(loop: asyncio.AbstractEventLoop) -> None:
    """Debugging memory growth: with CCR_TRACEMALLOC=1, the first SIGUSR1 takes a baseline and each
    later one logs the allocation sites that grew most since then."""
    import tracemalloc

    tracemalloc.start(12)
    baseline: list[tracemalloc.Snapshot] = []

    def report() -> None:
        snapshot = tracemalloc.take_snapshot()
        if not baseline:
            baseline.append(snapshot)
            log.warning("tracemalloc baseline taken")
            return
        for stat in snapshot.compare_to(baseline[0], "traceback")[:10]:
            log.warning("tracemalloc %s\n%s", stat, "\n".join(stat.traceback.format()[-6:]))

    loop.add_signal_handler(signal.SIGUSR1, report)
