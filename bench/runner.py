"""Drive the cases against every target and sample CPU and memory: the bench's measurements.

The processes come from ``bench.environment``: plain Envoy, the gateway on the default decision
path (``hop``) and, unless ``--paths hop``, the gateway on the ``ext_proc`` path, with a fake
provider for streams and an upstream Envoy with canned answers for everything else. Per case every
target, plain Envoy first, gets: one checked request (status, response shape, and for canned
answers the canned text), a warm-up, then the measured window. Loads never overlap. The result is
a plain dict (see ``bench.report`` for what is derived from it) so that it can be written as JSON
as is.

A cached case (``Case.pool``) sends its pool of requests in turn on both sides and counts the
gateway's ``x-ccr-cache`` answers (hit, miss, bypass) in the load generator, for the warm-up (the
cold misses) and for the measured window apart. Its check also waits for the first request's
answer to come back as a hit, the same bytes. The ext_proc path is not run for it: the response
cache rides the decision hop, and that path never looks it up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procfs
from bench.baseline import DIRECT_ANSWER_TEXT
from bench.cache_report import CACHE_ANSWERS_BEFORE
from bench.environment import (
    BenchError,
    Processes,
    Progress,
    Target,
    environment,
    envoy_binary,
    http,
    http_exchange,
)
from bench.load import Driver, LoadResult, LoadSpec, PythonLoad, pick_driver
from bench.report import HOP_CALLS
from bench.targets import GATEWAY, GATEWAY_EXTPROC, TARGET_BY_DECISION_PATH
from bench.workloads import CASES_BY_NAME, MAIN_CASE, Case
from ccr.v1.contract import CACHE_HEADER  # x-ccr-cache: hit, miss or bypass
from extproc.translate.base import Api

__all__ = ["DECISION_PATHS", "DEFAULT_PATHS", "BenchError", "Settings", "run_bench"]

EXTPROC_STATS = ("stream_msgs_sent", "stream_msgs_received", "streams_started")
DECISION_PATHS = tuple(TARGET_BY_DECISION_PATH)  # the policy's listener.decision values, hop (the default) first
DEFAULT_PATHS = ("hop", "ext_proc")  # the hop variants on request: a third gateway costs a third of the run
# How long a cached case's check waits for its first answer to be found in the cache (it is stored
# asynchronously, by the worker that decided: the next request may go to another worker).
CACHE_CHECK_S = 10.0
SKIPPED_FOR_CACHE = {GATEWAY_EXTPROC: "the response cache rides the decision hop: the ext_proc path never looks it up"}


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
    workers: int = 0  # ext_proc worker processes per gateway (0: ccr-gateway up's default, one per core)
    paths: tuple[str, ...] = DEFAULT_PATHS  # a gateway per decision path; hop (the budget's) always


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
        stats_before = extproc_stats(target.admin) if target.is_gateway else {}
        usage_before = target.components.snapshot()
        busy_before, wall_before = machine_busy_s(), time.monotonic()
        load, loadgen_cpu = self._drive(driver, spec, label, workdir)
        wall = time.monotonic() - wall_before
        busy = machine_busy_s() - busy_before
        usage_after = target.components.snapshot()
        stats_after = extproc_stats(target.admin) if target.is_gateway else {}
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
            # CPU used by processes that are not part of this measurement (other work on the machine,
            # the other targets' idle processes included).
            "other_cpu_pct": round(max(0.0, busy - sum(cpu.values())) * 100 / (wall * ncpu), 1),
            "warnings": [],
        }
        if target.is_gateway:
            window["decision"] = target.decision
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

    def spec(self, target: Target, case: Case, bodies: dict[str, tuple[Path, ...]], **overrides: Any) -> LoadSpec:
        """Plain Envoy gets the upstream request (``baseline``), every gateway the client's (``client``);
        a gateway that requires keys gets the bench's virtual key in ``x-api-key`` in place of the
        client's provider key (the same header: only its value differs from the other gateways').
        A cached case counts ``x-ccr-cache`` on both sides: the same work for the load generator."""
        plain = not target.is_gateway
        settings = self.settings
        headers = case.baseline_headers() if plain else case.client_headers()
        if target.api_key:
            headers["x-api-key"] = target.api_key
        values: dict[str, Any] = {
            "url": target.url + (case.baseline_path() if plain else case.client_path()),
            "body_paths": bodies["baseline" if plain else "client"],
            "headers": headers,
            "duration_s": settings.duration_s,
            "connections": settings.connections,
            "threads": settings.threads,
            "count_header": CACHE_HEADER if case.cached else "",
        }
        return LoadSpec(**(values | overrides))

    def write_bodies(self, case: Case) -> dict[str, tuple[Path, ...]]:
        """Each side's bodies in files, in the order they are sent: one, or a cached case's pool."""
        bodies = {}
        for kind, contents in (("baseline", case.baseline_bodies()), ("client", case.client_bodies())):
            paths = []
            for index, body in enumerate(contents):
                path = self.workdir / (f"{case.name}.{kind}.json" if index == 0 else f"{case.name}.{kind}.{index}.json")
                path.write_bytes(body)
                paths.append(path)
            bodies[kind] = tuple(paths)
        return bodies

    def check(self, target: Target, case: Case, bodies: dict[str, tuple[Path, ...]]) -> dict[str, Any]:
        """One request before the load: right status and response shape (and, from the upstream
        Envoy, its canned text: the request went where the case says); counts stream events. For a
        cached case on a gateway, also the cache's answers to the check (``check_cache``)."""
        spec = self.spec(target, case, bodies)
        status, headers, body = http_exchange("POST", spec.url, spec.body_path.read_bytes(), spec.headers, timeout=60)
        where = f"{case.name} via {target.name}"
        self.check_answer(where, target, case, status, body)
        if target.api_key:  # the key is what lets the request through: without it, refused
            anonymous = spec.headers | {"x-api-key": case.client_headers()["x-api-key"]}
            refused, _ = http("POST", spec.url, spec.body_path.read_bytes(), anonymous, timeout=60)
            if refused != 401:
                raise BenchError(f"{where}: keys are required, yet a request without one got HTTP {refused}")
        events = sum(1 for line in body.splitlines() if line.startswith(b"data:")) if case.stream else 0
        checked: dict[str, Any] = {"response_bytes": len(body), "sse_events": events}
        if case.cached and target.is_gateway:
            checked["cache_answers"] = self.check_cache(where, target, case, spec, headers.get(CACHE_HEADER), body)
        return checked

    def check_answer(self, where: str, target: Target, case: Case, status: int, body: bytes) -> None:
        if status != 200:
            raise BenchError(f"{where}: HTTP {status}: {body[:500]!r}")
        # Plain Envoy returns the provider's answer as is; a gateway answers in the client's format.
        shape = (
            case.client_api
            if target.is_gateway
            else (Api.OPENAI if case.translated and not case.from_other_client else Api.ANTHROPIC)
        )
        openai = shape is Api.OPENAI
        if case.stream:
            end = b"data: [DONE]" if openai else b"event: message_stop"
            if end not in body:
                raise BenchError(f"{where}: stream did not end with {end!r}: {body[-300:]!r}")
        else:
            text = answer_text(body, openai) if shape is not Api.RESPONSES else responses_text(body)
            if text is None:
                raise BenchError(f"{where}: unexpected response {body[:300]!r}")
            if case.direct and text != DIRECT_ANSWER_TEXT:
                raise BenchError(f"{where}: not the upstream Envoy's canned answer: {text[:200]!r}")

    def check_cache(
        self, where: str, target: Target, case: Case, spec: LoadSpec, first: str | None, first_body: bytes
    ) -> dict[str, int]:
        """The cache is on for the case (the first answer says miss or hit, not bypass), and the same
        request comes back as a hit within ``CACHE_CHECK_S``: a whole answer byte for byte, a stream
        replayed complete. The answers' ``x-ccr-cache`` counts (they were cache lookups too)."""
        if first not in ("miss", "hit"):
            raise BenchError(f"{where}: {CACHE_HEADER}: {first!r} on the first answer, not miss or hit")
        counts = {first: 1}
        deadline = time.monotonic() + CACHE_CHECK_S
        while first != "hit":
            if time.monotonic() > deadline:
                raise BenchError(f"{where}: the same request was never a cache hit within {CACHE_CHECK_S:g} s")
            time.sleep(0.05)
            status, headers, body = http_exchange("POST", spec.url, spec.body_path.read_bytes(), spec.headers, 60)
            self.check_answer(where, target, case, status, body)
            first = headers.get(CACHE_HEADER) or ""
            counts[first] = counts.get(first, 0) + 1
            if first == "hit" and not case.stream and body != first_body:
                raise BenchError(f"{where}: a cache hit that is not the answer stored: {body[:300]!r}")
        return counts

    def run_case(self, case: Case, targets: list[Target], index: int, total: int) -> dict[str, Any]:
        bodies = self.write_bodies(case)
        record: dict[str, Any] = {
            "name": case.name,
            "description": case.description,
            "translated": case.translated,
            "stream": case.stream,
            "upstream": "upstream Envoy" if case.direct else "fake provider",
            "chunks": case.chunks,
            "chunk_gap_ms": case.chunk_gap_ms,
            "client_body_bytes": bodies["client"][0].stat().st_size,
            "upstream_body_bytes": bodies["baseline"][0].stat().st_size,
        }
        # wrk abandons the requests in flight when its time is up: with requests of about a second
        # (a paced stream) that leaves up to one partial request per connection counted in the CPU
        # and message totals but not in the requests. The Python generator lets them finish.
        # A pool of bodies and the header count need a driver that has both (h2load has neither).
        paced, pooled = case.chunk_gap_ms > 0, case.cached and not self.driver.pools_bodies
        driver = PythonLoad() if paced or pooled else self.driver
        record["load_generator"] = driver.name
        if case.cached:
            record["pool"] = case.pool
            skipped = {t.name: SKIPPED_FOR_CACHE[t.name] for t in targets if t.name in SKIPPED_FOR_CACHE}
            targets = [target for target in targets if target.name not in skipped]
            record["skipped_targets"] = skipped
        for target in targets:
            label = f"[{index}/{total}] {case.name} via {target.name}"
            check = self.check(target, case, bodies)
            before = dict(check.get("cache_answers", {}))  # what the cache answered before the window
            if not target.is_gateway:
                # Plain Envoy returns the provider's stream unchanged: these are the upstream events.
                record["upstream_sse_events"] = check["sse_events"]
                record["upstream_response_bytes"] = check["response_bytes"]
            elif target.name == GATEWAY:  # both paths answer alike; the default path's figures
                record["client_sse_events"] = check["sse_events"]
                record["client_response_bytes"] = check["response_bytes"]
            if self.settings.warmup_s > 0:
                self.progress(f"{label}: warm-up {self.settings.warmup_s:g} s")
                warmup, _ = self._drive(
                    driver,
                    self.spec(target, case, bodies, duration_s=self.settings.warmup_s),
                    f"{label} warm-up",
                    self.workdir / f"{case.name}-{target.name}-warmup",
                )
                for value, count in (warmup.header_counts or {}).items():
                    before[value] = before.get(value, 0) + count
            self.progress(f"{label}: measuring {self.settings.duration_s:g} s")
            record[target.name] = self.measure(target, self.spec(target, case, bodies), label, driver)
            load = record[target.name]["load"]
            cached = ""
            if case.cached and target.is_gateway:
                record[target.name][CACHE_ANSWERS_BEFORE] = before
                counts = load.get("header_counts", {})
                cached = f", {CACHE_HEADER}: " + ", ".join(f"{v or '(none)'} {n}" for v, n in sorted(counts.items()))
            self.progress(
                f"{label}: {load['rps']:.0f} req/s, p99 {load['latency_ms']['p99']:.1f} ms, "
                f"{sum(load['errors'].values())} errors{cached}"
            )
        return record

    def half_load(self, main: dict[str, Any], targets: list[Target]) -> dict[str, Any]:
        """The main case again on every target, open loop, at half the (hop) gateway's measured maximum."""
        case = CASES_BY_NAME[MAIN_CASE]
        bodies = self.write_bodies(case)
        rate = max(1.0, round(main[GATEWAY]["load"]["rps"] / 2, 1))
        record: dict[str, Any] = {"case": case.name, "rate": rate, "generator": "python open loop (Poisson arrivals)"}
        for target in targets:
            label = f"[half load] {case.name} via {target.name} at {rate:g} req/s"
            self.progress(f"{label}: measuring {self.settings.duration_s:g} s")
            # The same seed on every target: the same arrival times.
            spec = self.spec(target, case, bodies, rate=rate, connections=self.settings.connections, seed=7)
            record[target.name] = self.measure(target, spec, label, driver=PythonLoad())
            load = record[target.name]["load"]
            self.progress(f"{label}: p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms")
        return record

    def soak(self, gateway: Target) -> dict[str, Any]:
        """The main case through the gateway until ``soak_requests`` are done; RSS before and after."""
        case = CASES_BY_NAME[MAIN_CASE]
        bodies = self.write_bodies(case)
        target_requests = self.settings.soak_requests
        self.progress(f"[soak] warm-up {max(self.settings.warmup_s, 2):g} s")
        self._drive(
            self.driver,
            self.spec(gateway, case, bodies, duration_s=max(self.settings.warmup_s, 2)),
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
                self.driver, self.spec(gateway, case, bodies, duration_s=window), "[soak]", self.workdir / "soak"
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


def answer_text(body: bytes, openai: bool) -> str | None:
    """The text of a whole (non-streamed) answer: an OpenAI chat.completion's first choice, or an
    Anthropic message's first text block; None when the body has neither shape."""
    try:
        parsed = json.loads(body)
        if openai:
            choice = parsed["choices"][0]
            return choice["message"]["content"] if choice.get("finish_reason") else None
        if parsed.get("type") != "message" or parsed.get("role") != "assistant":
            return None
        return next(block["text"] for block in parsed["content"] if block.get("type") == "text")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, StopIteration):
        return None


