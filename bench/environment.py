"""The processes a bench run measures: started, checked, found in /proc, stopped.

One run starts these, and stops them again in reverse order (also on Ctrl-C or an error):
- the fake provider (``--no-record``), started here so that its CPU is attributed separately
  (component ``fake_provider``); it answers the streaming cases;
- the upstream Envoy (``bench.baseline.upstream_config``): canned answers from ``direct_response``
  for the non-streaming cases, so that a Python upstream does not cap plain Envoy (component
  ``upstream``);
- plain Envoy with the static config of ``bench.baseline``, routing to either upstream;
- one gateway per decision path asked for, each ``ccr-gateway up`` with its own generated policy
  (own listener and admin ports, ``listener.decision`` set) and the same four providers: an
  anthropic-format and an openai-format provider on the fake provider and the same pair on the
  upstream Envoy. Their children (control plane, ext_proc processes, Envoy) are found under each
  ``up`` process in /proc by their command lines. The hop variants (``GATEWAY_RUNS``) are the hop
  gateway without its ledger, or with virtual keys required: their key store is a keys.db in the
  work dir holding one key, made before the gateway starts, that every request to them presents;
  ``hop-auth-redis`` counts the key's limits in the machine's Redis (127.0.0.1:6379), whose CPU
  is then a component of that target (``redis``) when its process can be found.

Every target's components include both upstreams, so a window's CPU shows which one worked, but
neither is ever counted as the gateway's or plain Envoy's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client as http_client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import procfs
from bench.baseline import baseline_config, upstream_config, write_config
from bench.report import GATEWAY_COMPONENTS
from bench.targets import PLAIN, TARGET_BY_DECISION_PATH
from bench.workloads import (
    ANTHROPIC_CACHED_MODEL,
    ANTHROPIC_DIRECT_CACHED_MODEL,
    ANTHROPIC_DIRECT_MODEL,
    ANTHROPIC_MODEL,
    MAX_OUTPUT_TOKENS,
    OPENAI_DIRECT_MODEL,
    OPENAI_MODEL,
)
from ccr_gateway.preflight import free_port
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # the policy default; the 400 KB body is far below it
# The machine's Redis, where hop-auth-redis counts its key's limits (as tests/e2e/test_auth_limits.py).
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
# The bench key's limits: counted on every request, never reached (a refusal would measure the 429
# path, not the cost of counting). No budget: the hop gateway's requests have none either.
BENCH_KEY_LIMITS = {"rpm": 10_000_000, "tpm": 10_000_000_000}


@dataclass(frozen=True, slots=True)
class GatewayRun:
    """What one ``--paths`` name starts: a ``ccr-gateway up`` on this decision path, with or
    without the ledger, with or without keys required."""

    decision: str  # the policy's listener.decision
    ledger: bool = True  # False: `up --no-ledger`
    auth: bool = False  # keys required; the load presents one from the gateway's own keys.db
    redis_limits: bool = False  # with auth: the key's limits counted in REDIS_URL, not in process


GATEWAY_RUNS = {  # the same names as bench.report.TARGET_BY_DECISION_PATH (tests/unit/test_bench.py checks)
    "hop": GatewayRun("hop"),
    "ext_proc": GatewayRun("ext_proc"),
    "hop-no-ledger": GatewayRun("hop", ledger=False),
    "hop-auth": GatewayRun("hop", auth=True),
    "hop-auth-redis": GatewayRun("hop", auth=True, redis_limits=True),
}
GATEWAY_ROLES = GATEWAY_COMPONENTS  # what the gateway is made of: envoy, ext_proc, control_plane
Progress = Callable[[str], None]


class BenchError(RuntimeError):
    pass


def redis_listening(timeout: float = 1.0) -> bool:
    """Whether something accepts connections on the machine's Redis port (hop-auth-redis needs it)."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def create_bench_key(keys_db: Path) -> str:
    """A new virtual key in ``keys_db`` (created with its tables if missing); the presented key.
    Made before the gateway starts, so its workers load it with the store: no wait for the cache."""

    async def create() -> str:
        store = SqliteKeyStore(keys_db)
        try:
            presented, record = new_key("bench", "bench-load", time.time(), **BENCH_KEY_LIMITS)
            await store.create(record)
            return presented
        finally:
            await store.close()

    return asyncio.run(create())


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30):
    """(status, body) without raising on HTTP errors; status 0 when nothing answered."""
    status, _, answer = http_exchange(method, url, body, headers, timeout)
    return status, answer


