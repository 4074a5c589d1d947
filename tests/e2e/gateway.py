"""Run the real thing for end-to-end tests: `ccr-gateway up` (control plane + ext_proc + Envoy)
plus the fake provider, each as a subprocess, on free local ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from ccr_gateway.preflight import free_port

T = TypeVar("T")


def free_port_run(length: int) -> int:
    """The first of ``length`` consecutive free ports (the metrics ports of `up`)."""
    for _ in range(50):
        first = free_port()
        if first + length < 65536 and all(_free(first + i) for i in range(1, length)):
            return first
    raise AssertionError(f"no run of {length} free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10):
    """(status, headers, body) without raising on HTTP errors."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, OSError):  # nothing listening (yet): status 0
        return 0, {}, b""


def wait_until(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class FakeProvider:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict]:
        return json.loads(http("GET", f"{self.url}/_fake/requests")[2])

    def clear(self) -> None:
        http("DELETE", f"{self.url}/_fake/requests")

    def configure(self, **settings: object) -> None:
        status, _, body = http(
            "POST", f"{self.url}/_fake/config", json.dumps(settings).encode(), {"content-type": "application/json"}
        )
        assert status == 200, f"the fake provider refused {settings}: {body.decode(errors='replace')}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    @classmethod
    def start(cls, log_dir: Path, port: int | None = None, args: Sequence[str] = ()) -> FakeProvider:
        port = port or free_port()
        log = open(log_dir / f"fake-provider-{port}.log", "ab")  # noqa: SIM115 (lives as long as the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "ccr_gateway.cli", "fake-provider", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        provider = cls(port, process)
        wait_until(
            lambda: http("GET", f"{provider.url}/healthz", timeout=1)[0] == 200 if listening(port) else False,
            15,
            "fake provider",
        )
        return provider


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port (a port in TIME_WAIT is free for a server)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def base_policy(listener_port: int, fake: FakeProvider, max_request_bytes: int = 1 << 20) -> dict:
    return {
        "listener": {"address": "127.0.0.1", "port": listener_port},
        "limits": {"max_request_bytes": max_request_bytes},
        "providers": [
            {
                "name": "fake-anthropic",
                "api": "anthropic",
                "base_url": fake.url,
                "api_key_env": "CCR_TEST_ANTHROPIC_KEY",
                "forward_count_tokens": True,
                "models": [
                    {
                        "name": "claude-sonnet-4-5",
                        "id": "fake-sonnet",
                        "max_output_tokens": 64000,
                        "capabilities": ["tools", "vision", "thinking"],
                    },
                    "claude-haiku-4-5",
                ],
            },
            {
                "name": "fake-openai",
                "api": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key_env": "CCR_TEST_OPENAI_KEY",
                "models": [
                    {
                        "name": "gpt-4o",
                        "id": "fake-gpt-4o",
                        "max_output_tokens": 16384,
                        "capabilities": ["tools", "vision"],
                    }
                ],
            },
            {
                "name": "fake-gemini",
                "api": "gemini",
                "base_url": f"{fake.url}/v1beta",
                "api_key_env": "CCR_TEST_GEMINI_KEY",
                "models": [
                    {
                        "name": "gemini-2.5-pro",
                        "id": "fake-gemini-pro",
                        "max_output_tokens": 65536,
                        "capabilities": ["tools", "vision", "thinking"],
                    }
                ],
            },
            {
                # Nothing listens there: the provider is down.
                "name": "unreachable",
                "api": "anthropic",
                "base_url": f"http://127.0.0.1:{free_port()}",
                "models": ["claude-unreachable"],
            },
        ],
    }


PROVIDER_KEYS = {
    "CCR_TEST_ANTHROPIC_KEY": "sk-ant-provider-key",
    "CCR_TEST_OPENAI_KEY": "sk-openai-provider-key",
    "CCR_TEST_GEMINI_KEY": "gemini-provider-key",
}


@dataclass
class Gateway:
    policy_path: Path
    policy: dict
    listener_port: int
    admin_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int  # `up`'s: every Python process's metrics, summed
    workers: int
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_policy(self, policy: dict | str) -> None:
        """Replace the policy file atomically, as an editor or a ConfigMap update would."""
        text = policy if isinstance(policy, str) else yaml.safe_dump(policy, sort_keys=False)
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.policy_path)
        if isinstance(policy, dict):
            self.policy = policy

    def dynamic_clusters(self) -> set[str]:
        dump = json.loads(http("GET", f"{self.admin}/config_dump?resource=dynamic_active_clusters")[2])
        return {c["cluster"]["name"] for c in dump.get("configs", [])}

    def envoy_stat(self, name: str) -> int:
        """One counter or gauge from Envoy's admin endpoint (0 while Envoy has not created it)."""
        query = urllib.parse.urlencode({"filter": f"^{re.escape(name)}$"})
        text = http("GET", f"{self.admin}/stats?{query}")[2].decode()
        match = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.MULTILINE)
        return int(match[1]) if match else 0

    def metrics(self) -> str:
        """`up`'s Prometheus page: every Python process's metrics, summed."""
        status, _, body = http("GET", f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, f"metrics: {status}"
        return body.decode()

    def extproc_metric(self, name: str, **labels: str) -> float:
        """A Prometheus sample summed over the ext_proc workers and labels not named (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    @classmethod
    def start(
        cls, directory: Path, policy: dict, name: str = "gateway", workers: int = 2, args: Sequence[str] = ()
    ) -> Gateway:
        policy_path = directory / f"{name}.yaml"
        policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        admin_port = free_port()
        metrics_port = free_port_run(1)
        log_path = directory / f"{name}.log"
        env = {**os.environ, **PROVIDER_KEYS}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ccr_gateway.cli",
                "--log-level",
                "info",
                "up",
                "-c",
                str(policy_path),
                "--admin-port",
                str(admin_port),
                "--timeout",
                "60",
                "--metrics-port",
                str(metrics_port),
                "--workers",
                str(workers),
                *args,
            ],
            stdout=open(log_path, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env,
        )
        gateway = cls(
            policy_path, policy, policy["listener"]["port"], admin_port, process, log_path, metrics_port, workers
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"ccr-gateway up exited ({process.returncode}):\n{gateway.log()}")
            return "is ready on" in gateway.log()

        wait_until(ready, 60, "ccr-gateway up")
        return gateway


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in this process's environment for the block (a gateway started inside it
    inherits them: Envoy's AWS credentials, the control plane's token variable), restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def settled(read: Callable[[], T], quiet_s: float = 0.5, timeout_s: float = 5.0) -> T:
    """``read()`` once it stopped changing for ``quiet_s`` (at most ``timeout_s``): the counts a
    gateway's usage log updates, with the earlier tests' entries arrived. Envoy flushes that log
    every 100 ms per worker thread, so a request that just ended may still be counted a moment
    later, inside the next test's window, unless that test waits for quiet first."""
    last = read()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read()
        if now == last:
            return now
        last = now
    return last
