"""`ccr-gateway up`: control plane, ext_proc workers and Envoy as supervised child processes.

Start order follows the dependencies: the control plane first (Envoy and ext_proc both pull their
config from it), then the ext_proc workers (Envoy's filters need them for the first request), then
Envoy. Ready means Envoy's admin says ready, every worker's hop says it holds a policy and the
listener accepts connections (ccr_gateway/probes.py: no request through the listener).

While it runs, a child that exits is started again with the same command line after a backoff
(ccr_gateway/children.py), whatever made it exit, unless `up` is stopping: a worker's socket paths
and the control plane's xDS address do not move, so Envoy's static clusters and ADS stream find the
new process; meanwhile Envoy keeps its last config and the workers their last policy. Envoy is the
exception: it owns the listener, so its death stops the gateway.

With ``--internal-tls DIR`` the workers' gRPC and hop servers and the xDS port listen on 127.0.0.1
TCP ports chosen at start (fixed for the run, so a restarted worker is found there again) and every
link between Envoy, the workers and the control plane is mutual TLS (docs/security-tls.md).

Stop order is the reverse of the start order, so no component sees its dependency vanish first.
SIGTERM or SIGINT at any moment, during startup too, stops everything within bounded time; a
second one kills what is left at once.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import Counter, Gauge

from ccr_gateway import admin_wiring, auth_wiring, cache_wiring, metrics_endpoint, probes, state_file
from ccr_gateway.certs import InternalTls
from ccr_gateway.children import Child, utc_now
from ccr_gateway.envoy_bootstrap import (
    envoy_binary,
    render_bootstrap,
    worker_cluster,
    worker_hop_cluster,
    worker_sockets,
)
from ccr_gateway.envoy_log import EnvoyLogFilter
from ccr_gateway.ledger_wiring import LedgerPlan, plan_for
from ccr_gateway.preflight import first_busy_port, free_port, port_free
from control_plane.policy import GatewayPolicy

__all__ = ["GatewayProcesses", "StartupError", "envoy_binary", "free_port", "port_free", "render_bootstrap"]

log = logging.getLogger("ccr.supervisor")

CHILD_RESTARTS = Counter(
    "ccr_child_restarts_total",
    "Restarts of a child process of `up`",
    ["child"],
    registry=metrics_endpoint.SUPERVISOR_REGISTRY,
)
CHILD_UP = Gauge(
    "ccr_child_up", "1 while a child process of `up` runs", ["child"], registry=metrics_endpoint.SUPERVISOR_REGISTRY
)

POLL_SECONDS = 0.05  # how soon a dead child is noticed (a SIGKILLed worker is replaced within ~1 s)
# Seconds each child gets between SIGTERM and SIGKILL when `up` stops. A worker finishes its
# in-flight requests first (extproc/server.py, 10 s grace); with Envoy already gone it has none.
STOP_GRACE = {
    "batch-worker": 10.0,
    "envoy": 5.0,
    "extproc": 12.0,
    "batch-api": 5.0,
    # After Envoy: no new session comes. It closes its stdio servers (stdin, SIGTERM, SIGKILL) first.
    "mcp-gateway": 8.0,
    "ledger": 10.0,
    "control-plane": 5.0,
    "fake-provider": 5.0,
}
# `up` runs the batch API itself when the policy points the gateway at a local address.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class StartupError(RuntimeError):
    pass


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived before the gateway was ready."""


