"""What the numbers mean: ratios, per-chunk costs, the budget verdicts, and their presentation.

Pure functions of the results dict that ``bench.runner.run_bench`` returns (and that ``--json``
writes), so a saved JSON file can be re-rendered and these functions tested without running a load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.workloads import MAIN_CASE, PACED_STREAM_CASE, PASSTHROUGH_CASE, PASSTHROUGH_STREAM_CASE, STREAM_CASE

PLAIN, GATEWAY = "plain-envoy", "gateway"
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
SOAK_REQUESTS = 200_000

# Budget for this machine (the numbers), each against plain Envoy in the same run.
RPS_RATIO_MIN = 0.25
CPU_MS_MAX = 1.5
STREAM_CPU_MS_MAX = 3.0
ADDED_P99_MS_MAX = 10.0
RSS_GROWTH_PCT_MAX = 10.0
CHUNK_CPU_MS_MAX = 0.2

COMPONENTS = ("envoy", "ext_proc", "control_plane", "fake_provider", "loadgen")


def _case(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in results.get("cases", []) if c["name"] == name), None)


def gateway_cpu_ms(window: dict[str, Any]) -> float:
    """Envoy + ext_proc CPU per request: what the budget calls the gateway's CPU."""
    cpu = window["cpu_ms_per_request"]
    return cpu.get("envoy", 0.0) + cpu.get("ext_proc", 0.0)


def _reference(case: dict[str, Any], results: dict[str, Any]) -> dict[str, Any] | None:
    """The non-streamed case with the same body and path, to subtract per-request costs from."""
    return _case(results, MAIN_CASE if case["translated"] else PASSTHROUGH_CASE)


