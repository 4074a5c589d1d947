"""`ccr-gateway up` as a process tree, for the supervision and reliability tests: start it with the
example policy and its own fake provider, read its state file, find every process it started, and
say whether any of them is still alive or still holds a port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.gateway import PROVIDER_KEYS, free_port, free_port_run, listening, wait_until

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its reaper."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    log_path: Path
    state_dir: Path
    listener: int
    admin: int
    fake_port: int
    metrics: int
    workers: int
    seen_children: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener}"

    @property
    def ports(self) -> list[int]:
        return [self.listener, self.admin, self.fake_port, self.metrics]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state(self) -> dict:
        return json.loads((self.state_dir / f"{self.process.pid}.json").read_text())

    def child(self, name: str) -> dict:
        return next(c for c in self.state()["children"] if c["name"] == name)

    def note_children(self) -> set[int]:
        """Every child seen so far (kept across calls: a child that died may have left its own)."""
        self.seen_children |= children_of(self.process.pid)
        return self.seen_children

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            self.note_children()
            if self.process.poll() is not None:
                raise AssertionError(f"ccr-gateway up exited ({self.process.returncode}):\n{self.log()}")
            return "is ready on" in self.log()

        wait_until(ready, timeout, "ccr-gateway up")

    def survivors(self) -> list[int]:
        return [pid for pid in self.seen_children if alive(pid)]

    def assert_nothing_left(self, within: float = 5.0) -> None:
        """No child alive and no port held, within ``within`` seconds (SIGKILLed children take a moment)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and (self.survivors() or any(listening(p) for p in self.ports)):
            time.sleep(0.05)
        assert not self.survivors(), f"children left behind: {self.survivors()}\n{self.log()[-3000:]}"
        busy = [p for p in self.ports if listening(p)]
        assert not busy, f"ports still served: {busy}"

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.note_children()
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)


def start_up(
    directory: Path,
    workers: int = 2,
    extra: tuple[str, ...] = (),
    anthropic_url: str = "",
    append: str = "",
    priced: bool = False,
) -> Up:
    """`up` with the example policy on free ports; ``append``: YAML added to the policy (e.g. a
    storage section); ``priced``: the fake Claude model gets a price (the others have the bundled
    table's)."""
    """`ccr-gateway up` with the example policy and its own fake provider, on free ports.
    ``anthropic_url``: where the example's fake-anthropic provider is instead (the primary of the
    example's fallback chain, whose fallback stays on `up`'s fake provider)."""
    listener, fake_port, admin = free_port(), free_port(), free_port()
    metrics = free_port_run(1)
    text = (ROOT / "examples/gateway.yaml").read_text()
    if anthropic_url:
        text = text.replace("base_url: http://127.0.0.1:9100 ", f"base_url: {anthropic_url} ", 1)
    text = text.replace("port: 8080", f"port: {listener}").replace("127.0.0.1:9100", f"127.0.0.1:{fake_port}")
    if priced:
        text = text.replace(
            "id: fake-claude-sonnet\n", "id: fake-claude-sonnet\n        pricing: {input: 3, output: 15}\n"
        )
    text += append
    name = f"up-{listener}"
    policy = directory / f"{name}.yaml"
    policy.write_text(text)
    state_dir = directory / "state"
    log_path = directory / f"{name}.log"
    argv = [
        sys.executable,
        "-m",
        "ccr_gateway.cli",
        "--log-level",
        "info",
        "up",
        "-c",
        str(policy),
        "--with-fake-provider",
    ]
    argv += ["--fake-provider-port", str(fake_port), "--admin-port", str(admin), "--metrics-port", str(metrics)]
    argv += ["--workers", str(workers), "--timeout", "60", *extra]
    env = {**os.environ, **PROVIDER_KEYS, "CCR_GATEWAY_STATE_DIR": str(state_dir)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Up(process, log_path, state_dir, listener, admin, fake_port, metrics, workers)
