"""Start the processes, drive the cases, sample CPU and memory: everything the bench does with I/O.

One run starts, and stops again in reverse order (also on Ctrl-C or an error):
- the fake provider (``--no-record``), started here so that its CPU is attributed separately;
- plain Envoy with the static config of ``bench.baseline`` pointing at that provider;
- the gateway, ``ccr-gateway up`` with a generated policy (an anthropic-format and an openai-format
  provider, both the fake one). Its children (control plane, ext_proc processes, Envoy) are found
  under the ``up`` process in /proc by their command lines.

Per case, plain Envoy and then the gateway each get: one checked request (status and response
shape), a warm-up, then the measured window. Loads never overlap. The result is a plain dict (see
``bench.report`` for what is derived from it) so that it can be written as JSON as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
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
from bench.baseline import write_baseline_config
from bench.load import Driver, LoadResult, LoadSpec, PythonLoad, pick_driver
from bench.report import GATEWAY, PLAIN
from bench.workloads import (
    ANTHROPIC_MODEL,
    CASES_BY_NAME,
    MAIN_CASE,
    MAX_OUTPUT_TOKENS,
    OPENAI_MODEL,
    Case,
)

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # the policy default; the 400 KB body is far below it
EXTPROC_STATS = ("stream_msgs_sent", "stream_msgs_received", "streams_started")
HOP_CALLS = "hop_calls"  # calls to the decision hop (extproc/hop.py), from Envoy's ccr_hop cluster
Progress = Callable[[str], None]


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    cases: tuple[str, ...]
    duration_s: float = 15.0
    warmup_s: float = 2.0
    connections: int = 16
    threads: int = 1
    half_load: bool = True
    soak_requests: int = 0
    load_generator: str = "auto"
    startup_timeout_s: float = 60.0
    keep_workdir: bool = False
    workers: int = 0  # ext_proc worker processes of the gateway (0: ccr-gateway up's default, one per core)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30):
    """(status, body) without raising on HTTP errors; status 0 when nothing answered."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


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


def gateway_components(up_pid: int, fake_pid: int) -> dict[str, list[int]]:
    """The ``up`` process tree by role, from each process's command line."""
    groups: dict[str, list[int]] = {"envoy": [], "ext_proc": [], "control_plane": [], "fake_provider": [fake_pid]}
    for pid in procfs.descendants(up_pid):
        argv = procfs.read_cmdline(pid)
        if argv and os.path.basename(argv[0]) == "envoy":
            groups["envoy"].append(pid)
        elif "extproc" in argv:
            groups["ext_proc"].append(pid)
        elif "fake-provider" in argv:
            groups["fake_provider"].append(pid)
        else:  # the control plane, and the `up` supervisor itself (idle after startup)
            groups["control_plane"].append(pid)
    return groups


@dataclass
class Target:
    name: str  # PLAIN or GATEWAY
    url: str
    admin: str
    components: procfs.Components


def gateway_policy(listen_port: int, fake_port: int) -> dict[str, Any]:
    fake = f"http://127.0.0.1:{fake_port}"
    model = {"max_output_tokens": MAX_OUTPUT_TOKENS, "capabilities": ["tools"]}
    return {
        "listener": {"address": "127.0.0.1", "port": listen_port},
        "limits": {"max_request_bytes": MAX_REQUEST_BYTES},
        "providers": [
            {
                "name": "bench-anthropic",
                "api": "anthropic",
                "base_url": fake,
                "api_key_env": "CCR_BENCH_ANTHROPIC_KEY",
                "models": [{"name": ANTHROPIC_MODEL, **model}],
            },
            {
                "name": "bench-openai",
                "api": "openai",
                "base_url": f"{fake}/v1",
                "api_key_env": "CCR_BENCH_OPENAI_KEY",
                "models": [{"name": OPENAI_MODEL, **model}],
            },
        ],
    }


