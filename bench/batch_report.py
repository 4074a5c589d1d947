"""What ``ccr-gateway bench --batches`` reports: window statistics, the stdout table, the docs section.

Pure functions of the run's result dict (``bench.batches.run_batches``), like ``bench.report``.
The docs section goes below docs/performance.md's notes marker, which ``ccr-gateway bench`` keeps
when it regenerates the rest of the file. Each configuration (store, lanes, workers) has a block
of its own between two HTML comments, so a rerun replaces only its own block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.document import NOTES_MARKER
from bench.loadgen import percentile
from bench.report import markdown_table, text_table

PERCENTILES = (50, 95, 99)
SECTION_HEADING = "## Message batches: items/s per worker, interactive latency while a batch drains"
SECTION_INTRO = """\
Issue 20's benchmark, `ccr-gateway bench --batches` (bench/batches.py): one gateway (`ccr-gateway up`,
hop decision path, usage ledger on, no keys required) with `batches: {api: ...}`, one
`ccr-gateway batch-api` and W `ccr-gateway batch-worker` processes, every model call answered by the
bench's upstream Envoy (canned answers). The interactive load is the `translated-2k` request
(Anthropic client, 2 KB, OpenAI-format model, not streamed) at a fixed rate, open loop (Poisson
arrivals, latency from the scheduled start): first alone for `--duration` s, then while the workers
drain a batch of the same request submitted through the gateway with the anthropic SDK
(`messages.batches.create`). *Drain* is the batch's own `created_at` to `ended_at` (the store's clock);
the interactive requests scheduled inside it are the *during* row. CPU is % of one core, summed over
a component's processes, over each whole phase (the drain's includes the upload); `postgres` and
`rabbitmq` are the whole local servers, `other processes` the rest of the machine (% of all cores).
The batch is submitted with a virtual key (keys are not required; only the batch's owner presents
one): an anonymous batch (tenant `""`) never drains on RabbitMQ lanes, whose message decoder wants a
non-empty tenant. A block per configuration; a rerun replaces its own.
"""


def window_stats(samples: list[tuple[float, float, int]], start: float, end: float) -> dict[str, Any]:
    """The requests scheduled in [start, end): count, req/s answered, errors, latency percentiles (ms)."""
    inside = [(lat, status) for at, lat, status in samples if start <= at < end]
    answered = sorted(lat for lat, status in inside if 0 < status < 400)
    errors = {
        "no_answer": sum(1 for _, status in inside if status == 0),
        "status": sum(1 for _, status in inside if status >= 400),
    }
    window = max(end - start, 1e-9)
    latency = {f"p{p}": round(percentile(answered, p) * 1000, 2) for p in PERCENTILES}
    latency["max"] = round(answered[-1] * 1000, 2) if answered else 0.0
    latency["mean"] = round(sum(answered) / len(answered) * 1000, 2) if answered else 0.0
    return {
        "window_s": round(end - start, 3),
        "requests": len(inside),
        "rps": round(len(answered) / window, 1),
        "errors": {k: v for k, v in errors.items() if v},
        "latency_ms": latency,
    }


def latency_ratios(alone: dict[str, Any], during: dict[str, Any]) -> dict[str, float | None]:
    """During the drain / alone, per percentile (None where alone has no number)."""
    ratios: dict[str, float | None] = {}
    for p in PERCENTILES:
        key = f"p{p}"
        before, after = alone["latency_ms"][key], during["latency_ms"][key]
        ratios[key] = round(after / before, 2) if before else None
    return ratios


def configuration(result: dict[str, Any]) -> str:
    s = result["settings"]
    workers = f"{s['workers']} worker{'s' if s['workers'] != 1 else ''}"
    return f"{result['store']} store, {result['lanes']} lanes, {workers} (concurrency {s['concurrency']} each)"


def block_key(result: dict[str, Any]) -> str:
    s = result["settings"]
    return f"{result['store'].lower()}-{result['lanes'].split()[0].lower()}-w{s['workers']}"


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def latency_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label, key in (("interactive alone", "alone"), ("during the drain", "during")):
        w = result["interactive"][key]
        errors = sum(w["errors"].values())
        lat = w["latency_ms"]
        rows.append([label, f"{w['rps']:.1f}", str(errors), *(_ms(lat[f"p{p}"]) for p in PERCENTILES), _ms(lat["max"])])
    ratios = result["interactive"]["ratios"]
    rows.append(["during / alone", "", "", *(_ratio(ratios[f"p{p}"]) for p in PERCENTILES), ""])
    return rows


LATENCY_HEADER = ["interactive", "req/s", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"]
CPU_HEADER = ["CPU, % of a core", "alone", "drain"]
OTHER = "other"  # the rest of the machine, % of all cores: what this run did not do


def cpu_rows(result: dict[str, Any]) -> list[list[str]]:
    alone, drain = result["cpu_busy_pct"]["alone"], result["cpu_busy_pct"]["drain"]
    rows = [[name, f"{alone.get(name, 0):.1f}", f"{drain.get(name, 0):.1f}"] for name in drain if name != OTHER]
    rows.append(["other processes (% of all cores)", f"{alone.get(OTHER, 0):.1f}", f"{drain.get(OTHER, 0):.1f}"])
    return rows


def batch_line(result: dict[str, Any]) -> str:
    b = result["batch"]
    return (
        f"batch of {b['items']:,} items ({b['body_mb']:.1f} MB) submitted in {b['submit_s']:.2f} s, drained in "
        f"{b['drain_s']:.2f} s: {b['items_per_s']:.1f} items/s, {b['items_per_s_per_worker']:.1f} items/s per worker "
        f"(handled per worker: {', '.join(str(n) for n in b['handled_per_worker'])}); "
        f"{b['succeeded']:,}/{b['items']:,} succeeded"
    )


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    return text_table(header, rows, text_columns=1, rule=False)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table(header, rows, text_columns=1)


def stdout_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Message batches: {configuration(result)}; interactive {s['case']} at {s['rate']:g} req/s "
        f"({s['connections']} warm connections), {s['duration_s']:g} s alone",
        "",
        _text_table(LATENCY_HEADER, latency_rows(result)),
        "",
        batch_line(result),
        "",
        _text_table(CPU_HEADER, cpu_rows(result)),
    ]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def markdown_block(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"### {configuration(result)}",
        "",
        f"Run {result['started']} on {m['nproc']} cores ({m['cpu_model'] or 'unknown CPU'}, {m['memory_gb']} GB), "
        f"Envoy {m['envoy']}, Python {m['python']}; load average {m['loadavg_at_start'][0]:g} at the start; "
        f"python_loop_s {m['python_loop_s']}.",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        _markdown_table(LATENCY_HEADER, latency_rows(result)),
        "",
        batch_line(result) + ".",
        "",
        _markdown_table(CPU_HEADER, cpu_rows(result)),
    ]
    lines += [f"\nWarning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench --batches {key}: start -->", f"<!-- bench --batches {key}: end -->"


def with_batch_block(previous: str | None, key: str, block: str) -> str:
    """``previous`` (docs/performance.md) with this configuration's block put in or replaced: in
    the batches section below the notes marker, which is added (with the section) when missing."""
    start, end = _markers(key)
    wrapped = f"{start}\n{block.rstrip()}\n{end}"
    text = previous or "# Performance\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        return before + wrapped + rest.split(end, 1)[1]
    if SECTION_HEADING not in text:
        if NOTES_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + NOTES_MARKER + "\n"
        return text.rstrip("\n") + "\n\n" + SECTION_HEADING + "\n\n" + SECTION_INTRO + "\n" + wrapped + "\n"
    # After the section's last block (or its heading): the section ends at the next "## " heading.
    head, section = text.split(SECTION_HEADING, 1)
    following = section.find("\n## ")
    body, tail = (section, "") if following < 0 else (section[:following], section[following:])
    return head + SECTION_HEADING + body.rstrip("\n") + "\n\n" + wrapped + "\n" + tail


def write_docs(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text() if path.exists() else None
    path.write_text(with_batch_block(previous, block_key(result), markdown_block(result)))


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
