"""`ccr-gateway bench --mcp`: tools/call through the gateway against the upstream MCP server directly,
in the same run (issue 23's performance lines).

Started here, stopped in reverse order on exit (also on Ctrl-C or an error):

- the example MCP server, ``python -m fake_provider.mcp_servers http --port 0 --json-response``
  (the official SDK's low-level server on uvicorn; ``--mcp-sse``: it answers every POST with an
  SSE stream instead). JSON by default because that is what the gateway answers a request whose
  only upstream message is its answer: with JSON on both sides the two targets send and parse the
  same kind of bytes, and the difference is the gateway's;
- one gateway, ``ccr-gateway up`` on the hop decision path with ``mcp:`` naming that server
  (``example``; its api and egress on free ports), no keys required (the anonymous tenant ``-``
  is granted the server), usage ledger and audit log on as a deployment has them (in the work
  dir; ``--mcp-no-audit``: no audit log, to see what an entry per tool call costs), ``--admin-api off``. The policy needs a provider: one that nothing calls.

The way through the gateway: client -> Envoy listener -> the decision hop (ext_proc worker; the
Lua filter reuses its decision on the caller for ``mcp.decision_reuse``, the default 2 s, so most
calls skip it) -> the MCP service (``ccr-gateway mcp-gateway``) -> Envoy's egress listener -> the
server.

Then, measured by ``bench.mcp_load`` (its own process, raw HTTP/1.1, no SDK): ``tools/call`` of
``echo`` at ``--mcp-rate`` calls/s, open loop, ``--duration`` s per target, cut into
``--mcp-rounds`` rounds that alternate the targets (direct, gateway, gateway, direct, ...), so a
machine that gets busier or quieter meanwhile weighs on both alike; each round warms up first. CPU
of every component is read from /proc around each round and summed per target. Then the cost of a
new session (initialize + notifications/initialized + tools/list, and the first tools/call after
it), ``--mcp-sessions`` sessions per target, alternating the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import mcp_report, procfs
from bench.environment import (
    BenchError,
    Processes,
    Progress,
    Started,
    free_port,
    gateway_components,
    http,
    wait_for,
)
from bench.load import LoadError, PythonLoad
from bench.mcp_load import read_samples
from bench.runner import machine_busy_s, machine_facts

SERVER = "example"  # the server's name in the policy: the gateway calls its tools example__<tool>
TOOL = "echo"
DIRECT, GATEWAY = "direct", "gateway"
TARGETS = (DIRECT, GATEWAY)
QUICK = {"duration_s": 2.0, "warmup_s": 0.5, "rounds": 2, "sessions": 6}
ROLES = ("envoy", "ext_proc", "mcp_service", "control_plane", "upstream")


@dataclass(frozen=True, slots=True)
class McpBenchSettings:
    rate: float = 200.0  # tools/call per second, open loop
    duration_s: float = 15.0  # per target, over all rounds
    warmup_s: float = 2.0  # at the start of every round
    rounds: int = 3  # per target; the targets alternate round by round
    connections: int = 8  # warm keep-alive connections per round
    sessions: int = 50  # new sessions timed per target
    sse: bool = False  # the upstream answers SSE (default JSON: see the module docstring)
    audit: bool = True  # the MCP service's audit log (an entry per tool call); False: CCR_AUDIT=off
    ext_proc_workers: int = 0  # `up --workers` (0: one per core)
    startup_timeout_s: float = 60.0
    keep_workdir: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "MCP gateway (--mcp)",
        "tools/call through the gateway against the upstream MCP server directly, and the cost of a new "
        "session; uses --duration (per target), --warmup (per round), --workers, --json, --write-docs, "
        f"--keep-workdir and --quick ({QUICK['duration_s']:g} s per target, {QUICK['sessions']} sessions)",
    )
    group.add_argument("--mcp", action="store_true", help="run the MCP gateway benchmark instead of the cases")
    group.add_argument("--mcp-rate", type=float, default=200.0, help="tools/call per second, open loop (200)")
    group.add_argument("--mcp-rounds", type=int, default=3, help="rounds per target, alternating the targets (3)")
    group.add_argument("--mcp-connections", type=int, default=8, help="warm connections of the load (8)")
    group.add_argument("--mcp-sessions", type=int, default=0, help="new sessions timed per target (default 50)")
    group.add_argument("--mcp-sse", action="store_true", help="the upstream server answers SSE, not JSON")
    group.add_argument(
        "--mcp-no-audit", action="store_true", help="the gateway without its audit log (CCR_AUDIT=off): what it costs"
    )


def settings_from_args(args: argparse.Namespace) -> McpBenchSettings:
    quick = args.quick
    settings = McpBenchSettings(
        rate=args.mcp_rate,
        duration_s=QUICK["duration_s"] if quick else args.duration,
        warmup_s=min(args.warmup, QUICK["warmup_s"]) if quick else args.warmup,
        rounds=QUICK["rounds"] if quick else args.mcp_rounds,
        connections=args.mcp_connections,
        sessions=args.mcp_sessions or (QUICK["sessions"] if quick else 50),
        sse=args.mcp_sse,
        audit=not args.mcp_no_audit,
        ext_proc_workers=args.workers,
        keep_workdir=args.keep_workdir,
    )
    if settings.rate <= 0 or settings.duration_s <= 0 or settings.warmup_s < 0:
        raise BenchError("--mcp-rate and --duration must be positive, --warmup 0 or more")
    if min(settings.rounds, settings.connections, settings.sessions) < 1:
        raise BenchError("--mcp-rounds, --mcp-connections and --mcp-sessions are at least 1")
    return settings


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options at their defaults left out)."""
    argv = ["ccr-gateway", "bench", "--mcp"] + (["--quick"] if args.quick else [])
    for flag, value, default in (
        ("--mcp-rate", args.mcp_rate, 200.0),
        ("--mcp-rounds", args.mcp_rounds, 3),
        ("--mcp-connections", args.mcp_connections, 8),
        ("--mcp-sessions", args.mcp_sessions, 0),
        ("--duration", args.duration, 15.0),
        ("--warmup", args.warmup, 2.0),
        ("--workers", args.workers, 0),
    ):
        if value != default:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.mcp_sse:
        argv.append("--mcp-sse")
    if args.mcp_no_audit:
        argv.append("--mcp-no-audit")
    if args.json:
        argv += ["--json", str(args.json)]
    if args.write_docs:
        argv += ["--write-docs", str(args.write_docs)]
    return shlex.join(argv)