@contextlib.contextmanager
def environment(settings: Settings, progress: Progress) -> Iterator[tuple[Target, Target, Processes]]:
    """Fake provider, plain Envoy and the gateway, up and checked; all stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="ccr-bench-"))
    processes = Processes(workdir)
    python = [sys.executable, "-m", "ccr_gateway.cli"]
    try:
        fake_port = free_port()
        progress(f"starting the fake provider on 127.0.0.1:{fake_port}")
        fake = processes.start("fake-provider", [*python, "fake-provider", "--port", str(fake_port), "--no-record"])
        fake_url = f"http://127.0.0.1:{fake_port}"
        wait_for(lambda: http("GET", f"{fake_url}/healthz", timeout=1)[0] == 200, 30, "the fake provider", processes)

        plain_port, plain_admin = free_port(), free_port()
        config = write_baseline_config(
            workdir / "baseline-envoy.yaml",
            listen_port=plain_port,
            admin_port=plain_admin,
            upstream_port=fake_port,
            max_request_bytes=MAX_REQUEST_BYTES,
        )
        progress(f"starting plain Envoy on 127.0.0.1:{plain_port}")
        plain_envoy = processes.start(
            "plain-envoy", [envoy_binary(), "-c", str(config), "--disable-hot-restart", "-l", "warning"]
        )
        plain_admin_url = f"http://127.0.0.1:{plain_admin}"
        wait_for(lambda: http("GET", f"{plain_admin_url}/ready", timeout=1)[0] == 200, 30, "plain Envoy", processes)

        gw_port, gw_admin = free_port(), free_port()
        policy = workdir / "bench-policy.yaml"
        policy.write_text(yaml.safe_dump(gateway_policy(gw_port, fake_port), sort_keys=False))
        env = {**os.environ, "CCR_BENCH_ANTHROPIC_KEY": "sk-ant-bench", "CCR_BENCH_OPENAI_KEY": "sk-bench"}
        progress(f"starting the gateway (ccr-gateway up) on 127.0.0.1:{gw_port}")
        timeout = settings.startup_timeout_s
        up = processes.start(
            "gateway",
            [
                *python,
                "up",
                "-c",
                str(policy),
                "--admin-port",
                str(gw_admin),
                "--timeout",
                f"{timeout:g}",
                *(["--workers", str(settings.workers)] if settings.workers else []),
            ],
            env=env,
        )
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_for(lambda: http("GET", f"{gw_url}/v1/models", timeout=1)[0] == 200, timeout, "the gateway", processes)

        def discover_gateway() -> dict[str, list[int]]:
            groups = gateway_components(up.process.pid, fake.process.pid)
            for pid in (p for role, pids in groups.items() if role != "fake_provider" for p in pids):
                if pid != up.process.pid and pid not in up.known_children and (stat := procfs.read_stat(pid)):
                    up.known_children[pid] = stat.start_ticks
            return groups

        found = discover_gateway()
        missing = [role for role in ("envoy", "ext_proc", "control_plane") if not found[role]]
        if missing:
            raise BenchError(f"gateway processes not found under pid {up.process.pid}: {', '.join(missing)}")
        progress(
            "gateway processes: "
            + ", ".join(f"{role} {pids}" for role, pids in found.items() if role != "fake_provider")
        )
        plain = Target(
            PLAIN,
            f"http://127.0.0.1:{plain_port}",
            plain_admin_url,
            procfs.Components(lambda: {"envoy": [plain_envoy.process.pid], "fake_provider": [fake.process.pid]}),
        )
        gateway = Target(GATEWAY, gw_url, f"http://127.0.0.1:{gw_admin}", procfs.Components(discover_gateway))
        yield plain, gateway, processes
    finally:
        progress("stopping everything the bench started")
        processes.stop_all()
        if settings.keep_workdir:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- measuring ---------------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent not idle since boot (from the first line of /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user, nice, system, irq, softirq; not idle, iowait or steal (time the hypervisor took away).
    busy = values[0] + values[1] + values[2] + sum(values[5:7])
    return busy / procfs.CLOCK_TICKS


def extproc_stats(admin: str) -> dict[str, int]:
    """The listener's ext_proc stream counters, and the decision hop's calls (``hop_calls``)."""
    status, body = http("GET", f"{admin}/stats?format=json&filter=ext_proc|ccr_hop.upstream_rq_total", timeout=5)
    if status != 200:
        return {}
    totals = dict.fromkeys((*EXTPROC_STATS, HOP_CALLS), 0)
    for stat in json.loads(body).get("stats", []):
        name, value = stat.get("name", ""), stat.get("value")
        if not isinstance(value, int):
            continue
        # Only the listener's filter: upstream (per-attempt) ext_proc filters have other prefixes.
        if name.startswith("http.ccr.ext_proc."):
            key = name.rsplit(".", 1)[1]
            if key in totals:
                totals[key] += value
        elif name == "cluster.ccr_hop.upstream_rq_total":
            totals[HOP_CALLS] += value
    return totals


class Bench:
    def __init__(self, settings: Settings, progress: Progress, processes: Processes) -> None:
        self.settings = settings
        self.progress = progress
        self.processes = processes
        self.driver = pick_driver(settings.load_generator)
        self.workdir = processes.workdir

    # One load run, not measured (warm-up) or measured.
    def _drive(self, driver: Driver, spec: LoadSpec, label: str, workdir: Path) -> tuple[LoadResult, float]:
        """Run a load generator to completion; (its result, its CPU seconds)."""
        workdir.mkdir(parents=True, exist_ok=True)
        argv = driver.command(spec, workdir)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out_path = workdir / f"{driver.name}.out"
        with open(out_path, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
        started = time.monotonic()
        last_note = started
        limit = spec.duration_s + spec.timeout_s + 30
        try:
            while process.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if now - last_note >= 5:
                    self.progress(f"  {label}: {now - started:.0f}/{spec.duration_s:g} s")
                    last_note = now
                if now - started > limit:
                    raise BenchError(f"{driver.name} did not finish within {limit:.0f} s")
                self.processes.check_alive()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        output = out_path.read_text(errors="replace")
        if process.returncode != 0:
            raise BenchError(f"{driver.name} failed ({process.returncode}): {' '.join(argv)}\n{output[-2000:]}")
        return driver.parse(output, spec, workdir), cpu

    def measure(self, target: Target, spec: LoadSpec, label: str, driver: Driver | None = None) -> dict[str, Any]:
        driver = driver or self.driver
        workdir = self.workdir / label.replace(" ", "_").replace("/", "_")
        stats_before = extproc_stats(target.admin) if target.name == GATEWAY else {}
        usage_before = target.components.snapshot()
        busy_before, wall_before = machine_busy_s(), time.monotonic()
        load, loadgen_cpu = self._drive(driver, spec, label, workdir)
        wall = time.monotonic() - wall_before
        busy = machine_busy_s() - busy_before
        usage_after = target.components.snapshot()
        stats_after = extproc_stats(target.admin) if target.name == GATEWAY else {}
        cpu = procfs.cpu_delta(usage_before, usage_after)
        cpu["loadgen"] = loadgen_cpu
        requests = max(load.requests, 1)
        ncpu = os.cpu_count() or 1
        window: dict[str, Any] = {
            "target": target.name,
            "load": load.as_dict(),
            "window_s": round(wall, 3),
            "cpu_ms_per_request": {k: round(v * 1000 / requests, 4) for k, v in cpu.items()},
            "cpu_busy_pct": {k: round(v * 100 / wall, 1) for k, v in cpu.items()},
            "rss_mb": {k: round(u.rss_kb / 1024, 1) for k, u in usage_after.items()},
            "processes": {k: len(u.pids) for k, u in usage_after.items()},
            # CPU used by processes that are not part of this measurement (other work on the machine).
            "other_cpu_pct": round(max(0.0, busy - sum(cpu.values())) * 100 / (wall * ncpu), 1),
            "warnings": [],
        }
        if target.name == GATEWAY:
            window["ext_proc_per_request"] = {
                k: round((stats_after.get(k, 0) - stats_before.get(k, 0)) / requests, 3)
                for k in (*EXTPROC_STATS, HOP_CALLS)
            }
        if restarted := procfs.changed(usage_before, usage_after):
            window["warnings"].append(f"processes changed during the window: {', '.join(restarted)}")
        if load.error_count:
            window["warnings"].append(f"{load.error_count} errors: {load.errors}")
        return window

    # --- cases --------------------------------------------------------------------------------

    def spec(self, target: Target, case: Case, files: dict[str, Path], **overrides: Any) -> LoadSpec:
        plain = target.name == PLAIN
        settings = self.settings
        values: dict[str, Any] = {
            "url": target.url + (case.baseline_path() if plain else case.client_path()),
            "body_path": files[target.name],
            "headers": case.baseline_headers() if plain else case.client_headers(),
            "duration_s": settings.duration_s,
            "connections": settings.connections,
            "threads": settings.threads,
        }
        return LoadSpec(**(values | overrides))

    def write_bodies(self, case: Case) -> dict[str, Path]:
        files = {}
        for target, body in ((PLAIN, case.baseline_body()), (GATEWAY, case.client_body())):
            path = self.workdir / f"{case.name}.{target}.json"
            path.write_bytes(body)
            files[target] = path
        return files

    def check(self, target: Target, case: Case, files: dict[str, Path]) -> dict[str, Any]:
        """One request before the load: right status and response shape; counts stream events."""
        spec = self.spec(target, case, files)
        status, body = http("POST", spec.url, spec.body_path.read_bytes(), spec.headers, timeout=60)
        openai = target.name == PLAIN and case.translated
        if status != 200:
            raise BenchError(f"{case.name} via {target.name}: HTTP {status}: {body[:500]!r}")
        if case.stream:
            end = b"data: [DONE]" if openai else b"event: message_stop"
            if end not in body:
                raise BenchError(f"{case.name} via {target.name}: stream did not end with {end!r}: {body[-300:]!r}")
        else:
            parsed = json.loads(body)
            shape_ok = "choices" in parsed if openai else parsed.get("type") == "message"
            if not shape_ok:
                raise BenchError(f"{case.name} via {target.name}: unexpected response {body[:300]!r}")
        events = sum(1 for line in body.splitlines() if line.startswith(b"data:")) if case.stream else 0
        return {"response_bytes": len(body), "sse_events": events}

    def run_case(self, case: Case, plain: Target, gateway: Target, index: int, total: int) -> dict[str, Any]:
        files = self.write_bodies(case)
        record: dict[str, Any] = {
            "name": case.name,
            "description": case.description,
            "translated": case.translated,
            "stream": case.stream,
            "chunks": case.chunks,
            "chunk_gap_ms": case.chunk_gap_ms,
            "client_body_bytes": files[GATEWAY].stat().st_size,
            "upstream_body_bytes": files[PLAIN].stat().st_size,
        }
        # wrk abandons the requests in flight when its time is up: with requests of about a second
        # (a paced stream) that leaves up to one partial request per connection counted in the CPU
        # and message totals but not in the requests. The Python generator lets them finish.
        driver = PythonLoad() if case.chunk_gap_ms > 0 else self.driver
        record["load_generator"] = driver.name
        for target in (plain, gateway):
            label = f"[{index}/{total}] {case.name} via {target.name}"
            check = self.check(target, case, files)
            if target is plain:
                # Plain Envoy returns the provider's stream unchanged: these are the upstream events.
                record["upstream_sse_events"] = check["sse_events"]
                record["upstream_response_bytes"] = check["response_bytes"]
            else:
                record["client_sse_events"] = check["sse_events"]
                record["client_response_bytes"] = check["response_bytes"]
            if self.settings.warmup_s > 0:
                self.progress(f"{label}: warm-up {self.settings.warmup_s:g} s")
                self._drive(
                    driver,
                    self.spec(target, case, files, duration_s=self.settings.warmup_s),
                    f"{label} warm-up",
                    self.workdir / f"{case.name}-{target.name}-warmup",
                )
            self.progress(f"{label}: measuring {self.settings.duration_s:g} s")
            record[target.name] = self.measure(target, self.spec(target, case, files), label, driver)
            load = record[target.name]["load"]
            self.progress(
                f"{label}: {load['rps']:.0f} req/s, p99 {load['latency_ms']['p99']:.1f} ms, "
                f"{sum(load['errors'].values())} errors"
            )
        return record

    def half_load(self, main: dict[str, Any], plain: Target, gateway: Target) -> dict[str, Any]:
        """The main case again, at half the gateway's measured maximum, on both sides, open loop."""
        case = CASES_BY_NAME[MAIN_CASE]
        files = self.write_bodies(case)
        rate = max(1.0, round(main[GATEWAY]["load"]["rps"] / 2, 1))
        record: dict[str, Any] = {"case": case.name, "rate": rate, "generator": "python open loop (Poisson arrivals)"}
        for target in (plain, gateway):
            label = f"[half load] {case.name} via {target.name} at {rate:g} req/s"
            self.progress(f"{label}: measuring {self.settings.duration_s:g} s")
            # The same seed on both sides: the same arrival times.
            spec = self.spec(target, case, files, rate=rate, connections=self.settings.connections, seed=7)
            record[target.name] = self.measure(target, spec, label, driver=PythonLoad())
            load = record[target.name]["load"]
            self.progress(f"{label}: p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms")
        return record

    def soak(self, gateway: Target) -> dict[str, Any]:
        """The main case through the gateway until ``soak_requests`` are done; RSS before and after."""
        case = CASES_BY_NAME[MAIN_CASE]
        files = self.write_bodies(case)
        target_requests = self.settings.soak_requests
        self.progress(f"[soak] warm-up {max(self.settings.warmup_s, 2):g} s")
        self._drive(
            self.driver,
            self.spec(gateway, case, files, duration_s=max(self.settings.warmup_s, 2)),
            "[soak] warm-up",
            self.workdir / "soak-warmup",
        )
        start = gateway.components.snapshot()
        trajectory = [{"requests": 0, "rss_mb": {k: round(u.rss_kb / 1024, 1) for k, u in start.items()}}]
        done = errors = 0
        rps = 0.0
        while done < target_requests:
            # Windows of 10 s, the last one sized to end near the requested count.
            window = min(10.0, max(1.0, (target_requests - done) / rps)) if rps else 10.0
            load, _ = self._drive(
                self.driver, self.spec(gateway, case, files, duration_s=window), "[soak]", self.workdir / "soak"
            )
            rps = load.rps
            done += load.requests
            errors += load.error_count
            now = gateway.components.snapshot()
            trajectory.append({"requests": done, "rss_mb": {k: round(u.rss_kb / 1024, 1) for k, u in now.items()}})
            self.progress(
                f"[soak] {done:,}/{target_requests:,} requests; RSS "
                + ", ".join(f"{k} {u.rss_kb / 1024:.0f} MB" for k, u in now.items())
            )
        end = gateway.components.snapshot()
        growth = {
            k: round((end[k].rss_kb - start[k].rss_kb) * 100 / start[k].rss_kb, 1)
            for k in ("envoy", "ext_proc")
            if start.get(k) and start[k].rss_kb
        }
        return {
            "case": case.name,
            "connections": self.settings.connections,
            "requests": done,
            "errors": errors,
            "rss_mb_start": trajectory[0]["rss_mb"],
            "rss_mb_end": trajectory[-1]["rss_mb"],
            "growth_pct": growth,
            "trajectory": trajectory,
            "processes_changed": procfs.changed(start, end),
        }