def http_exchange(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lowercase names, body), without raising on HTTP errors; status 0 when
    nothing answered."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except (OSError, http_client.HTTPException):  # nothing, or something that is not HTTP/1, answered
        return 0, {}, b""


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    # Descendants seen while it ran (pid -> start time), killed if the process leaves them behind.
    known_children: dict[int, int] = field(default_factory=dict)


class Processes:
    """Everything the bench started; ``stop_all`` stops it in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Started] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Started:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            # Own session: a Ctrl-C in the terminal reaches only the bench, which stops these in order.
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.workdir
            )
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def check_alive(self) -> None:
        for started in self.started:
            if started.process.poll() is not None:
                raise BenchError(f"{started.name} exited with code {started.process.returncode}:\n{tail(started.log)}")

    def stop_all(self) -> None:
        for started in reversed(self.started):
            process = started.process
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pid, start_ticks in started.known_children.items():
                stat = procfs.read_stat(pid)
                if stat is not None and stat.start_ticks == start_ticks:  # still the same process
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        self.started.clear()


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def wait_for(check: Callable[[], bool], timeout: float, what: str, processes: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        if check():
            return
        time.sleep(0.1)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def envoy_binary() -> str:
    from ccr_gateway.supervisor import envoy_binary as find

    return find()


def envoy_argv(config: Path) -> list[str]:
    return [envoy_binary(), "-c", str(config), "--disable-hot-restart", "-l", "warning"]


def gateway_components(up_pid: int, shared: dict[str, list[int]]) -> dict[str, list[int]]:
    """The ``up`` process tree by role, from each process's command line, plus the shared upstreams."""
    groups: dict[str, list[int]] = {role: [] for role in GATEWAY_ROLES} | {k: list(v) for k, v in shared.items()}
    for pid in procfs.descendants(up_pid):
        argv = procfs.read_cmdline(pid)
        if argv and os.path.basename(argv[0]) == "envoy":
            groups["envoy"].append(pid)
        elif "extproc" in argv:  # one process serves both the hop and the ext_proc stream
            groups["ext_proc"].append(pid)
        elif "fake-provider" in argv:
            groups.setdefault("fake_provider", []).append(pid)
        else:  # the control plane, and the `up` supervisor itself (idle after startup)
            groups["control_plane"].append(pid)
    return groups


@dataclass
class Target:
    name: str  # PLAIN, GATEWAY or GATEWAY_EXTPROC
    url: str
    admin: str
    components: procfs.Components
    decision: str = ""  # the gateway's --paths name (hop, ext_proc, hop-auth, ...); "" for plain Envoy
    api_key: str = ""  # the virtual key every request presents (x-api-key); "" when keys are not required

    @property
    def is_gateway(self) -> bool:
        return bool(self.decision)


@dataclass
class Environment:
    plain: Target
    gateways: list[Target]  # the hop gateway first
    processes: Processes
    # Per target, right after startup and before any load: RSS per component and per process.
    at_rest: dict[str, dict[str, Any]]

    @property
    def targets(self) -> list[Target]:
        """Plain Envoy first: every case measures them in this order."""
        return [self.plain, *self.gateways]


def auth_section(keys_db: Path, redis_limits: bool) -> dict[str, Any]:
    """The policy's ``auth``: keys required, kept in ``keys_db``; limits in Redis or in process."""
    section: dict[str, Any] = {"required": True, "keys": {"sqlite": str(keys_db)}}
    if redis_limits:
        section["limits"] = {"redis": REDIS_URL}
    return section