# --- processes ---------------------------------------------------------------------------------


@dataclass
class McpEnvironment:
    urls: dict[str, str]  # target -> its MCP endpoint
    tools: dict[str, str]  # target -> the tool's name there
    processes: Processes
    components: procfs.Components
    at_rest: dict[str, float]  # RSS MB per component, before any load


def gateway_policy(listen_port: int, upstream_url: str, api_port: int, egress_port: int) -> dict[str, Any]:
    idle = f"http://127.0.0.1:{free_port()}/v1"  # `up` wants a provider; this one is never called
    return {
        "listener": {"address": "127.0.0.1", "port": listen_port, "decision": "hop"},
        "providers": [
            {
                "name": "bench-idle",
                "api": "openai",
                "base_url": idle,
                "api_key_env": "CCR_BENCH_OPENAI_KEY",
                "models": ["bench-idle"],
            }
        ],
        "mcp": {
            "api": f"127.0.0.1:{api_port}",
            "egress": f"127.0.0.1:{egress_port}",
            "servers": [{"name": SERVER, "url": upstream_url}],
            "grants": [{"tenant": "-", "allow": [SERVER]}],  # the anonymous tenant: no keys in this run
        },
    }


def _child_env(workdir: Path, audit: bool = True) -> dict[str, str]:
    """No caller settings for keys or the audit log: the ledger, the audit log and its key go in the work dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_AUTH_", "CCR_AUDIT"))}
    env |= {"CCR_BENCH_OPENAI_KEY": "sk-bench", "XDG_DATA_HOME": str(workdir / "data")}
    return env if audit else env | {"CCR_AUDIT": "off"}


def _discover(up: Started, upstream: Started):
    """The gateway's processes by role, the MCP service apart from the control plane (gateway_
    components counts every other child of ``up`` there), beside the upstream server."""

    def discover() -> dict[str, list[int]]:
        groups = gateway_components(up.process.pid, {"upstream": [upstream.process.pid]})
        groups["mcp_service"] = []
        for pid in list(groups["control_plane"]):
            if "mcp-gateway" in procfs.read_cmdline(pid):
                groups["control_plane"].remove(pid)
                groups["mcp_service"].append(pid)
        for role in ("envoy", "ext_proc", "mcp_service", "control_plane"):
            for pid in groups[role]:
                if pid != up.process.pid and pid not in up.known_children and (stat := procfs.read_stat(pid)):
                    up.known_children[pid] = stat.start_ticks
        return groups

    return discover


def _upstream_url(started: Started, timeout: float, processes: Processes) -> str:
    found: list[str] = []

    def announced() -> bool:
        for line in started.log.read_text(errors="replace").splitlines():
            if " listening on " in line:
                found.append(line.rsplit(" ", 1)[1])
                return True
        return False

    wait_for(announced, timeout, "the example MCP server", processes)
    return found[0]


def _initializes(url: str) -> bool:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        }
    ).encode()
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    return http("POST", url, body, headers, timeout=2)[0] == 200


@contextlib.contextmanager
def mcp_environment(settings: McpBenchSettings, progress: Progress) -> Iterator[McpEnvironment]:
    workdir = Path(tempfile.mkdtemp(prefix="ccr-bench-mcp-"))
    processes = Processes(workdir)
    env = _child_env(workdir, settings.audit)
    try:
        argv = [sys.executable, "-m", "fake_provider.mcp_servers", "http", "--port", "0", "--name", SERVER]
        progress(f"starting the example MCP server ({'SSE' if settings.sse else 'JSON'} answers)")
        upstream = processes.start("mcp-server", argv + ([] if settings.sse else ["--json-response"]), env=env)
        upstream_url = _upstream_url(upstream, 60, processes)

        port, admin, xds, api, egress = (free_port() for _ in range(5))
        policy = workdir / "gateway-policy.yaml"
        policy.write_text(yaml.safe_dump(gateway_policy(port, upstream_url, api, egress), sort_keys=False))
        progress(f"starting the gateway (ccr-gateway up, decision: hop) on 127.0.0.1:{port}, MCP server {upstream_url}")
        python = [sys.executable, "-m", "ccr_gateway.cli"]
        argv = [*python, "up", "-c", str(policy), "--admin-port", str(admin), "--xds", f"127.0.0.1:{xds}"]
        argv += ["--metrics-port", "0", "--timeout", f"{settings.startup_timeout_s:g}", "--admin-api", "off"]
        argv += ["--workers", str(settings.ext_proc_workers)] if settings.ext_proc_workers else []
        up = processes.start("gateway", argv, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: http("GET", f"{url}/v1/models", timeout=1)[0] == 200,
            settings.startup_timeout_s,
            "the gateway",
            processes,
        )
        # `up` is ready before its MCP service has the policy: wait for an initialize to go through.
        wait_for(
            lambda: _initializes(f"{url}/mcp"), settings.startup_timeout_s, "the gateway's MCP endpoint", processes
        )
        components = procfs.Components(_discover(up, upstream))
        found = components.pids()
        missing = [role for role in ("envoy", "ext_proc", "mcp_service") if not found[role]]
        if missing:
            raise BenchError(f"gateway processes not found under pid {up.process.pid}: {', '.join(missing)}")
        progress("gateway processes: " + ", ".join(f"{role} {found[role]}" for role in ROLES))
        at_rest = {role: round(u.rss_kb / 1024, 1) for role, u in components.snapshot().items()}
        yield McpEnvironment(
            {DIRECT: upstream_url, GATEWAY: f"{url}/mcp"},
            {DIRECT: TOOL, GATEWAY: f"{SERVER}__{TOOL}"},
            processes,
            components,
            at_rest,
        )
    finally:
        progress("stopping everything the bench started")
        processes.stop_all()
        if settings.keep_workdir:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- measuring ---------------------------------------------------------------------------------


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(env: McpEnvironment, target: str, name: str, extra: list[str], timeout: float) -> dict[str, Any]:
    """One ``bench.mcp_load`` process to its end; its JSON line plus its samples."""
    workdir = env.processes.workdir
    samples, log = workdir / f"{name}.samples", workdir / f"{name}.log"
    argv = [sys.executable, "-m", "bench.mcp_load", env.urls[target], "--samples", str(samples)]
    argv += ["--tool", env.tools[target], *extra]
    source_root = str(Path(__file__).resolve().parent.parent)  # importable whether or not installed
    child = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as err:
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, cwd=workdir, env=child, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LoadError(f"the MCP load ({name}) did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise LoadError(f"the MCP load ({name}) failed ({done.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result["samples"] = read_samples(str(samples))
    return result


class Window:
    """CPU seconds per component, of the load generator (this process's waited children) and of
    the rest of the machine (``other``), over one round; added up per target."""

    def __init__(self, env: McpEnvironment) -> None:
        self.components = env.components
        self.before = env.components.snapshot()
        self.children = _children_cpu_s()
        self.busy = machine_busy_s()
        self.started = time.monotonic()

    def close(self) -> dict[str, float]:
        cpu = procfs.cpu_delta(self.before, self.components.snapshot())
        cpu["loadgen"] = _children_cpu_s() - self.children
        cpu["other"] = max(0.0, machine_busy_s() - self.busy - sum(cpu.values()))
        return cpu | {"wall_s": time.monotonic() - self.started}


def _order(round_index: int) -> tuple[str, str]:
    """direct, gateway / gateway, direct / ...: each target first in every other round."""
    return (DIRECT, GATEWAY) if round_index % 2 == 0 else (GATEWAY, DIRECT)


def _check(env: McpEnvironment) -> None:
    """One session and one call on each target before anything is measured."""
    for target in TARGETS:
        result = run_load(env, target, f"check-{target}", ["--sessions", "1"], 60)
        if result["errors"]:
            raise BenchError(f"{target}: the first session failed: {result['first_errors']}")


def run_calls(env: McpEnvironment, settings: McpBenchSettings, progress: Progress) -> dict[str, Any]:
    per_round = settings.duration_s / settings.rounds
    samples: dict[str, list[tuple[float, float, int]]] = {t: [] for t in TARGETS}
    cpu: dict[str, dict[str, float]] = {t: {} for t in TARGETS}
    loads: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for index in range(settings.rounds):
        for target in _order(index):
            progress(
                f"round {index + 1}/{settings.rounds}: {target}, {settings.rate:g} calls/s for {per_round:g} s "
                f"(after {settings.warmup_s:g} s of warm-up)"
            )
            extra = ["--rate", f"{settings.rate:g}", "--duration", f"{per_round:g}"]
            extra += ["--warmup", f"{settings.warmup_s:g}", "--connections", str(settings.connections)]
            extra += ["--seed", str(7 + index)]  # the same arrivals for both targets within a round
            window = Window(env)
            result = run_load(env, target, f"calls-{target}-{index + 1}", extra, per_round + settings.warmup_s + 120)
            for key, value in window.close().items():
                cpu[target][key] = cpu[target].get(key, 0.0) + value
            samples[target] += result.pop("samples")
            loads[target].append(result)
            env.processes.check_alive()
    return {
        target: mcp_report.call_stats(samples[target], loads[target], cpu[target], per_round * settings.rounds)
        for target in TARGETS
    }


def run_sessions(env: McpEnvironment, settings: McpBenchSettings, progress: Progress) -> dict[str, Any]:
    samples: dict[str, list[tuple[float, float, int]]] = {t: [] for t in TARGETS}
    errors: dict[str, dict[str, int]] = {t: {} for t in TARGETS}
    first_errors: dict[str, list[str]] = {t: [] for t in TARGETS}
    rounds = min(settings.rounds, settings.sessions)
    for index in range(rounds):
        count = settings.sessions // rounds + (1 if index < settings.sessions % rounds else 0)
        for target in _order(index):
            result = run_load(env, target, f"sessions-{target}-{index + 1}", ["--sessions", str(count)], 300)
            samples[target] += result["samples"]
            for kind, n in result["errors"].items():
                errors[target][kind] = errors[target].get(kind, 0) + n
            first_errors[target] += result["first_errors"]
    progress(f"new sessions: {settings.sessions} per target, one after another, alternating in {rounds} rounds")
    return {
        target: mcp_report.session_stats(samples[target], errors[target], first_errors[target]) for target in TARGETS
    }


def run_mcp(settings: McpBenchSettings, progress: Progress) -> dict[str, Any]:
    started = time.time()
    result: dict[str, Any] = {
        "kind": "mcp",
        "settings": asdict(settings),
        "upstream": {"server": "fake_provider.mcp_servers http", "answers": "SSE" if settings.sse else "JSON"},
    }
    with mcp_environment(settings, progress) as env:
        result["machine"] = machine_facts(PythonLoad())
        result["at_rest"] = {"rss_mb": env.at_rest}
        _check(env)
        result["calls"] = run_calls(env, settings, progress)
        result["sessions"] = run_sessions(env, settings, progress)
        with open("/proc/loadavg") as f:
            result["machine"]["loadavg_at_end"] = [float(v) for v in f.read().split()[:3]]
    result["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    result["elapsed_s"] = round(time.time() - started, 1)
    return result


def run(args: argparse.Namespace, progress: Progress) -> int:
    """``ccr-gateway bench --mcp``: exit 0 when the run completed (budget lines not met do not fail it)."""
    if args.from_json:  # run nothing: re-render an earlier run's --json
        try:
            earlier = json.loads(args.from_json.read_text(encoding="utf-8"))
            return _render(earlier, args, progress)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            progress(f"{args.from_json} is not a `bench --mcp --json` result: {type(exc).__name__}: {exc}")
            return 2
    try:
        settings = settings_from_args(args)
    except BenchError as exc:
        progress(str(exc))
        return 2
    try:
        result = run_mcp(settings, progress)
    except KeyboardInterrupt:
        progress("interrupted; everything it started has been stopped")
        return 130
    except (BenchError, LoadError) as exc:
        progress(f"failed: {exc}")
        return 1
    result["command"] = command_line(args)
    return _render(result, args, progress)


def _render(result: dict[str, Any], args: argparse.Namespace, progress: Progress) -> int:
    result = mcp_report.summarize(result)
    print(mcp_report.stdout_report(result), flush=True)
    if args.json:
        mcp_report.write_json(result, args.json)
        progress(f"wrote {args.json}")
    if args.write_docs:
        mcp_report.write_docs(result, args.write_docs)
        progress(f"wrote the MCP section of {args.write_docs}")
    return 0
