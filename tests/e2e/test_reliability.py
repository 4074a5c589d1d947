"""The fault matrix of docs/reliability.md: under steady load from both SDKs, kill or stop one part
of the gateway and count what the clients see. Each test prints its figures (``pytest -s``).

- a SIGKILLed ext_proc worker: only requests in flight on it may fail; replaced within 2 s;
- a SIGTERMed worker: drains, exits 0, is replaced; at most a request racing its socket's close fails;
- a SIGKILLed control plane: nothing fails (Envoy and the workers keep their last config);
- the primary provider of a fallback chain stopped, then started again: nothing fails.

After each, the gateway must be whole: every child alive, every worker routing requests again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai
import pytest

from ccr_gateway.probes import unix_http_status
from tests.e2e.gateway import FakeProvider, free_port, http, wait_until
from tests.e2e.supervision import Up, start_up

LOAD_THREADS = 4  # two per SDK: at most this many requests are in flight at any moment


@dataclass
class Outcome:
    started: float
    ok: bool
    answered_by: str  # "fake-anthropic" / "fake-openai", or the error


@dataclass
class Load:
    """Clients asking in a loop; every outcome kept with the time its request started."""

    up: Up
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index in range(LOAD_THREADS):
            ask = self._anthropic if index % 2 == 0 else self._openai
            thread = threading.Thread(target=self._loop, args=(ask,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _loop(self, ask) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.outcomes.append(Outcome(started, True, ask()))
            except Exception as exc:  # every failure a client would see, whatever its kind
                self.outcomes.append(Outcome(started, False, repr(exc)[:200]))
                time.sleep(0.01)

    def _anthropic(self) -> str:
        client = _client(anthropic.Anthropic, self.up.url)
        message = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        return message.content[0].text.split()[2].rstrip(":")  # "Hello from fake-anthropic model ..."

    def _openai(self) -> str:
        client = _client(openai.OpenAI, f"{self.up.url}/v1")
        completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        return (completion.choices[0].message.content or "").split()[2]

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.started >= moment]


_CLIENTS: dict[tuple[type, str], object] = {}


def _client(kind, base_url: str):
    """One client per SDK per thread would be more realistic; one shared client each is enough
    (both SDKs' clients are thread-safe) and keeps connections reused."""
    key = (kind, base_url)
    if key not in _CLIENTS:
        _CLIENTS[key] = kind(base_url=base_url, api_key="any", max_retries=0, timeout=10)
    return _CLIENTS[key]


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProvider]:
    provider = FakeProvider.start(tmp_path_factory.mktemp("primary"), port=free_port())
    yield provider
    if provider.process.poll() is None:
        provider.stop()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, primary: FakeProvider) -> Iterator[Up]:
    gateway = start_up(tmp_path_factory.mktemp("reliability"), workers=2, anthropic_url=primary.url)
    gateway.wait_ready()
    yield gateway
    assert gateway.stop() == 0, gateway.log()[-3000:]
    gateway.assert_nothing_left()


@pytest.fixture(scope="module")
def load(up: Up) -> Iterator[Load]:
    running = Load(up)
    running.start()
    time.sleep(1.0)  # warm: connections open, both workers busy
    yield running
    running.stop()


def routed_by(up: Up, worker: str) -> float:
    """Decisions Envoy asked of ``worker`` (the hop cluster's requests to its socket; `up`'s
    metrics sum the workers, Envoy's host stats do not). A new process's socket is a new host."""
    socket = f"hop-{worker.rsplit('-', 1)[1]}.sock::rq_total::"
    text = http("GET", f"http://127.0.0.1:{up.admin}/clusters")[2].decode()
    return sum(
        float(line.rsplit("::", 1)[1]) for line in text.splitlines() if line.startswith("ccr_hop::") and socket in line
    )


def assert_whole(up: Up, load: Load, routed_before: dict[str, float]) -> None:
    """Every child alive, and every worker routing requests again (its counter moved, or started
    over from zero in a new process)."""
    children = up.state()["children"]
    assert all(child["alive"] for child in children), children
    wait_until(lambda: in_rotation(up), 10, "every worker back in Envoy's rotation")
    for worker, before in routed_before.items():
        wait_until(
            lambda w=worker, b=before: (now := routed_by(up, w)) > b or 0 < now < b, 10, f"{worker} to route again"
        )