@dataclass
class GatewayProcesses:
    policy_path: str
    policy: GatewayPolicy
    consul: tuple[str, str, str | None] | None = None  # (address, prefix, token): policy from Consul KV
    admin_port: int = 9901
    admin_api: str = ""  # up --admin-api: where the control plane serves the Admin API ("": off)
    xds: str = ""
    log_level: str = "info"
    envoy_log_level: str = "warning"
    fake_provider_port: int | None = None
    metrics_port: int = 0  # every Python process's metrics, summed (ccr_gateway.metrics_endpoint); 0: none
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # ext_proc processes
    quiet: bool = False
    ledger_on: bool = True  # False: usage records go nowhere (up --no-ledger)
    batch_services: bool = True  # False: a local batches: api runs by itself (up --no-batch-services)
    mcp_service: bool = True  # False: a local mcp: api runs by itself (up --no-mcp)
    internal_tls: InternalTls | None = None  # up --internal-tls: TCP + mTLS between the pieces
    region: str = ""  # up --region: providers' endpoints there come first (control-plane --region)
    run_dir: str = ""
    children: list[Child] = field(default_factory=list)
    state_path: Path | None = None
    started: str = field(default_factory=utc_now)
    ready: bool = False
    stopping: bool = False
    _hurry: bool = False
    _envoy_log: EnvoyLogFilter | None = None
    _metrics_dir: str = ""
    _worker_ports: list[tuple[int, int]] = field(default_factory=list)  # (ext_proc, hop) per worker, with TLS
    _probe_tls: ssl.SSLContext | None = None

    @property
    def ledger(self) -> LedgerPlan:
        return plan_for(self.policy.storage) if self.ledger_on else LedgerPlan("none")

    @property
    def listener_url(self) -> str:
        scheme = "https" if self.policy.tls is not None else "http"
        return f"{scheme}://{self.policy.listener_address}:{self.policy.listener_port}"

    @property
    def extproc_sockets(self) -> list[str]:
        """Each worker's gRPC address: a Unix socket path, or 127.0.0.1:PORT with --internal-tls."""
        if self.internal_tls is not None:
            return [f"127.0.0.1:{grpc_port}" for grpc_port, _ in self._worker_ports]
        return worker_sockets(self.run_dir, self.workers)[0]

    @property
    def hop_sockets(self) -> list[str]:
        if self.internal_tls is not None:
            return [f"127.0.0.1:{hop_port}" for _, hop_port in self._worker_ports]
        return worker_sockets(self.run_dir, self.workers)[1]

    def _listen(self, address: str) -> str:
        return address if self.internal_tls is not None else f"unix:{address}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else ""

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    # --- startup ---------------------------------------------------------------------------------

    def check_ports(self) -> None:
        """Every port `up` will bind, checked before anything starts."""
        wanted = [
            (self.policy.listener_address, self.policy.listener_port, "the policy's listener"),
            ("127.0.0.1", self.admin_port, "Envoy's admin port (--admin-port)"),
        ]
        if self.fake_provider_port is not None:
            wanted.append(("127.0.0.1", self.fake_provider_port, "the fake provider's port (--fake-provider-port)"))
        if self.xds:
            host, _, port = self.xds.rpartition(":")
            wanted.append((host or "127.0.0.1", int(port), "the control plane's xDS address (--xds)"))
        if self.metrics_port:
            wanted.append(("127.0.0.1", self.metrics_port, "the metrics port (--metrics-port)"))
        if self.admin_api:
            host, _, port = self.admin_api.rpartition(":")
            wanted.append((host.strip("[]"), int(port), "the Admin API (--admin-api; off: none)"))
        if (mcp := self.policy.mcp) is not None:
            wanted.append((mcp.egress_host, mcp.egress_port, "Envoy's MCP egress listener (the policy's mcp.egress)"))
            if self.runs_mcp_service and not mcp.api_socket_path:
                wanted.append((mcp.api_host, mcp.api_port, "the MCP service (the policy's mcp.api; up --no-mcp: none)"))
        problem = first_busy_port(wanted)
        if problem is not None:
            raise StartupError(problem)

    def start(self, timeout: float = 30.0) -> None:
        """Start everything and wait until it serves; raises StartupError, or StopRequested when a
        signal came first (the caller stops what did start, as after a failure)."""
        self._install_signal_handlers()
        self.check_ports()
        self.xds = self.xds or f"127.0.0.1:{free_port()}"
        if self.internal_tls is not None:
            self._worker_ports = self._free_worker_ports()
        self._claim_run_dir()
        deadline = time.monotonic() + timeout
        if self.metrics_port:
            # Before any child starts: each one reads the variable when it imports prometheus_client.
            self._metrics_dir = metrics_endpoint.prepare(self.run_dir)
            os.environ[metrics_endpoint.MULTIPROC_ENV] = self._metrics_dir
            metrics_endpoint.serve(self.metrics_port, self._metrics_dir)
        if self.fake_provider_port is not None:
            self.say(f"- fake provider on 127.0.0.1:{self.fake_provider_port}")
            self._spawn("fake-provider", self._python("fake-provider", "--port", str(self.fake_provider_port)))
            self._wait(
                lambda: probes.tcp_accepting("127.0.0.1", self.fake_provider_port or 0), deadline, "the fake provider"
            )
        self._share_vault_settings()  # first: the control plane's Admin API may open vault: DSNs too
        self._start_control_plane(deadline)
        self._start_ledger()
        self._check_auth()
        where = f"Unix sockets in {self.run_dir}" if self.internal_tls is None else "mTLS on 127.0.0.1 TCP ports"
        self.say(f"- ext_proc ({self.workers} worker{'s' if self.workers > 1 else ''}, {where})")
        for index in range(self.workers):
            # A TCP port leaves no file behind: only Unix sockets need removing before a (re)start.
            cleanup = {"before_start": self._remove_sockets_of(index)} if self.internal_tls is None else {}
            self._spawn(f"extproc-{index}", self._worker_argv(index), **cleanup)
        # Workers listen once they hold a policy, which the control plane sends only after Envoy
        # has the clusters it routes to: Envoy starts now, and readiness waits for both below.
        self._start_envoy()
        admin = f"http://127.0.0.1:{self.admin_port}"
        self._wait(lambda: probes.http_status(f"{admin}/ready") == 200, deadline, "Envoy's listener and clusters")
        self._wait(self._workers_have_policy, deadline, "the ext_proc workers to receive the policy")
        listener = (self.policy.listener_address, self.policy.listener_port)
        self._wait(lambda: probes.tcp_accepting(*listener), deadline, "the listener to accept connections")
        self._start_batches(deadline)
        self._start_mcp(deadline)
        summary = self._envoy_log.summary() if self._envoy_log is not None else None
        if summary:
            self.say(f"- {summary}")
        self.ready = True
        self.write_state()

    def _free_worker_ports(self) -> list[tuple[int, int]]:
        """Two distinct free ports per worker, not the xDS one."""
        taken = {int(self.xds.rpartition(":")[2])}
        ports: list[int] = []
        while len(ports) < 2 * self.workers:
            port = free_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        return list(zip(ports[::2], ports[1::2], strict=True))

    def _claim_run_dir(self) -> None:
        """The run dir (sockets, bootstrap) and the state file that names it, written before any
        child starts: if `up` is then SIGKILLed, the next `up` finds and removes both."""
        directory = state_file.state_dir()
        for removed in state_file.remove_stale(directory) if directory.is_dir() else []:
            log.info("removed %s, left by an `up` that is no longer running", removed)
        self.run_dir = self.run_dir or tempfile.mkdtemp(prefix=state_file.RUN_DIR_PREFIX)
        self.state_path = directory / f"{os.getpid()}.json"
        self.write_state()

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ccr_gateway.cli", "--log-level", self.log_level, *args]

    def _spawn(self, name: str, argv: list[str], **options: Any) -> Child:
        child = Child(name, argv, **options)
        self.children.append(child)
        child.start()
        CHILD_UP.labels(name).set(1)
        CHILD_RESTARTS.labels(name)  # at 0 from the start: the first restart is an increase() alerts see
        self.write_state()
        return child

    def _start_control_plane(self, deadline: float) -> None:
        if self.consul is not None:
            address, prefix, token = self.consul
            source = ["--consul", address, "--consul-prefix", prefix, *(["--consul-token", token] if token else [])]
            self.say(f"- control plane (xDS on {self.xds}, policy from Consul {address} {prefix})")
        else:
            source = ["-c", self.policy_path]
            self.say(f"- control plane (xDS on {self.xds}, policy {self.policy_path})")
        options = [*source, "--xds", self.xds]
        options += ["--status-file", self.control_plane_status_path]  # read by `ccr-gateway status`
        if (tls := self.internal_tls) is not None:
            role = "control-plane"
            options += ["--tls-cert", tls.cert(role), "--tls-key", tls.key(role), "--tls-client-ca", tls.ca]
        for index in range(self.workers):
            options += ["--usage-log-cluster", worker_cluster(index)]
        if self.region:
            options += ["--region", self.region]
        if self.admin_api:
            # The Admin API reads the key store and the ledger through their DSNs in the environment
            # (never a command line): set now, before the control plane starts, not only for later children.
            os.environ.update(auth_wiring.environment(self.policy.auth))
            os.environ.update(self.ledger.environment())
            options += admin_wiring.up_arguments(self)
        self._spawn("control-plane", self._python("control-plane", *options))
        host, _, port_text = self.xds.rpartition(":")
        self._wait(lambda: probes.tcp_accepting(host, int(port_text)), deadline, "the control plane")

    def _share_vault_settings(self) -> None:
        """Every child reads a ``vault:`` connection string (the ledger's, the key store's, a Redis
        URL) with the policy's vault section: how to log in, never a credential (CCR_VAULT)."""
        from ccr.v1 import vault_refs

        if self.policy.vault is not None:
            os.environ[vault_refs.SETTINGS_ENV] = vault_refs.settings_json(self.policy.vault.settings(os.environ))

    def _check_auth(self) -> None:
        """Every child inherits the key store's DSN (and the response cache's Redis URL, the other
        connection string a worker opens); an open gateway gets one warning line."""
        auth = self.policy.auth
        os.environ.update(auth_wiring.environment(auth))
        os.environ.update(cache_wiring.environment(self.policy.cache))
        listener = f"{self.policy.listener_address}:{self.policy.listener_port}"
        warning = auth_wiring.open_listener_warning(auth, listener, auth_wiring.count_keys(auth))
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)

    def _start_ledger(self) -> None:
        """Every child inherits the ledger's connection strings (environment, not command lines)."""
        ledger = self.ledger
        os.environ.update(ledger.environment())
        if ledger.kind == "none":
            self.say("- usage ledger: off (--no-ledger)")
            return
        if not ledger.uses_broker:
            where = ledger.sqlite_path or "$XDG_DATA_HOME/ccr-gateway/ledger.db"
            self.say(f"- usage ledger: local SQLite {where} (`ccr-gateway usage report`)")
            return
        self.say(f"- ledger writer (RabbitMQ queue {ledger.queue} -> PostgreSQL)")
        self._spawn("ledger", self._python(*ledger.writer_arguments()))

    def _start_batches(self, deadline: float) -> None:
        """With ``batches: {api: 127.0.0.1:PORT}``, the batch API and one batch worker, on the batch
        store ``$CCR_BATCH_POSTGRES`` names, else the local SQLite file; in-process lanes (a fleet runs
        `batch-worker --amqp` by itself). An address elsewhere is a batch API run elsewhere."""
        spec = self.policy.batches
        if spec is None or spec.socket_path or spec.host not in LOCAL_HOSTS:
            return
        if not self.batch_services:
            self.say(f"- batch API on {spec.address}: run by itself (--no-batch-services)")
            return
        store = ["--postgres", os.environ["CCR_BATCH_POSTGRES"]] if os.environ.get("CCR_BATCH_POSTGRES") else []
        where = "PostgreSQL ($CCR_BATCH_POSTGRES)" if store else "local SQLite"
        self.say(f"- batch API on {spec.address} and a batch worker ({where}; `ccr-gateway batch list`)")
        self._spawn("batch-api", self._python("batch-api", "--listen", spec.address, *store))
        self._wait(lambda: probes.tcp_accepting(spec.host, spec.port), deadline, "the batch API")
        self._spawn("batch-worker", self._python("batch-worker", "--gateway", self.listener_url, *store))

    @property
    def runs_mcp_service(self) -> bool:
        """The policy has ``mcp:`` on a local address (host or unix socket), and --no-mcp is off."""
        spec = self.policy.mcp
        local = spec is not None and (bool(spec.api_socket_path) or spec.api_host in LOCAL_HOSTS)
        return local and self.mcp_service

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint on the listener ("" without ``mcp:``)."""
        return self.listener_url + self.policy.mcp.path if self.policy.mcp is not None else ""

    def mcp_argv(self) -> list[str]:
        """`ccr-gateway mcp-gateway` on the policy's ``mcp.api``, fed by the control plane the
        workers use, reaching url servers through Envoy's egress listener at ``mcp.egress``."""
        spec = self.policy.mcp
        assert spec is not None
        tls: list[str] = []
        if (files := self.internal_tls) is not None:  # the control plane asks for a client certificate
            cert, key = files.cert("extproc"), files.key("extproc")
            tls = ["--control-plane-tls-cert", cert, "--control-plane-tls-key", key, "--control-plane-tls-ca", files.ca]
        return self._python(
            "mcp-gateway",
            "--listen",
            spec.api,
            "--control-plane",
            self.xds,
            "--egress",
            spec.egress,
            *tls,
            *self._mcp_ledger_arguments(),
        )

    def _mcp_ledger_arguments(self) -> list[str]:
        """The workers' ledger options (the usage of each tool call goes where theirs goes), with a
        spool of its own beside theirs (a spool has one writer)."""
        arguments = self.ledger.worker_arguments(0)
        if "--ledger-spool" in arguments:
            at = arguments.index("--ledger-spool") + 1
            arguments[at] = os.path.join(os.path.dirname(arguments[at]), "mcp-gateway")
        return arguments

    def mcp_environment(self) -> dict[str, str]:
        """The MCP service's environment: this one, with this interpreter's directory first on PATH,
        so that a stdio server the policy runs as ``python3`` (the example's) is this installation's
        Python, with its packages (the bundled example server, the MCP SDK)."""
        environment = dict(os.environ)
        here = os.path.dirname(sys.executable)
        environment["PATH"] = os.pathsep.join([here, *(p for p in environment.get("PATH", "").split(os.pathsep) if p)])
        return environment

    def _start_mcp(self, deadline: float) -> None:
        """With ``mcp:`` on a local ``api`` address, the MCP service (restarted like any child when it
        exits); elsewhere, one run by itself, which Envoy reaches there all the same."""
        spec = self.policy.mcp
        if spec is None:
            return
        if not self.runs_mcp_service:
            why = "not a local address" if self.mcp_service else "--no-mcp"
            self.say(f"- MCP service on {spec.api}: run by itself ({why}); endpoint {self.mcp_url}")
            return
        servers = ", ".join(s.name for s in spec.servers) or "no servers"
        self.say(f"- MCP service on {spec.api} ({servers}; url servers through Envoy's egress on {spec.egress})")
        self._spawn("mcp-gateway", self.mcp_argv(), env=self.mcp_environment())
        if spec.api_socket_path:
            self._wait(lambda: probes.unix_http_status(spec.api_socket_path) > 0, deadline, "the MCP service")
        else:
            self._wait(lambda: probes.tcp_accepting(spec.api_host, spec.api_port), deadline, "the MCP service")

    @property
    def control_plane_status_path(self) -> str:
        return os.path.join(self.run_dir, "control-plane.json")

    def _worker_argv(self, index: int) -> list[str]:
        tls: list[str] = []
        if (files := self.internal_tls) is not None:
            cert, key = files.cert("extproc"), files.key("extproc")
            tls = ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", files.ca]
            tls += [
                "--control-plane-tls-cert",
                cert,
                "--control-plane-tls-key",
                key,
                "--control-plane-tls-ca",
                files.ca,
            ]
        return self._python(
            "extproc",
            "--listen",
            self._listen(self.extproc_sockets[index]),
            "--hop-listen",
            self._listen(self.hop_sockets[index]),
            *tls,
            "--hop-cluster",
            worker_hop_cluster(index),
            "--control-plane",
            self.xds,
            *(["--consul", self.consul[0]] if self.consul else []),
            *self.ledger.worker_arguments(index),
            *auth_wiring.worker_arguments(self.policy.auth, self.workers),
            *cache_wiring.worker_arguments(self.policy.cache),
        )

    def _remove_sockets_of(self, index: int) -> Callable[[], None]:
        """Before a worker (re)starts: a SIGKILLed worker leaves its socket files behind."""

        def remove() -> None:
            for path in (self.extproc_sockets[index], self.hop_sockets[index]):
                if os.path.exists(path):
                    os.unlink(path)

        return remove

    def _start_envoy(self) -> None:
        bootstrap = os.path.join(self.run_dir, "bootstrap.yaml")
        Path(bootstrap).write_text(
            render_bootstrap(
                f"envoy-{os.getpid()}",
                self.admin_port,
                self.xds,
                self.extproc_sockets,
                self.hop_sockets,
                self.policy.hardening,  # the overload manager: read once, when Envoy starts
                tls=self.internal_tls,
                region=self.region,
            )
        )
        self.say(f"- envoy (admin http://127.0.0.1:{self.admin_port})")
        argv = [envoy_binary(), "-c", bootstrap, "--disable-hot-restart", "-l", self.envoy_log_level]
        argv += ["--log-format", "[%Y-%m-%d %T.%e][envoy][%l] %v"]
        envoy = self._spawn("envoy", argv, stderr=subprocess.PIPE)
        assert envoy.process is not None and envoy.process.stderr is not None
        # Envoy's lines as every other process's: JSON, secrets masked (docs/logging.md).
        self._envoy_log = EnvoyLogFilter(
            envoy.process.stderr,
            sys.stderr.buffer,
            keep_everything=self.log_level == "debug",
            json_pid=envoy.process.pid,
        )
        self._envoy_log.start()

    def _workers_have_policy(self) -> bool:
        if self.internal_tls is None:
            return all(probes.unix_http_status(path) == 200 for path in self.hop_sockets)
        return all(self._tls_hop_status(address) == 200 for address in self.hop_sockets)

    def _tls_hop_status(self, address: str) -> int:
        """``GET /healthz`` on a worker's hop over mTLS, as Envoy (0 when nothing answered)."""
        tls = self.internal_tls
        assert tls is not None
        if self._probe_tls is None:
            self._probe_tls = ssl.create_default_context(cafile=tls.ca)
            self._probe_tls.load_cert_chain(tls.cert("envoy"), tls.key("envoy"))
        host, _, port = address.rpartition(":")
        connection = http.client.HTTPSConnection(host, int(port), timeout=1.0, context=self._probe_tls)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            connection.close()

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if self.stopping:
                raise StopRequested
            for child in self.children:
                if (how := child.exited()) is not None:
                    raise StartupError(f"{child.name} exited ({how}) during startup")
            if ready():
                return
            time.sleep(POLL_SECONDS)
        raise StartupError(f"timed out waiting for {what}")

    # --- running ---------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stopping:
                self._hurry = True  # a second Ctrl-C: the user is not waiting for the grace periods
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def wait(self) -> int:
        """Supervise until a signal (returns 0) or Envoy's death (returns 1)."""
        while not self.stopping:
            for child in self.children:
                if (how := child.exited()) is not None:
                    CHILD_UP.labels(child.name).set(0)
                    if self._metrics_dir:
                        metrics_endpoint.process_dead(self._metrics_dir, child.pid)
                    if child.name == "envoy":
                        log.error("envoy exited (%s); it owns the listener: stopping the gateway", how)
                        self.write_state()
                        return 1
                    delay = child.schedule_restart()
                    log.warning("%s exited (%s); restarting it in %.1f s", child.name, how, delay)
                    self.write_state()
                elif child.restart_due is not None and time.monotonic() >= child.restart_due:
                    child.restart()
                    CHILD_RESTARTS.labels(child.name).inc()
                    CHILD_UP.labels(child.name).set(1)
                    log.info("%s restarted (pid %s, restart %d)", child.name, child.pid, child.restarts)
                    self.write_state()
            time.sleep(POLL_SECONDS)
        self.say("stopping...")
        return 0

    def stop(self) -> None:
        """The batch worker, Envoy, then the workers (together), the batch API, the MCP service, the
        ledger writer, the control plane, the fake provider; each SIGTERMed and given its grace period, then SIGKILLed."""
        self.stopping = True
        self.write_state()
        # The ledger writer after the workers: it stores what they published as they stopped.
        # The batch worker first: its items in flight go through Envoy and finish before it stops.
        for role in STOP_GRACE:
            group = [child for child in self.children if child.role == role]
            for child in group:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE[role]
            while any(c.alive for c in group) and time.monotonic() < deadline and not self._hurry:
                time.sleep(POLL_SECONDS)
            for child in group:
                if child.alive:
                    if not self._hurry:
                        log.warning("%s did not stop within %.0f s; killing it", child.name, STOP_GRACE[role])
                    child.signal(signal.SIGKILL)
                if child.process is not None:
                    child.process.wait()
        if self._envoy_log is not None:
            self._envoy_log.join(timeout=1.0)  # Envoy's last lines (its shutdown) before ours
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.state_path is not None:
            self.state_path.unlink(missing_ok=True)
            self.state_path = None

    # --- state file ------------------------------------------------------------------------------

    def write_state(self) -> None:
        if self.state_path is None:
            return
        if self.consul is not None:
            policy_source = f"consul {self.consul[0]} {self.consul[1]}"
        else:
            policy_source = os.path.abspath(self.policy_path)
        state_file.write_state(
            self.state_path,
            {
                "pid": os.getpid(),
                "started": self.started,
                "listener": self.listener_url,
                "admin": f"http://127.0.0.1:{self.admin_port}",
                "xds": self.xds,
                "run_dir": self.run_dir,
                "policy_source": policy_source,
                "control_plane_status": self.control_plane_status_path,
                "metrics": {"gateway": self.metrics_url} if self.metrics_url else {},
                "children": [child.state() for child in self.children],
                "workers": self.workers,
                "phase": "stopping" if self.stopping else "ready" if self.ready else "starting",
            },
        )