def gateway_policy(
    listen_port: int, fake_port: int, upstream_port: int, decision: str, auth: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Two providers on the fake provider (streams) and two on the upstream Envoy (the rest); the
    case's model name picks one (``bench.workloads.Case.model``), and each anthropic-format provider
    has a second model that the response cache keeps (the cached cases'). ``auth``: the policy's
    auth section (``auth_section``), none by default."""
    model = {"max_output_tokens": MAX_OUTPUT_TOKENS, "capabilities": ["tools"]}
    # The cached cases' models: what the response cache keeps by default (deterministic answers),
    # for longer than any run. Only these models: the other cases never compute a cache key.
    cached = {**model, "cache": {"when": "deterministic", "ttl": "1h"}}

    def provider(
        name: str, api: str, port: int, model_name: str, key_env: str, cached_name: str = ""
    ) -> dict[str, Any]:
        base = f"http://127.0.0.1:{port}" + ("/v1" if api == "openai" else "")
        models = [{"name": model_name, **model}] + ([{"name": cached_name, **cached}] if cached_name else [])
        return {"name": name, "api": api, "base_url": base, "api_key_env": key_env, "models": models}

    policy: dict[str, Any] = {
        "listener": {"address": "127.0.0.1", "port": listen_port, "decision": decision},
        "limits": {"max_request_bytes": MAX_REQUEST_BYTES},
        "providers": [
            provider(
                "bench-anthropic",
                "anthropic",
                fake_port,
                ANTHROPIC_MODEL,
                "CCR_BENCH_ANTHROPIC_KEY",
                ANTHROPIC_CACHED_MODEL,
            ),
            provider("bench-openai", "openai", fake_port, OPENAI_MODEL, "CCR_BENCH_OPENAI_KEY"),
            provider(
                "bench-anthropic-direct",
                "anthropic",
                upstream_port,
                ANTHROPIC_DIRECT_MODEL,
                "CCR_BENCH_ANTHROPIC_KEY",
                ANTHROPIC_DIRECT_CACHED_MODEL,
            ),
            provider("bench-openai-direct", "openai", upstream_port, OPENAI_DIRECT_MODEL, "CCR_BENCH_OPENAI_KEY"),
        ],
    }
    if auth is not None:
        policy["auth"] = auth
    return policy


def memory_at_rest(components: procfs.Components, roles: tuple[str, ...]) -> dict[str, Any]:
    """RSS of each process of ``roles`` now, the totals per role, and the footprint of them all
    (procfs.footprint_kb: pages they share counted once)."""
    pids = {role: pids for role, pids in components.pids().items() if role in roles}
    per_process = {role: [round(procfs.read_rss_kb(pid) / 1024, 1) for pid in group] for role, group in pids.items()}
    return {
        "rss_mb": {role: round(sum(values), 1) for role, values in per_process.items()},
        "footprint_mb": round(procfs.footprint_kb(pid for group in pids.values() for pid in group) / 1024, 1),
        "processes": {role: len(values) for role, values in per_process.items()},
        "rss_mb_per_process": per_process,
    }


@contextlib.contextmanager
def environment(
    progress: Progress,
    *,
    decision_paths: tuple[str, ...] = ("hop", "ext_proc"),
    workers: int = 0,
    startup_timeout_s: float = 60.0,
    keep_workdir: bool = False,
) -> Iterator[Environment]:
    """Both upstreams, plain Envoy and one gateway per decision path, up and checked; all stopped on exit.

    ``workers``: ext_proc worker processes per gateway (0: ``ccr-gateway up``'s default, one per core).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ccr-bench-"))
    processes = Processes(workdir)
    python = [sys.executable, "-m", "ccr_gateway.cli"]
    try:
        fake_port, upstream_port, upstream_admin = free_port(), free_port(), free_port()
        progress(
            f"starting the fake provider on 127.0.0.1:{fake_port}, the upstream Envoy on 127.0.0.1:{upstream_port}"
        )
        fake = processes.start("fake-provider", [*python, "fake-provider", "--port", str(fake_port), "--no-record"])
        config = write_config(
            workdir / "upstream-envoy.yaml",
            upstream_config(listen_port=upstream_port, admin_port=upstream_admin, max_request_bytes=MAX_REQUEST_BYTES),
        )
        upstream = processes.start("upstream-envoy", envoy_argv(config))
        fake_url = f"http://127.0.0.1:{fake_port}"
        wait_for(lambda: http("GET", f"{fake_url}/healthz", timeout=1)[0] == 200, 30, "the fake provider", processes)
        upstream_ready = f"http://127.0.0.1:{upstream_admin}/ready"
        wait_for(lambda: http("GET", upstream_ready, timeout=1)[0] == 200, 30, "the upstream Envoy", processes)
        # Shared by every target: never part of the gateway's or plain Envoy's CPU.
        shared = {"fake_provider": [fake.process.pid], "upstream": [upstream.process.pid]}

        plain_port, plain_admin = free_port(), free_port()
        config = write_config(
            workdir / "baseline-envoy.yaml",
            baseline_config(
                listen_port=plain_port,
                admin_port=plain_admin,
                upstream_port=fake_port,
                direct_upstream_port=upstream_port,
                max_request_bytes=MAX_REQUEST_BYTES,
            ),
        )
        progress(f"starting plain Envoy on 127.0.0.1:{plain_port}")
        plain_envoy = processes.start(PLAIN, envoy_argv(config))
        plain_admin_url = f"http://127.0.0.1:{plain_admin}"
        wait_for(lambda: http("GET", f"{plain_admin_url}/ready", timeout=1)[0] == 200, 30, "plain Envoy", processes)
        plain = Target(
            PLAIN,
            f"http://127.0.0.1:{plain_port}",
            plain_admin_url,
            procfs.Components(lambda: {"envoy": [plain_envoy.process.pid], **shared}),
        )

        # The gateways start side by side (startup is mostly Python imports), then each is awaited.
        # Only the policy says where keys and limits live: none of the caller's CCR_AUTH_* settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCR_AUTH_")}
        env |= {"CCR_BENCH_ANTHROPIC_KEY": "sk-ant-bench", "CCR_BENCH_OPENAI_KEY": "sk-bench"}
        # The gateways keep their usage ledger on, as a deployment does, in the work dir: the
        # benchmark's requests never land in the user's own ledger (ledger.local: $XDG_DATA_HOME).
        env["XDG_DATA_HOME"] = str(workdir / "data")
        starting = []
        for path in sorted(decision_paths, key=list(TARGET_BY_DECISION_PATH).index):  # hop first
            name, run = TARGET_BY_DECISION_PATH[path], GATEWAY_RUNS[path]
            port, admin, xds = free_port(), free_port(), free_port()  # xds too: not picked by `up` itself
            auth, api_key, components = None, "", shared
            if run.auth:
                keys_db = workdir / f"{name}-keys.db"
                api_key = create_bench_key(keys_db)
                auth = auth_section(keys_db, run.redis_limits)
            if run.redis_limits and (redis := procfs.listening_pids(REDIS_PORT)):
                components = shared | {"redis": redis}  # the limits' CPU, beside the gateway's
            policy = workdir / f"{name}-policy.yaml"
            policy.write_text(
                yaml.safe_dump(gateway_policy(port, fake_port, upstream_port, run.decision, auth), sort_keys=False)
            )
            progress(f"starting {name} (ccr-gateway up, decision: {run.decision}) on 127.0.0.1:{port}")
            argv = [*python, "up", "-c", str(policy), "--admin-port", str(admin), "--xds", f"127.0.0.1:{xds}"]
            argv += ["--admin-api", "off"]  # several gateways at once: none on the Admin API's fixed port
            argv += ["--metrics-port", "0"]  # `up` serves metrics on fixed ports by default: two gateways would collide
            argv += ["--timeout", f"{startup_timeout_s:g}"]
            argv += [] if run.ledger else ["--no-ledger"]
            up = processes.start(name, argv + (["--workers", str(workers)] if workers else []), env=env)
            starting.append(
                (name, path, up, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", components, api_key)
            )
        gateways = []
        for name, path, up, url, admin_url, components, api_key in starting:
            models_url, key_header = f"{url}/v1/models", {"x-api-key": api_key} if api_key else {}
            wait_for(
                lambda u=models_url, h=key_header: http("GET", u, headers=h, timeout=1)[0] == 200,
                startup_timeout_s,
                name,
                processes,
            )
            gateway = Target(name, url, admin_url, procfs.Components(_discoverer(up, components)), path, api_key)
            found = gateway.components.pids()
            missing = [role for role in GATEWAY_ROLES if not found[role]]
            if missing:
                raise BenchError(f"{name} processes not found under pid {up.process.pid}: {', '.join(missing)}")
            progress(f"{name} processes: " + ", ".join(f"{role} {found[role]}" for role in GATEWAY_ROLES))
            gateways.append(gateway)
        at_rest = {PLAIN: memory_at_rest(plain.components, ("envoy",))}
        at_rest |= {gateway.name: memory_at_rest(gateway.components, GATEWAY_ROLES) for gateway in gateways}
        yield Environment(plain, gateways, processes, at_rest)
    finally:
        progress("stopping everything the bench started")
        processes.stop_all()
        if keep_workdir:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _discoverer(up: Started, shared: dict[str, list[int]]) -> Callable[[], dict[str, list[int]]]:
    """Finds ``up``'s children (again before every snapshot) and remembers them, so that
    ``Processes.stop_all`` can kill any that ``up`` leaves behind."""

    def discover() -> dict[str, list[int]]:
        groups = gateway_components(up.process.pid, shared)
        for pid in (p for role in GATEWAY_ROLES for p in groups[role]):
            if pid != up.process.pid and pid not in up.known_children and (stat := procfs.read_stat(pid)):
                up.known_children[pid] = stat.start_ticks
        return groups

    return discover