def responses_text(body: bytes) -> str | None:
    """The text of a whole Responses answer: its first message's output_text; None otherwise."""
    try:
        parsed = json.loads(body)
        if parsed.get("object") != "response" or parsed.get("status") != "completed":
            return None
        message = next(item for item in parsed["output"] if item.get("type") == "message")
        return next(part["text"] for part in message["content"] if part.get("type") == "output_text")
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None


def run_bench(settings: Settings, progress: Progress) -> dict[str, Any]:
    """The whole run: environment up, every case on every target, half load, soak; the results as a dict."""
    started = time.time()
    results: dict[str, Any] = {
        "settings": dataclasses.asdict(settings) | {"cases": list(settings.cases), "paths": list(settings.paths)}
    }
    with environment(
        progress,
        decision_paths=settings.paths,
        workers=settings.workers,
        startup_timeout_s=settings.startup_timeout_s,
        keep_workdir=settings.keep_workdir,
    ) as env:
        bench = Bench(settings, progress, env.processes)
        targets = env.targets
        results["targets"] = [target.name for target in targets]
        results["at_rest"] = env.at_rest
        results["machine"] = machine_facts(bench.driver)
        results["cases"] = []
        for index, name in enumerate(settings.cases, 1):
            results["cases"].append(bench.run_case(CASES_BY_NAME[name], targets, index, len(settings.cases)))
        main = next((c for c in results["cases"] if c["name"] == MAIN_CASE), None)
        if settings.half_load and main is not None:
            results["half_load"] = bench.half_load(main, targets)
        if settings.soak_requests > 0:
            results["soak"] = bench.soak(next(g for g in env.gateways if g.name == GATEWAY))  # the hop path only
        with open("/proc/loadavg") as f:
            results["machine"]["loadavg_at_end"] = [float(v) for v in f.read().split()[:3]]
    results["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    results["elapsed_s"] = round(time.time() - started, 1)
    return results
