"""`ccr-gateway bench`: run the benchmark, print the table, write JSON and docs/performance.md.

Three targets per case: plain Envoy, the gateway on its default decision path (hop) and the gateway
on the ext_proc path (``--paths hop`` leaves that one out; the cached cases never run it: the
response cache rides the hop); non-streaming cases are answered by an upstream Envoy with canned
answers, streams by the fake provider.

Progress goes to stderr, the table to stdout. Exit code 0 when the run completed (budget lines
that are not met do not fail it: numbers are for people; CI only checks that the harness runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import batches as batch_bench
from bench import document, report
from bench import mcp as mcp_bench
from bench.environment import REDIS_HOST, REDIS_PORT, redis_listening
from bench.load import LoadError, pick_driver
from bench.runner import DECISION_PATHS, DEFAULT_PATHS, BenchError, Settings, run_bench
from bench.workloads import CASES, CASES_BY_NAME, QUICK_CASES

QUICK_DURATION_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Benchmark the gateway against plain Envoy in the same run: three targets per case (plain Envoy, "
        "the gateway on the hop decision path, the gateway on the ext_proc path), the same upstream for "
        "all (an upstream Envoy with canned answers for non-streaming cases, the fake provider for "
        "streams): req/s, latency, CPU per request per component, RSS (also at rest), hop calls and "
        "ext_proc messages, and the budget verdicts (for the hop gateway). The cached-* cases send a pool of "
        "16 deterministic requests in turn to a model the gateway caches, count the answers' x-ccr-cache "
        "(hit rate) and compare the cached answers' req/s with plain Envoy relaying the same requests."
    )
    names = ", ".join(case.name for case in CASES)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per case and target (15)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each (2)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (16)")
    parser.add_argument("--threads", type=int, default=1, help="load generator threads (1)")
    parser.add_argument(
        "--workers", type=int, default=0, help="ext_proc worker processes of each gateway (default: one per core)"
    )
    parser.add_argument("--cases", help=f"comma-separated, default all: {names}")
    parser.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help="decision paths to run a gateway for, comma-separated, hop required (default hop,ext_proc; "
        "hop alone skips the ext_proc gateway). Variants of the hop gateway, each to show what a feature "
        "costs against hop in the same run: hop-no-ledger (without its usage ledger), hop-auth (virtual "
        "keys required, every request presenting one; limits counted in process), hop-auth-redis (the "
        f"same, limits counted in the Redis on {REDIS_HOST}:{REDIS_PORT}; skipped when none listens there)",
    )
    parser.add_argument("--no-half-load", action="store_true", help="skip the latency run at half the max req/s")
    parser.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="N",
        help="also send N requests (200000 for the budget) and report RSS growth",
    )
    parser.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "h2load", "python"],
        default="auto",
        help="closed-loop driver (auto: wrk, else h2load, else Python)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all results as JSON")
    parser.add_argument(
        "--write-docs", type=Path, metavar="PATH", help="write the Markdown report (docs/performance.md)"
    )
    parser.add_argument(
        "--from-json", type=Path, metavar="PATH", help="run nothing: re-render the table and docs from a --json file"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs and generated configs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_DURATION_S:g} s per measurement, cases {','.join(QUICK_CASES)}, 4 connections",
    )
    batch_bench.add_arguments(parser)  # --batches and its options: bench/batches.py
    mcp_bench.add_arguments(parser)  # --mcp and its options: bench/mcp.py


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.cases:
        cases = tuple(name.strip() for name in args.cases.split(",") if name.strip())
    else:
        cases = QUICK_CASES if args.quick else tuple(case.name for case in CASES)
    unknown = [name for name in cases if name not in CASES_BY_NAME]
    if unknown:
        raise BenchError(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES_BY_NAME)}")
    requested = {path.strip() for path in args.paths.split(",") if path.strip()}
    if "hop" not in requested or not requested <= set(DECISION_PATHS):
        others = ", ".join(path for path in DECISION_PATHS if path != "hop")
        raise BenchError(f"--paths: hop and optionally {others} (the budget judges hop), got {args.paths!r}")
    paths = tuple(path for path in DECISION_PATHS if path in requested)  # hop first, whatever the order given
    quick = args.quick
    return Settings(
        cases=cases,
        duration_s=QUICK_DURATION_S if quick else args.duration,
        warmup_s=min(args.warmup, 1.0) if quick else args.warmup,
        connections=4 if quick else args.connections,
        threads=args.threads,
        half_load=not args.no_half_load,
        soak_requests=args.soak,
        load_generator=args.load_generator,
        workers=args.workers,
        keep_workdir=args.keep_workdir,
        paths=paths,
    )


REDIS_PATH = "hop-auth-redis"


def without_unreachable_redis(settings: Settings, listening: Callable[[], bool] = redis_listening) -> Settings:
    """``settings`` without hop-auth-redis when nothing listens where its limits would be counted
    (the rest of the run is still worth having); says so on stderr."""
    if REDIS_PATH not in settings.paths or listening():
        return settings
    _progress(
        f"skipping {REDIS_PATH}: nothing listens on {REDIS_HOST}:{REDIS_PORT} "
        "(start a Redis there to measure limits counted in Redis)"
    )
    return dataclasses.replace(settings, paths=tuple(path for path in settings.paths if path != REDIS_PATH))


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options at their defaults left out)."""
    argv = ["ccr-gateway", "bench"]
    if args.quick:
        argv.append("--quick")
    for flag, value, default in (
        ("--duration", args.duration, 15.0),
        ("--warmup", args.warmup, 2.0),
        ("--connections", args.connections, 16),
        ("--threads", args.threads, 1),
        ("--soak", args.soak, 0),
        ("--load-generator", args.load_generator, "auto"),
        ("--workers", args.workers, 0),
    ):
        if value != default:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.cases:
        argv += ["--cases", args.cases]
    if args.paths != ",".join(DEFAULT_PATHS):
        argv += ["--paths", args.paths]
    if args.no_half_load:
        argv.append("--no-half-load")
    if args.json:
        argv += ["--json", str(args.json)]
    if args.write_docs:
        argv += ["--write-docs", str(args.write_docs)]
    return shlex.join(argv)


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.batches or args.mcp:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return (batch_bench if args.batches else mcp_bench).run(args, _progress)
        finally:
            signal.signal(signal.SIGTERM, previous)
    if args.from_json:
        return _rerender(args.from_json, args)
    try:
        settings = without_unreachable_redis(settings_from_args(args))
        pick_driver(settings.load_generator)  # a missing tool fails here, before anything starts
    except (BenchError, LoadError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    # SIGTERM takes the same way out as Ctrl-C: through the finally blocks that stop the processes.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        results = run_bench(settings, _progress)
    except KeyboardInterrupt:
        _progress("interrupted; everything it started has been stopped")
        return 130
    except (BenchError, LoadError) as exc:
        _progress(f"failed: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _render(results | {"command": command_line(args)}, args)


def _rerender(path: Path, args: argparse.Namespace) -> int:
    """--from-json: a file that is missing, not JSON or not from `bench --json` is one line, exit 2."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"bench: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        print(f"bench: {path} is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        return _render(results, args)
    except (KeyError, TypeError, AttributeError) as exc:
        print(f"bench: {path} is not a `bench --json` result ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2


def _render(results: dict[str, Any], args: argparse.Namespace) -> int:
    summary = report.summarize(results)  # derived numbers and verdicts are recomputed from the raw ones
    print(report.stdout_report(summary), flush=True)
    if args.json:
        report.write_json(summary, args.json)
        _progress(f"wrote {args.json}")
    if args.write_docs:
        args.write_docs.parent.mkdir(parents=True, exist_ok=True)
        previous = args.write_docs.read_text() if args.write_docs.exists() else None
        args.write_docs.write_text(document.with_kept_notes(document.markdown(summary, summary["command"]), previous))
        _progress(f"wrote {args.write_docs}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """``python -m bench``: the same command without the ccr-gateway wrapper."""
    parser = argparse.ArgumentParser(prog="ccr-gateway bench")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args(argv)))
