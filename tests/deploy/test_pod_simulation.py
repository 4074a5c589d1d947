"""The dev overlay's pods, run as processes on this machine: the manifests' own command lines.

No container runtime here, so the gateway pod is played by processes: the control plane, the init
container (`envoy-bootstrap --output`), Envoy, the ext_proc worker and the metrics relay, each
started with the args the rendered Deployment gives it, rewritten only where a pod differs from one
machine (ports picked free, /run/ccr a temporary directory, 0.0.0.0 -> 127.0.0.1, no RabbitMQ).
Then the pods' exec probes must pass, a request must go through, and the relay must serve the
series the HPA's prometheus-adapter rule reads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.deploy.commands import POD_MODULE
from tests.deploy.tools import REPO, explain, run, tool

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def containers(manifests: str) -> dict[str, dict[str, Any]]:
    """'<deployment>/<container>' -> container, init containers included."""
    out = {}
    for doc in yaml.safe_load_all(manifests):
        if doc and doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                out[f"{doc['metadata']['name']}/{container['name']}"] = container
    return out


class Pod:
    """Processes started from container specs, with one rewrite table for their arguments."""

    def __init__(self, tmp: Path, rewrites: dict[str, str]) -> None:
        self.tmp = tmp
        self.rewrites = rewrites
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.log_files: list[IO[bytes]] = []
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "XDG_DATA_HOME": str(tmp / "data"),
            "CCR_AUDIT": "off",
        }

    def rewrite(self, word: str) -> str:
        for old, new in self.rewrites.items():
            word = word.replace(old, new)
        return word

    def argv(self, container: dict[str, Any]) -> list[str]:
        command = container.get("command") or ["ccr-gateway"]
        if command == POD_MODULE:
            command = [sys.executable, *command[1:]]
        return [self.rewrite(word) for word in [*command, *container.get("args", [])]]

    def start(self, name: str, container: dict[str, Any], extra_env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / f"{name.replace('/', '_')}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.log_files.append(log)
        process = subprocess.Popen(
            self.argv(container), env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append((name, process))

    def probe(self, container: dict[str, Any], kind: str, timeout: float = 30.0) -> None:
        command = [self.rewrite(word) for word in container[kind]["exec"]["command"]]
        command[0] = sys.executable
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} never passed: {explain(result)}\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in self.tmp.glob("*.log")
        )

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in self.log_files:
            log.close()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[Pod, dict[str, dict[str, Any]], dict[str, int]]]:
    rendered = run([tool("kubectl"), "kustomize", "k8s/overlays/dev"])
    assert rendered.returncode == 0, explain(rendered)
    ports = {name: free_port() for name in ("xds", "admin", "listener", "fake", "cp_metrics", "worker", "relay")}
    policy = (REPO / "k8s/overlays/dev/policy.yaml").read_text()
    policy = policy.replace("http://ccr-fake-provider:9100", f"http://127.0.0.1:{ports['fake']}")
    policy = policy.replace("address: 0.0.0.0", "address: 127.0.0.1").replace(
        "port: 8080", f"port: {ports['listener']}"
    )
    (tmp_path / "policy.yaml").write_text(policy)
    (tmp_path / "run").mkdir()
    relay = containers(rendered.stdout)["ccr-gateway/metrics-relay"]
    assert relay["args"][1] == "--listen=0.0.0.0:9464"
    rewrites = {
        "/etc/ccr/policy.yaml": str(tmp_path / "policy.yaml"),
        "/run/ccr": str(tmp_path / "run"),
        "ccr-control-plane:18000": f"127.0.0.1:{ports['xds']}",
        "0.0.0.0:18000": f"127.0.0.1:{ports['xds']}",
        "--admin-port=9901": f"--admin-port={ports['admin']}",
        "$(POD_NAME)": "ccr-gateway-sim",  # the kubelet expands it from the container's env
        "127.0.0.1:9901": f"127.0.0.1:{ports['admin']}",
        "--listen=0.0.0.0:9464": f"--listen=127.0.0.1:{ports['relay']}",
        "--metrics-port=9464": f"--metrics-port={ports['cp_metrics']}",
        "--metrics-address=0.0.0.0": "--metrics-address=127.0.0.1",
        "9465": str(ports["worker"]),
        "--ledger=rabbitmq": "--ledger=none",
        "--port=9100": f"--port={ports['fake']}",
        "--host=0.0.0.0": "--host=127.0.0.1",
    }
    simulated = Pod(tmp_path, rewrites)
    try:
        yield simulated, containers(rendered.stdout), ports
    finally:
        simulated.stop()


def test_the_dev_pods_start_pass_their_probes_and_serve(
    pod: tuple[Pod, dict[str, dict[str, Any]], dict[str, int]],
) -> None:
    simulated, specs, ports = pod
    simulated.start("fake-provider", specs["ccr-fake-provider/fake-provider"])
    simulated.start("control-plane", specs["ccr-control-plane/control-plane"])
    init = specs["ccr-gateway/envoy-bootstrap"]
    deadline = time.monotonic() + 30
    while True:  # the control plane's startupProbe: /metrics answers once the policy is loaded
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['cp_metrics']}/metrics", timeout=1) as response:
                assert response.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, simulated.logs()
            time.sleep(0.2)
    bootstrap = subprocess.run(
        simulated.argv(init),
        env=simulated.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bootstrap.returncode == 0, explain(bootstrap)
    assert (simulated.tmp / "run" / "bootstrap.yaml").is_file()
    simulated.start("extproc", specs["ccr-gateway/extproc"])
    simulated.start("envoy", specs["ccr-gateway/envoy"])
    simulated.start("metrics-relay", specs["ccr-gateway/metrics-relay"])
    for name in ("ccr-gateway/extproc", "ccr-gateway/envoy"):
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            simulated.probe(specs[name], kind)

    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['listener']}/v1/messages",
        data=body.encode(),
        headers={"content-type": "application/json", "x-api-key": "any"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["type"] == "message"

    relay = f"http://127.0.0.1:{ports['relay']}"
    with urllib.request.urlopen(f"{relay}/stats/prometheus", timeout=5) as response:
        stats = response.read().decode()
    # the series k8s/prometheus-adapter/values.yaml turns into the HPA's pods metric
    assert 'envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="ccr"}' in stats
    with urllib.request.urlopen(f"{relay}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "ccr_" in metrics and "envoy_" not in metrics.replace("ccr_pod_metrics_source_up", "")