def derive(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per case: gateway vs plain Envoy, and for streams the ext_proc cost per upstream SSE event."""
    derived: dict[str, dict[str, Any]] = {}
    for case in results.get("cases", []):
        plain, gw = case[PLAIN], case[GATEWAY]
        plain_rps, gw_rps = plain["load"]["rps"], gw["load"]["rps"]
        row: dict[str, Any] = {
            "rps_ratio": round(gw_rps / plain_rps, 3) if plain_rps else None,
            "added_p50_ms": round(gw["load"]["latency_ms"]["p50"] - plain["load"]["latency_ms"]["p50"], 3),
            "added_p99_ms": round(gw["load"]["latency_ms"]["p99"] - plain["load"]["latency_ms"]["p99"], 3),
            "gateway_cpu_ms_per_request": round(gateway_cpu_ms(gw), 4),
            "plain_envoy_cpu_ms_per_request": round(plain["cpu_ms_per_request"].get("envoy", 0.0), 4),
        }
        events = case.get("upstream_sse_events") or 0
        if case["stream"] and events:
            ref = _reference(case, results)
            ext_ms = gw["cpu_ms_per_request"].get("ext_proc", 0.0)
            msgs = gw.get("ext_proc_per_request", {}).get("stream_msgs_sent", 0.0)
            if ref is not None:
                # Marginal: what the stream costs on top of the same request answered in one piece.
                ref_gw = ref[GATEWAY]
                row["ext_proc_cpu_ms_per_chunk"] = round(
                    max(0.0, ext_ms - ref_gw["cpu_ms_per_request"].get("ext_proc", 0.0)) / events, 4
                )
                ref_msgs = ref_gw.get("ext_proc_per_request", {}).get("stream_msgs_sent", 0.0)
                row["ext_proc_msgs_per_chunk"] = round(max(0.0, msgs - ref_msgs) / events, 4)
                row["per_chunk_method"] = f"(this case - {ref['name']}) / upstream SSE events"
            else:
                # No reference measured: everything ext_proc spent, an upper bound.
                row["ext_proc_cpu_ms_per_chunk"] = round(ext_ms / events, 4)
                row["ext_proc_msgs_per_chunk"] = round(max(0.0, msgs - 3) / events, 4)
                row["per_chunk_method"] = "all ext_proc CPU / upstream SSE events (upper bound)"
        derived[case["name"]] = row
    if soak := results.get("soak"):
        derived["soak"] = {"trend_mb_per_100k_requests": soak_trend(soak)}
    if half := results.get("half_load"):
        derived["half_load"] = {
            "rate": half["rate"],
            "added_p50_ms": round(
                half[GATEWAY]["load"]["latency_ms"]["p50"] - half[PLAIN]["load"]["latency_ms"]["p50"], 3
            ),
            "added_p99_ms": round(
                half[GATEWAY]["load"]["latency_ms"]["p99"] - half[PLAIN]["load"]["latency_ms"]["p99"], 3
            ),
        }
    return derived


def soak_trend(soak: dict[str, Any]) -> dict[str, float]:
    """RSS change per 100,000 requests after the first soak window, by least squares: a leak grows
    steadily, while allocator warm-up and caches filling show as a step at the start."""
    points = soak["trajectory"][1:]
    trend: dict[str, float] = {}
    if len(points) < 3:
        return trend
    for name in soak["growth_pct"]:
        xs = [p["requests"] for p in points]
        ys = [p["rss_mb"].get(name, 0.0) for p in points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        if var:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
            trend[name] = round(slope * 100_000, 2)
    return trend


def _line(text: str, value: str, verdict: str, detail: str = "") -> dict[str, str]:
    return {"budget": text, "value": value, "verdict": verdict, "detail": detail}


def _verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def budget(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    lines = []
    main = derived.get(MAIN_CASE)
    text = f"translated non-streaming 40 KB: gateway req/s >= {RPS_RATIO_MIN:.0%} of plain Envoy"
    if main and main["rps_ratio"] is not None:
        lines.append(_line(text, f"{main['rps_ratio']:.1%}", _verdict(main["rps_ratio"] >= RPS_RATIO_MIN)))
    else:
        lines.append(_line(text, "-", NOT_MEASURED, f"run the {MAIN_CASE} case"))

    text = f"gateway CPU (Envoy + ext_proc) <= {CPU_MS_MAX} ms/request, translated non-streaming 40 KB"
    if main:
        value = main["gateway_cpu_ms_per_request"]
        lines.append(_line(text, f"{value:.2f} ms", _verdict(value <= CPU_MS_MAX)))
    else:
        lines.append(_line(text, "-", NOT_MEASURED, f"run the {MAIN_CASE} case"))

    stream = derived.get(STREAM_CASE)
    text = f"gateway CPU (Envoy + ext_proc) <= {STREAM_CPU_MS_MAX} ms/request, translated stream 40 KB (60 chunks)"
    if stream:
        value = stream["gateway_cpu_ms_per_request"]
        lines.append(_line(text, f"{value:.2f} ms", _verdict(value <= STREAM_CPU_MS_MAX)))
    else:
        lines.append(_line(text, "-", NOT_MEASURED, f"run the {STREAM_CASE} case"))

    half = derived.get("half_load")
    text = f"added p99 latency over plain Envoy <= {ADDED_P99_MS_MAX:g} ms at half the gateway's max throughput"
    if half:
        value = half["added_p99_ms"]
        detail = f"translated 40 KB at {half['rate']:g} req/s, open loop"
        lines.append(_line(text, f"{value:+.2f} ms", _verdict(value <= ADDED_P99_MS_MAX), detail))
    else:
        lines.append(_line(text, "-", NOT_MEASURED, f"needs the {MAIN_CASE} case and the half-load run"))

    soak = results.get("soak")
    text = f"RSS growth < {RSS_GROWTH_PCT_MAX:g}% over {SOAK_REQUESTS:,} requests (Envoy, ext_proc)"
    if soak and soak["growth_pct"]:
        worst = max(soak["growth_pct"].values())
        value = ", ".join(f"{k} {v:+.1f}%" for k, v in soak["growth_pct"].items())
        growing = [f"{k} {v:+.1f} MB" for k, v in derived.get("soak", {}).get("trend_mb_per_100k_requests", {}).items()]
        detail = f"{soak['requests']:,} requests" + (
            f"; trend {', '.join(growing)} per 100k requests" if growing else ""
        )
        if soak["requests"] >= SOAK_REQUESTS:
            lines.append(_line(text, value, _verdict(worst < RSS_GROWTH_PCT_MAX), detail))
        else:
            lines.append(_line(text, value, NOT_MEASURED, f"only {soak['requests']:,} requests (--soak 200000)"))
    else:
        lines.append(_line(text, "-", NOT_MEASURED, "run with --soak 200000"))

    passthrough = derived.get(PASSTHROUGH_STREAM_CASE)
    text = "passthrough streams cost no ext_proc message per chunk"
    if passthrough and "ext_proc_msgs_per_chunk" in passthrough:
        value = passthrough["ext_proc_msgs_per_chunk"]
        # Messages are per request (headers, body): anything growing with the chunk count shows here.
        lines.append(_line(text, f"{value:.3f} msgs/chunk", _verdict(value < 0.01), passthrough["per_chunk_method"]))
    else:
        lines.append(_line(text, "-", NOT_MEASURED, f"run the {PASSTHROUGH_STREAM_CASE} case"))

    for name, label in ((STREAM_CASE, "60 chunks at once"), (PACED_STREAM_CASE, "200 chunks one by one")):
        row = derived.get(name)
        text = f"translated streams <= {CHUNK_CPU_MS_MAX} ms ext_proc CPU per chunk ({label})"
        if row and "ext_proc_cpu_ms_per_chunk" in row:
            value = row["ext_proc_cpu_ms_per_chunk"]
            lines.append(_line(text, f"{value:.3f} ms", _verdict(value <= CHUNK_CPU_MS_MAX), row["per_chunk_method"]))
        else:
            lines.append(_line(text, "-", NOT_MEASURED, f"run the {name} case"))
    return lines


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The results with ``derived`` and ``budget`` added (what --json writes)."""
    derived = derive(results)
    return results | {"derived": derived, "budget": budget(results, derived)}


# --- presentation ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _window_row(name: str, window: dict[str, Any]) -> list[str]:
    load = window["load"]
    lat = load["latency_ms"]
    cpu = window["cpu_ms_per_request"]
    rss = window["rss_mb"]
    msgs = window.get("ext_proc_per_request", {}).get("stream_msgs_sent")
    return [
        name,
        window["target"],
        f"{load['rps']:.0f}",
        _fmt(lat["p50"]),
        _fmt(lat["p90"]),
        _fmt(lat["p99"]),
        str(sum(load["errors"].values())),
        _fmt(cpu.get("envoy"), 3),
        _fmt(cpu.get("ext_proc"), 3),
        _fmt(cpu.get("control_plane"), 3),
        _fmt(cpu.get("fake_provider"), 3),
        _fmt(rss.get("envoy"), 0),
        _fmt(rss.get("ext_proc"), 0) if "ext_proc" in rss else "-",
        _fmt(msgs, 1) if msgs is not None else "-",
    ]


MAIN_HEADER = [
    "case",
    "target",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "errors",
    "CPU ms/req envoy",
    "ext_proc",
    "control plane",
    "fake upstream",
    "RSS MB envoy",
    "ext_proc",
    "ext_proc msgs/req",
]
RATIO_HEADER = [
    "case",
    "req/s vs plain",
    "added p50 ms",
    "added p99 ms",
    "gateway CPU ms/req",
    "plain Envoy CPU ms/req",
    "upstream SSE events",
    "ext_proc CPU ms/chunk",
    "ext_proc msgs/chunk",
]


def main_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for case in results.get("cases", []):
        rows.append(_window_row(case["name"], case[PLAIN]))
        rows.append(_window_row(case["name"], case[GATEWAY]))
    if half := results.get("half_load"):
        label = f"{half['case']} @ {half['rate']:g} req/s"
        rows.append(_window_row(label, half[PLAIN]))
        rows.append(_window_row(label, half[GATEWAY]))
    return rows


def ratio_rows(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for case in results.get("cases", []):
        d = derived[case["name"]]
        rows.append(
            [
                case["name"],
                f"{d['rps_ratio']:.1%}" if d["rps_ratio"] is not None else "-",
                _fmt(d["added_p50_ms"]),
                _fmt(d["added_p99_ms"]),
                _fmt(d["gateway_cpu_ms_per_request"], 3),
                _fmt(d["plain_envoy_cpu_ms_per_request"], 3),
                str(case.get("upstream_sse_events") or "-"),
                _fmt(d.get("ext_proc_cpu_ms_per_chunk"), 4) if "ext_proc_cpu_ms_per_chunk" in d else "-",
                _fmt(d.get("ext_proc_msgs_per_chunk"), 3) if "ext_proc_msgs_per_chunk" in d else "-",
            ]
        )
    if half := derived.get("half_load"):
        rows.append(
            [
                f"{MAIN_CASE} @ {half['rate']:g} req/s",
                "(same rate)",
                _fmt(half["added_p50_ms"]),
                _fmt(half["added_p99_ms"]),
                "",
                "",
                "",
                "",
                "",
            ]
        )
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(out)


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 2) -> str:
    """Columns after the first ``text_columns`` hold numbers: right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def budget_lines(summary: dict[str, Any], markdown: bool = False) -> list[str]:
    lines = []
    for line in summary["budget"]:
        detail = f" ({line['detail']})" if line["detail"] else ""
        verdict = f"**{line['verdict']}**" if markdown else line["verdict"].upper()
        lines.append(f"{'- ' if markdown else ''}{verdict}: {line['budget']}: {line['value']}{detail}")
    return lines


def stdout_report(summary: dict[str, Any]) -> str:
    derived = summary["derived"]
    parts = [
        text_table(MAIN_HEADER, main_rows(summary)),
        "",
        "gateway vs plain Envoy (same run, same upstream, same body):",
        text_table(RATIO_HEADER, ratio_rows(summary, derived)),
    ]
    warnings = _warnings(summary)
    if warnings:
        parts += ["", "warnings:", *(f"  {w}" for w in warnings)]
    parts += ["", "budget:", *(f"  {line}" for line in budget_lines(summary))]
    return "\n".join(parts)


def _warnings(summary: dict[str, Any]) -> list[str]:
    out = []
    for case in summary.get("cases", []):
        for target in (PLAIN, GATEWAY):
            out += [f"{case['name']} via {target}: {w}" for w in case[target].get("warnings", [])]
        if case["stream"] and case.get("upstream_sse_events", 0) < case["chunks"]:
            out.append(f"{case['name']}: only {case.get('upstream_sse_events')} SSE events for {case['chunks']} chunks")
    if half := summary.get("half_load"):
        for target in (PLAIN, GATEWAY):
            out += [f"half load via {target}: {w}" for w in half[target].get("warnings", [])]
    return out


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


def markdown(summary: dict[str, Any], command: str) -> str:
    m = summary["machine"]
    s = summary["settings"]
    other = [w.get("other_cpu_pct", 0.0) for c in summary.get("cases", []) for w in (c[PLAIN], c[GATEWAY])]
    lines = [
        "# Performance",
        "",
        "Generated by `ccr-gateway bench` (the `bench/` package); rerun the command below to refresh it.",
        "Every number comes from one run on one machine: compare the gateway with plain Envoy *in the same",
        "run*, not numbers across machines or runs.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- date: {summary['started']} (took {summary['elapsed_s']:.0f} s)",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model'] or 'unknown model'}), {m['memory_gb']} GB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}"
        + (
            f"; speed yardstick: a pure-Python loop of 10 million additions took {m['python_loop_s']:.2f} s"
            if m.get("python_loop_s")
            else ""
        ),
        f"- Envoy {m['envoy']}; load generator: {m['load_generator']}, {s['connections']} connections, "
        f"{s['threads']} thread(s), {s['duration_s']:g} s per measurement after {s['warmup_s']:g} s of warm-up; "
        f"ext_proc workers: {s.get('workers') or m['nproc']}",
        f"- load average at start / end: {' '.join(map(str, m['loadavg_at_start']))} / "
        f"{' '.join(map(str, m.get('loadavg_at_end', [])))}; CPU used by other processes during the "
        f"measurements: up to {max(other, default=0):.0f}% of the machine",
        "",
        "## Budget",
        "",
        *budget_lines(summary, markdown=True),
        "",
        "## Results",
        "",
        "CPU is per request, per component (milliseconds of user + system time of the component's",
        "processes over the measured window, divided by the requests completed in it). *plain-envoy*",
        "rows are the baseline: Envoy with only the router filter, forwarding the body the gateway",
        "would send upstream to the same fake provider.",
        "",
        markdown_table(MAIN_HEADER, main_rows(summary)),
        "",
        markdown_table(RATIO_HEADER, ratio_rows(summary, summary["derived"])),
        "",
    ]
    warnings = _warnings(summary)
    if warnings:
        lines += ["Warnings from this run:", "", *(f"- {w}" for w in warnings), ""]
    if soak := summary.get("soak"):
        lines += [
            "## Soak",
            "",
            f"{soak['requests']:,} requests of {soak['case']} through the gateway ({soak['errors']} errors).",
            "RSS (MB) at the start (after warm-up) and the end: "
            + ", ".join(f"{k} {soak['rss_mb_start'].get(k)} -> {soak['rss_mb_end'].get(k)}" for k in soak["growth_pct"])
            + ". Trend after the first window (least squares, MB per 100,000 requests): "
            + (", ".join(f"{k} {v:+.2f}" for k, v in soak_trend(soak).items()) or "too few windows")
            + ".",
            "",
            markdown_table(
                ["requests", *(f"RSS MB {k}" for k in soak["growth_pct"])],
                [
                    [f"{p['requests']:,}", *(f"{p['rss_mb'].get(k, 0):.1f}" for k in soak["growth_pct"])]
                    for p in soak["trajectory"]
                ],
                text_columns=0,
            ),
            "",
        ]
    lines += [
        "## Method",
        "",
        "- Processes: the fake provider (`ccr-gateway fake-provider --no-record`, one Python process), plain",
        "  Envoy, and `ccr-gateway up` (control plane, ext_proc processes, Envoy) run side by side; loads run",
        "  one at a time: per case plain Envoy first, then the gateway, each after a checked request and a",
        "  warm-up. Components are found as children of `ccr-gateway up` by their command lines; CPU and RSS",
        "  come from /proc/<pid>/stat and /proc/<pid>/status.",
        "- Bodies (`bench/workloads.py`) are generated deterministically: Claude Code-shaped (system prompt,",
        "  tools, tool_use/tool_result history) of exactly 2, 40 and 400 KiB. Translated cases send model",
        "  `bench-openai` (an openai-format provider: Anthropic -> OpenAI translation); passthrough cases",
        "  `bench-anthropic`. The baseline sends the body the gateway's own translator produces.",
        "- Streams: `x-fake-chunks: 60` with the whole stream in one write, and `x-fake-chunks: 200` with",
        "  `x-fake-chunk-delay-ms: 5` (one event at a time). ext_proc CPU per chunk = (ext_proc CPU per",
        "  request of the stream case - that of the same body answered without streaming) / SSE events",
        "  per upstream response; ext_proc messages from Envoy's `http.ccr.ext_proc.stream_msgs_sent`.",
        "- The paced stream case (requests of about a second) is driven by `bench/loadgen.py` in closed",
        "  loop instead of wrk: wrk abandons the requests in flight when its time is up, which would count",
        "  their CPU and ext_proc messages without counting the requests.",
        "- Max throughput is closed loop (each connection sends its next request when the previous answer",
        "  is complete). Half load: the translated 40 KB case again at half the gateway's measured req/s, on",
        "  both plain Envoy and the gateway, with `bench/loadgen.py` in open loop (Poisson arrivals, same",
        "  seed on both sides, latency counted from the scheduled start). wrk cannot hold a rate and",
        "  h2load's `--rps` starts every connection's request at the same instant (bursts).",
        "- Soak (`--soak N`): the translated 40 KB case through the gateway, in 10 s windows, until N",
        "  requests are done; RSS of Envoy and of the ext_proc processes (summed) after a warm-up and at",
        "  the end, growth in percent. Without `--soak` the RSS budget line says *not measured*.",
        "- Everything shares the machine's CPUs, the load generator and the fake provider included: on a",
        "  small machine the fake provider or the load generator can be what limits plain Envoy, which",
        "  makes the req/s ratio look better than it would against a faster upstream. Their CPU is",
        "  reported (`fake upstream`, and `loadgen` in the JSON) so that this is visible.",
        "",
    ]
    return "\n".join(lines)


# Hand-written notes (e.g. runs with other options) live below this line and survive a rewrite.
NOTES_MARKER = "<!-- notes below this line are kept when ccr-gateway bench rewrites the file -->"


def with_kept_notes(generated: str, previous: str | None) -> str:
    """The new report, followed by the previous file's notes section when it had one."""
    if not previous or NOTES_MARKER not in previous:
        return generated
    return generated.rstrip("\n") + "\n\n" + NOTES_MARKER + previous.split(NOTES_MARKER, 1)[1]
