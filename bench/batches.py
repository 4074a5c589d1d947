"""`ccr-gateway bench --batches`: items/s per batch worker, and what a draining batch does to
interactive latency (issue 20).

Started here, stopped in reverse order on exit (also on Ctrl-C or an error):

- the bench's upstream Envoy (``bench.baseline``: canned answers), serving the OpenAI-format model
  ``bench-openai-direct`` that every request asks for;
- ``ccr-gateway batch-api`` on the store (a SQLite file in the work dir, or ``--batch-postgres``);
- one gateway, ``ccr-gateway up`` on the hop decision path with ``batches: {api: ...}`` and no keys
  required (the worker sends no key, and neither does the interactive load). One virtual key
  exists, made before the gateway starts, and only the batch's submission presents it: the batch
  belongs to that key's tenant (``bench``), as a real batch has an owner. The batch API listens on
  127.0.0.2, not 127.0.0.1: ``up`` starts a batch API and a worker of its own when the policy
  names 127.0.0.1 or localhost (unless ``--no-batch-services``), and this benchmark runs those
  itself, to choose their store, lanes and number;
- W ``ccr-gateway batch-worker`` processes sending through the gateway's listener: in-process lanes
  (one worker only: each process's lanes are its own), or RabbitMQ with ``--batch-amqp`` under a
  prefix of this run's own, deleted at the end.

Then two phases, the same interactive load in both (``bench.batch_load``: the ``translated-2k``
request at ``--batch-rate`` req/s, open loop): (A) alone for ``--duration`` s, after a warm-up;
(B) while a batch of ``--batch-items`` copies of that request, submitted through the gateway with
the official anthropic SDK, drains. The drain is the batch's ``created_at`` to ``ended_at``;
interactive requests scheduled inside it are phase B's numbers. The batch must end with every item
succeeded, each answer the upstream's canned text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bench import batch_report, procfs
from bench.baseline import DIRECT_ANSWER_TEXT, upstream_config, write_config
from bench.batch_load import LoadProcess
from bench.environment import (
    MAX_REQUEST_BYTES,
    BenchError,
    Processes,
    Progress,
    Started,
    create_bench_key,
    envoy_argv,
    free_port,
    gateway_components,
    http,
    http_exchange,
    wait_for,
)
from bench.load import LoadError, PythonLoad
from bench.runner import answer_text, machine_busy_s, machine_facts
from bench.workloads import CASES_BY_NAME, MAX_OUTPUT_TOKENS, OPENAI_DIRECT_MODEL

CASE = "translated-2k"  # the interactive request, and every item's params
BATCH_API_HOST = "127.0.0.2"  # not one of `up`'s local hosts: see the module docstring
POLL_S = 0.5  # how often the batch is retrieved while it drains (through the gateway, like a client)
QUICK = {"items": 200, "duration_s": 1.0, "warmup_s": 0.5}
ITEMS_METRIC = "ccr_batch_worker_items_total"
STALL_S = 60.0  # no item finished for this long: the batch is stuck, not slow


@dataclass(frozen=True, slots=True)
class BatchSettings:
    items: int = 2000
    workers: int = 1  # batch-worker processes
    concurrency: int = 16  # each worker's --concurrency
    rate: float = 50.0  # interactive req/s, open loop
    connections: int = 4  # warm connections of the interactive load
    duration_s: float = 15.0  # phase A
    warmup_s: float = 2.0
    ext_proc_workers: int = 0  # `up --workers` (0: one per core)
    postgres: str = ""
    amqp: str = ""
    drain_timeout_s: float = 900.0
    startup_timeout_s: float = 60.0
    keep_workdir: bool = False
    case: str = CASE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "message batches (--batches)",
        "items/s per batch worker and interactive latency while a batch drains; uses --duration (phase A), "
        "--warmup, --workers (ext_proc), --json, --write-docs, --keep-workdir and --quick "
        f"({QUICK['items']} items, {QUICK['duration_s']:g} s alone)",
    )
    group.add_argument("--batches", action="store_true", help="run the message-batches benchmark instead of the cases")
    group.add_argument("--batch-items", type=int, default=0, help="items in the batch (default 2000)")
    group.add_argument("--batch-workers", type=int, default=1, help="batch-worker processes (default 1)")
    group.add_argument("--batch-concurrency", type=int, default=16, help="items in flight per worker (16)")
    group.add_argument("--batch-rate", type=float, default=50.0, help="interactive requests/s, open loop (50)")
    group.add_argument("--batch-connections", type=int, default=4, help="warm interactive connections (4)")
    group.add_argument("--batch-postgres", metavar="DSN", default="", help="PostgreSQL batch store (default: SQLite)")
    group.add_argument(
        "--batch-amqp", metavar="URL", default="", help="RabbitMQ lanes (default: in-process; needed for >1 worker)"
    )


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    quick = args.quick
    settings = BatchSettings(
        items=args.batch_items or (QUICK["items"] if quick else 2000),
        workers=args.batch_workers,
        concurrency=args.batch_concurrency,
        rate=args.batch_rate,
        connections=args.batch_connections,
        duration_s=QUICK["duration_s"] if quick else args.duration,
        warmup_s=min(args.warmup, QUICK["warmup_s"]) if quick else args.warmup,
        ext_proc_workers=args.workers,
        postgres=args.batch_postgres,
        amqp=args.batch_amqp,
        keep_workdir=args.keep_workdir,
    )
    if min(settings.items, settings.workers, settings.concurrency, settings.connections) < 1:
        raise BenchError("--batch-items, --batch-workers, --batch-concurrency and --batch-connections are at least 1")
    if settings.rate <= 0 or settings.duration_s <= 0:
        raise BenchError("--batch-rate and --duration must be positive")
    if settings.workers > 1 and not settings.amqp:
        raise BenchError("--batch-workers above 1 needs --batch-amqp: in-process lanes belong to one process")
    return settings


def command_line(args: argparse.Namespace, settings: BatchSettings) -> str:
    """The command that reproduces this run (options at their defaults left out; DSNs redacted)."""
    argv = ["ccr-gateway", "bench", "--batches"] + (["--quick"] if args.quick else [])
    for flag, value, default in (
        ("--batch-items", args.batch_items, 0),
        ("--batch-workers", args.batch_workers, 1),
        ("--batch-concurrency", args.batch_concurrency, 16),
        ("--batch-rate", args.batch_rate, 50.0),
        ("--batch-connections", args.batch_connections, 4),
        ("--duration", args.duration, 15.0),
        ("--warmup", args.warmup, 2.0),
        ("--workers", args.workers, 0),
    ):
        if value != default:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if settings.postgres:
        argv += ["--batch-postgres", "postgresql://.../DB"]
    if settings.amqp:
        argv += ["--batch-amqp", "amqp://..."]
    if args.json:
        argv += ["--json", str(args.json)]
    if args.write_docs:
        argv += ["--write-docs", str(args.write_docs)]
    return shlex.join(argv)


# --- processes ---------------------------------------------------------------------------------


@dataclass
class BatchEnvironment:
    url: str  # the gateway's listener
    batch_key: str  # the virtual key the batch is submitted with (its tenant owns the batch)
    processes: Processes
    components: procfs.Components
    worker_metrics: list[str]  # each worker's /metrics URL
    amqp_prefix: str = ""
    at_rest: dict[str, Any] = field(default_factory=dict)


def gateway_policy(listen_port: int, upstream_port: int, batch_api: str, keys_db: Path) -> dict[str, Any]:
    """One OpenAI-format provider on the upstream Envoy, the batch API, keys not required (but
    the one in ``keys_db`` is honoured: the batch's owner)."""
    model = {"name": OPENAI_DIRECT_MODEL, "max_output_tokens": MAX_OUTPUT_TOKENS, "capabilities": ["tools"]}
    provider = {
        "name": "bench-openai-direct",
        "api": "openai",
        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
        "api_key_env": "CCR_BENCH_OPENAI_KEY",
        "models": [model],
    }
    return {
        "listener": {"address": "127.0.0.1", "port": listen_port, "decision": "hop"},
        "limits": {"max_request_bytes": MAX_REQUEST_BYTES},
        "providers": [provider],
        "batches": {"api": batch_api},
        "auth": {"required": False, "keys": {"sqlite": str(keys_db)}},
    }


def _child_env(workdir: Path) -> dict[str, str]:
    """No caller settings for keys, the batch store or the worker's key: the arguments say it all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_AUTH_", "CCR_BATCH_"))}
    env |= {"CCR_BENCH_OPENAI_KEY": "sk-bench", "XDG_DATA_HOME": str(workdir / "data")}
    return env


def local_servers(settings: BatchSettings) -> dict[str, int]:
    """PostgreSQL's and RabbitMQ's main process, when this run uses them on this machine (and may
    read their /proc entries): their CPU is the store's and the lanes' (the whole server's: any
    other work it does at the same time too), which would otherwise count as other processes'."""
    servers = {}
    for role, url, default in (("postgres", settings.postgres, 5432), ("rabbitmq", settings.amqp, 5672)):
        where = urlsplit(url) if url else None
        if where is not None and where.hostname in ("127.0.0.1", "localhost", "::1"):
            pids = procfs.listening_pids(where.port or default)
            if pids:
                servers[role] = pids[0]
    return servers


def _discover(up: Started, shared: dict[str, list[int]], servers: dict[str, int]):
    """The gateway's processes by role (remembered, so that ``stop_all`` can kill any left behind)
    beside the batch API, the workers, the upstream and the local servers with their children."""

    def discover() -> dict[str, list[int]]:
        groups = gateway_components(up.process.pid, shared)
        groups |= {role: [root, *procfs.descendants(root)] for role, root in servers.items()}
        for role in ("envoy", "ext_proc", "control_plane"):
            for pid in groups[role]:
                if pid != up.process.pid and pid not in up.known_children and (stat := procfs.read_stat(pid)):
                    up.known_children[pid] = stat.start_ticks
        return groups

    return discover


@contextlib.contextmanager
def batch_environment(settings: BatchSettings, progress: Progress) -> Iterator[BatchEnvironment]:
    workdir = Path(tempfile.mkdtemp(prefix="ccr-bench-batches-"))
    processes = Processes(workdir)
    python = [sys.executable, "-m", "ccr_gateway.cli"]
    env = _child_env(workdir)
    store = ["--postgres", settings.postgres] if settings.postgres else ["--sqlite", str(workdir / "batches.db")]
    prefix = f"ccr.bench.{uuid.uuid4().hex[:10]}." if settings.amqp else ""
    try:
        if settings.amqp:
            asyncio.run(_check_amqp(settings.amqp))
        upstream_port, upstream_admin = free_port(), free_port()
        config = write_config(
            workdir / "upstream-envoy.yaml",
            upstream_config(listen_port=upstream_port, admin_port=upstream_admin, max_request_bytes=MAX_REQUEST_BYTES),
        )
        progress(f"starting the upstream Envoy on 127.0.0.1:{upstream_port}")
        upstream = processes.start("upstream-envoy", envoy_argv(config))
        ready = f"http://127.0.0.1:{upstream_admin}/ready"
        wait_for(lambda: http("GET", ready, timeout=1)[0] == 200, 30, "the upstream Envoy", processes)

        api_address = f"{BATCH_API_HOST}:{free_port()}"
        progress(f"starting batch-api on {api_address} ({'PostgreSQL' if settings.postgres else 'SQLite'} store)")
        batch_api = processes.start("batch-api", [*python, "batch-api", "--listen", api_address, *store], env=env)
        healthz = f"http://{api_address}/healthz"
        wait_for(lambda: http("GET", healthz, timeout=1)[0] == 200, 30, "batch-api", processes)

        port, admin, xds = free_port(), free_port(), free_port()
        policy = workdir / "gateway-policy.yaml"
        keys_db = workdir / "keys.db"
        batch_key = create_bench_key(keys_db)
        policy.write_text(yaml.safe_dump(gateway_policy(port, upstream_port, api_address, keys_db), sort_keys=False))
        progress(f"starting the gateway (ccr-gateway up, decision: hop) on 127.0.0.1:{port}")
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

        workers, metrics = [], []
        lanes = ["--amqp", settings.amqp, "--amqp-prefix", prefix] if settings.amqp else []
        for index in range(settings.workers):
            metrics_port = free_port()
            argv = [*python, "batch-worker", "--gateway", url, "--concurrency", str(settings.concurrency)]
            argv += ["--metrics-port", str(metrics_port), *store, *lanes]
            workers.append(processes.start(f"batch-worker-{index + 1}", argv, env=env))
            metrics.append(f"http://127.0.0.1:{metrics_port}/metrics")
        for where in metrics:
            wait_for(lambda w=where: http("GET", w, timeout=1)[0] == 200, 30, f"the worker at {where}", processes)
        progress(f"{settings.workers} batch worker(s) up, {'RabbitMQ' if settings.amqp else 'in-process'} lanes")

        shared = {
            "batch_api": [batch_api.process.pid],
            "batch_worker": [w.process.pid for w in workers],
            "upstream": [upstream.process.pid],
        }
        components = procfs.Components(_discover(up, shared, local_servers(settings)))
        found = components.pids()
        missing = [role for role in ("envoy", "ext_proc") if not found[role]]
        if missing:
            raise BenchError(f"gateway processes not found under pid {up.process.pid}: {', '.join(missing)}")
        at_rest = {role: round(u.rss_kb / 1024, 1) for role, u in components.snapshot().items()}
        yield BatchEnvironment(url, batch_key, processes, components, metrics, prefix, {"rss_mb": at_rest})
    finally:
        progress("stopping everything the bench started")
        processes.stop_all()
        if prefix:
            with contextlib.suppress(Exception):
                asyncio.run(_delete_lanes(settings.amqp, prefix))
        if settings.keep_workdir:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _check_amqp(url: str) -> None:
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        raise BenchError(f"RabbitMQ not reachable at --batch-amqp: {exc}") from exc
    await connection.close()


async def _delete_lanes(url: str, prefix: str) -> None:
    """This run's queues and dead-letter exchange (the lanes' names under its prefix)."""
    import aio_pika

    from batches.lanes import BATCH, INTERACTIVE
    from batches.rabbit_lanes import LaneNames

    names = LaneNames(prefix)
    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        channel = await connection.channel()
        for lane in (INTERACTIVE, BATCH):
            await channel.queue_delete(names.queue(lane))
        await channel.queue_delete(names.dead_letter_queue)
        await channel.exchange_delete(names.dead_letter_exchange)


# --- measuring ---------------------------------------------------------------------------------


def interactive(env: BatchEnvironment, settings: BatchSettings, body: Path, name: str, duration_s: float):
    """The interactive load, started: awaited (phase A) or stopped (phase B)."""
    headers = CASES_BY_NAME[settings.case].client_headers()
    url = f"{env.url}/v1/messages"
    return LoadProcess(url, body, headers, settings.rate, settings.connections, duration_s, env.processes.workdir, name)


class PhaseCpu:
    """CPU of one phase: each component's, the load generator's (this process's waited children)
    and the rest of the machine's (``other``: % of all cores, work that is none of this run's)."""

    def __init__(self, env: BatchEnvironment) -> None:
        self.components = env.components
        self.before = env.components.snapshot()
        self.children = _children_cpu_s()
        self.busy = machine_busy_s()
        self.started = time.monotonic()

    def busy_pct(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        cpu = procfs.cpu_delta(self.before, self.components.snapshot())
        cpu["loadgen"] = _children_cpu_s() - self.children
        other = max(0.0, machine_busy_s() - self.busy - sum(cpu.values())) / (os.cpu_count() or 1)
        return {k: round(v * 100 / wall, 1) for k, v in cpu.items()} | {"other": round(other * 100 / wall, 1)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker_items(metrics_url: str) -> dict[str, float]:
    """A worker's ``ccr_batch_worker_items_total`` by result (succeeded, errored, retried, ...)."""
    status, body = http("GET", metrics_url, timeout=5)
    counts: dict[str, float] = {}
    if status != 200:
        return counts
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(ITEMS_METRIC + "{"):
            labels, _, value = line.rpartition(" ")
            result = labels.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = counts.get(result, 0) + float(value)
    return counts


def check_interactive(env: BatchEnvironment, settings: BatchSettings, body: bytes) -> None:
    headers = CASES_BY_NAME[settings.case].client_headers()
    status, _, answer = http_exchange("POST", f"{env.url}/v1/messages", body, headers, 60)
    if status != 200 or answer_text(answer, openai=False) != DIRECT_ANSWER_TEXT:
        raise BenchError(
            f"the interactive request did not get the upstream's canned answer: HTTP {status} {answer[:300]!r}"
        )


def run_phases(env: BatchEnvironment, settings: BatchSettings, progress: Progress) -> dict[str, Any]:
    import anthropic

    for name in ("anthropic", "httpx", "httpx2", "httpcore"):  # not a log line per poll on stderr
        logging.getLogger(name).setLevel(logging.WARNING)

    case = CASES_BY_NAME[settings.case]
    body = case.client_body()
    body_path = env.processes.workdir / f"{case.name}.json"
    body_path.write_bytes(body)
    check_interactive(env, settings, body)
    results: dict[str, Any] = {"interactive": {}, "cpu_busy_pct": {}, "warnings": []}
    running: list[LoadProcess] = []
    try:
        if settings.warmup_s > 0:
            progress(f"warm-up: {settings.rate:g} req/s for {settings.warmup_s:g} s")
            load = interactive(env, settings, body_path, "warmup", settings.warmup_s)
            running.append(load)
            load.wait(settings.warmup_s + 60)

        progress(f"phase A: interactive load alone, {settings.rate:g} req/s for {settings.duration_s:g} s")
        cpu = PhaseCpu(env)
        load = interactive(env, settings, body_path, "alone", settings.duration_s)
        running.append(load)
        samples = load.wait(settings.duration_s + 60)
        results["cpu_busy_pct"]["alone"] = cpu.busy_pct()
        first = min((at for at, _, _ in samples), default=cpu.started)
        alone = batch_report.window_stats(samples, first, first + settings.duration_s)
        results["interactive"]["alone"] = alone
        progress(f"phase A: p50 {alone['latency_ms']['p50']:.2f} ms, p99 {alone['latency_ms']['p99']:.2f} ms")

        params = json.loads(body)
        requests = [{"custom_id": f"item-{i:06d}", "params": params} for i in range(settings.items)]
        client = anthropic.Anthropic(base_url=env.url, api_key=env.batch_key, max_retries=0, timeout=600)
        progress(f"phase B: interactive load while {settings.items:,} items drain ({settings.workers} worker(s))")
        cpu = PhaseCpu(env)
        load = interactive(env, settings, body_path, "during", settings.drain_timeout_s)
        running.append(load)
        submit_started = time.monotonic()
        batch = client.messages.batches.create(requests=requests)
        submit_s = time.monotonic() - submit_started
        progress(f"phase B: batch {batch.id} submitted in {submit_s:.2f} s")
        ended = wait_until_ended(client, batch.id, env, settings, load, progress)
        load.stop()
        samples = load.wait(60)
        results["cpu_busy_pct"]["drain"] = cpu.busy_pct()
    finally:
        for load in running:
            load.kill()
    # The store's clock is the wall clock; the load's is the monotonic one: both of this machine.
    offset = time.time() - time.monotonic()
    created, finished = ended.created_at.timestamp(), ended.ended_at.timestamp()
    during = batch_report.window_stats(samples, created - offset, finished - offset)
    results["interactive"]["during"] = during
    results["interactive"]["upload"] = batch_report.window_stats(samples, submit_started, created - offset)
    results["interactive"]["ratios"] = batch_report.latency_ratios(alone, during)
    results["batch"] = verify_batch(client, ended, settings, env, submit_s, finished - created)
    results["batch"]["body_mb"] = round(sum(len(json.dumps(r)) for r in requests) / 1e6, 1)
    for key, window in results["interactive"].items():
        if isinstance(window, dict) and window.get("errors"):
            results["warnings"].append(f"interactive {key}: errors {window['errors']}")
    return results


def wait_until_ended(client, batch_id: str, env, settings: BatchSettings, load: LoadProcess, progress: Progress):
    """Retrieve the batch every ``POLL_S`` until it ended; progress from the workers' counters,
    and a failure when no item finished for ``STALL_S`` (the workers' logs say why)."""
    started = last_note = last_move = time.monotonic()
    finished = 0.0
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        now = time.monotonic()
        if now - started > settings.drain_timeout_s:
            raise BenchError(f"the batch did not end within {settings.drain_timeout_s:g} s")
        env.processes.check_alive()
        if load.process.poll() is not None:
            raise BenchError(f"the interactive load stopped early:\n{load.log.read_text(errors='replace')[-2000:]}")
        counts = [worker_items(url) for url in env.worker_metrics]
        done = sum(c.get("succeeded", 0) + c.get("errored", 0) for c in counts)
        if done != finished:
            finished, last_move = done, now
        elif now - last_move > STALL_S:
            dead = sum(c.get("dead_lettered", 0) for c in counts)
            raise BenchError(
                f"no item finished for {STALL_S:g} s ({finished:,.0f}/{settings.items:,} done, {dead:,.0f} "
                f"dead-lettered); see the batch-worker logs (--keep-workdir)"
            )
        if now - last_note >= 5:
            progress(f"  phase B: {now - started:.0f} s, {finished:,.0f}/{settings.items:,} items finished")
            last_note = now
        time.sleep(POLL_S)


def verify_batch(client, ended, settings: BatchSettings, env: BatchEnvironment, submit_s: float, drain_s: float):
    """Every item succeeded with the upstream's canned answer, each custom_id once."""
    counts = ended.request_counts
    seen: set[str] = set()
    wrong: list[str] = []
    for line in client.messages.batches.results(ended.id):
        seen.add(line.custom_id)
        result = line.result
        if result.type != "succeeded" or result.message.content[0].text != DIRECT_ANSWER_TEXT:
            wrong.append(f"{line.custom_id}: {result.type}")
    expected = {f"item-{i:06d}" for i in range(settings.items)}
    if counts.succeeded != settings.items or seen != expected or wrong:
        raise BenchError(
            f"batch {ended.id} ended with {counts.succeeded} succeeded, {counts.errored} errored, "
            f"{counts.expired} expired, {counts.canceled} canceled of {settings.items}; "
            f"{len(seen)} results; not succeeded as expected: {wrong[:5]}"
        )
    handled = [worker_items(url) for url in env.worker_metrics]
    items_per_s = settings.items / drain_s if drain_s > 0 else 0.0
    return {
        "id": ended.id,
        "items": settings.items,
        "succeeded": counts.succeeded,
        "errored": counts.errored,
        "submit_s": round(submit_s, 3),
        "drain_s": round(drain_s, 3),
        "items_per_s": round(items_per_s, 1),
        "items_per_s_per_worker": round(items_per_s / settings.workers, 1),
        "handled_per_worker": [int(h.get("succeeded", 0)) for h in handled],
        "worker_items": handled,
        "created_at": ended.created_at.isoformat(),
        "ended_at": ended.ended_at.isoformat(),
    }


def run_batches(settings: BatchSettings, progress: Progress) -> dict[str, Any]:
    started = time.time()
    result: dict[str, Any] = {
        "kind": "batches",
        "settings": asdict(settings) | {"postgres": bool(settings.postgres), "amqp": bool(settings.amqp)},
        "store": "PostgreSQL" if settings.postgres else "SQLite",
        "lanes": "RabbitMQ" if settings.amqp else "in-process",
    }
    with batch_environment(settings, progress) as env:
        result["machine"] = machine_facts(PythonLoad())
        result["at_rest"] = env.at_rest
        result |= run_phases(env, settings, progress)
        with open("/proc/loadavg") as f:
            result["machine"]["loadavg_at_end"] = [float(v) for v in f.read().split()[:3]]
    result["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    result["elapsed_s"] = round(time.time() - started, 1)
    return result


def run(args: argparse.Namespace, progress: Progress) -> int:
    """``ccr-gateway bench --batches``: exit 0 when the run completed and the batch came back whole."""
    try:
        settings = settings_from_args(args)
    except BenchError as exc:
        progress(str(exc))
        return 2
    try:
        result = run_batches(settings, progress)
    except KeyboardInterrupt:
        progress("interrupted; everything it started has been stopped")
        return 130
    except (BenchError, LoadError) as exc:
        progress(f"failed: {exc}")
        return 1
    result["command"] = command_line(args, settings)
    print(batch_report.stdout_report(result), flush=True)
    if args.json:
        batch_report.write_json(result, args.json)
        progress(f"wrote {args.json}")
    if args.write_docs:
        batch_report.write_docs(result, args.write_docs)
        progress(f"wrote the batches section of {args.write_docs}")
    return 0