def report(fault: str, outcomes: list[Outcome], recovered_s: float) -> list[Outcome]:
    failed = [o for o in outcomes if not o.ok]
    print(f"\n{fault}: {len(outcomes)} requests, {len(failed)} failed, recovered in {recovered_s:.2f} s")
    for outcome in failed[:5]:
        print(f"  failed: {outcome.answered_by}")
    return failed


def worker_replaced(up: Up, name: str, old_pid: int) -> bool:
    """A new process holds the policy, and Envoy has it back in rotation (not ejected)."""
    child = up.child(name)
    if child["pid"] == old_pid or not child["alive"]:
        return False
    index = name.rsplit("-", 1)[1]
    if unix_http_status(os.path.join(up.state()["run_dir"], f"hop-{index}.sock")) != 200:
        return False
    return in_rotation(up)


def in_rotation(up: Up) -> bool:
    """No worker ejected by Envoy's outlier detection (envoy/bootstrap.yaml) any more."""
    text = http("GET", f"http://127.0.0.1:{up.admin}/stats?filter=outlier_detection.ejections_active")[2].decode()
    return all(
        line.endswith(": 0")
        for line in text.splitlines()
        if line.startswith(("cluster.ccr_hop.", "cluster.ccr_extproc."))
    )


def workers(up: Up) -> dict[str, float]:
    return {f"extproc-{i}": routed_by(up, f"extproc-{i}") for i in range(up.workers)}


def test_a_sigkilled_worker_fails_only_its_requests_in_flight_and_is_replaced_within_2_s(up: Up, load: Load):
    before = workers(up)
    victim = up.child("extproc-0")["pid"]
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: worker_replaced(up, "extproc-0", victim), 5, "extproc-0 to be replaced")
    assert up.child("extproc-0")["restarts"] >= 1
    recovered = time.monotonic() - start
    time.sleep(1.0)
    failed = report("SIGKILL extproc-0", load.since(start - 0.5), recovered)
    assert len(failed) <= LOAD_THREADS, "more failures than requests in flight"
    assert_whole(up, load, before)


def test_a_sigtermed_worker_drains_and_is_replaced(up: Up, load: Load):
    before = workers(up)
    victim = up.child("extproc-1")["pid"]
    start = time.monotonic()
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: worker_replaced(up, "extproc-1", victim), 15, "extproc-1 to be replaced")
    recovered = time.monotonic() - start
    time.sleep(1.0)
    failed = report("SIGTERM extproc-1", load.since(start - 0.5), recovered)
    assert up.child("extproc-1")["last_exit"] == "code 0"
    # Draining loses nothing: answers owed go out, a refused or cancelled call is asked again on
    # another worker (docs/reliability.md).
    assert not failed
    assert_whole(up, load, before)


def test_a_sigkilled_control_plane_fails_nothing(up: Up, load: Load):
    before = workers(up)
    connected = up.log().count("(ccr-gateway) connected")
    start = time.monotonic()
    os.kill(up.child("control-plane")["pid"], signal.SIGKILL)
    wait_until(lambda: up.log().count("(ccr-gateway) connected") > connected, 15, "Envoy to reconnect to xDS")
    recovered = time.monotonic() - start
    time.sleep(1.0)
    failed = report("SIGKILL control-plane", load.since(start - 0.5), recovered)
    assert not failed
    assert up.child("control-plane")["restarts"] >= 1
    assert_whole(up, load, before)


def test_a_fallback_chain_rides_out_its_primary_stopping_and_starting(up: Up, load: Load, primary: FakeProvider):
    before = workers(up)
    start = time.monotonic()
    primary.stop()
    time.sleep(2.0)
    during = [o for o in load.since(start + 0.5) if o.ok and o.answered_by.startswith("fake-")]
    assert {"fake-openai"} == {o.answered_by for o in during}, "the chain's fallback answers meanwhile"
    restarted = FakeProvider.start(Path(up.log_path).parent, port=primary.port)
    primary.process = restarted.process
    back = time.monotonic()
    wait_until(
        lambda: any(o.ok and o.answered_by == "fake-anthropic" for o in load.since(back)),
        40,
        "the primary to answer again",
    )
    recovered = time.monotonic() - back
    failed = report("primary provider stopped 2 s, then started", load.since(start - 0.5), recovered)
    assert not failed
    assert_whole(up, load, before)