# --- facts about the machine -------------------------------------------------------------------


def machine_facts(driver: Driver) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kb = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")), 0)
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy_version(),
        "load_generator": tool_version(driver.name),
        "loadavg_at_start": [float(v) for v in loadavg],
        "python_loop_s": python_loop_seconds(),
    }


def python_loop_seconds() -> float:
    """Seconds for 10 million additions in a pure-Python loop (best of three runs of 2 million,
    scaled): a yardstick of this machine's speed at the time of the run (the same host can be
    several times slower from one hour to the next), so that the absolute CPU figures of two runs
    can be compared."""
    best = float("inf")
    for _ in range(3):
        start, total = time.perf_counter(), 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best * 5, 3)


def envoy_version() -> str:
    try:
        out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError, RuntimeError):
        return "unknown"
    # "<path>/envoy  version: 9e55.../1.40.0/Clean/RELEASE/BoringSSL"
    words = out.split()
    if "version:" in words and words.index("version:") + 1 < len(words):
        build = words[words.index("version:") + 1].split("/")
        return build[1] if len(build) > 1 else build[0]
    return out.strip() or "unknown"


def tool_version(name: str) -> str:
    if name == "python":
        return f"bench.loadgen (Python {platform.python_version()})"
    flag = {"wrk": "--version", "h2load": "--version"}[name]
    try:
        out = subprocess.run([name, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return name
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0].strip() if text else name


def run_bench(settings: Settings, progress: Progress) -> dict[str, Any]:
    """The whole run: environment up, every case, half load, soak; the results as a dict."""
    started = time.time()
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings) | {"cases": list(settings.cases)}}
    with environment(settings, progress) as (plain, gateway, processes):
        bench = Bench(settings, progress, processes)
        results["machine"] = machine_facts(bench.driver)
        results["cases"] = []
        for index, name in enumerate(settings.cases, 1):
            results["cases"].append(bench.run_case(CASES_BY_NAME[name], plain, gateway, index, len(settings.cases)))
        main = next((c for c in results["cases"] if c["name"] == MAIN_CASE), None)
        if settings.half_load and main is not None:
            results["half_load"] = bench.half_load(main, plain, gateway)
        if settings.soak_requests > 0:
            results["soak"] = bench.soak(gateway)
        with open("/proc/loadavg") as f:
            results["machine"]["loadavg_at_end"] = [float(v) for v in f.read().split()[:3]]
    results["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    results["elapsed_s"] = round(time.time() - started, 1)
    return results
