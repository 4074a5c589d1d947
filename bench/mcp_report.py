"""What ``ccr-gateway bench --mcp`` reports: statistics, budget verdicts, the stdout report, the docs section.

Pure functions of the run's result dict (``bench.mcp.run_mcp``), like ``bench.report``; ``summarize``
recomputes every derived number from the raw ones (so ``--from-json`` re-renders an old run). The
docs section goes below docs/performance.md's notes marker, which ``ccr-gateway bench`` keeps when
it regenerates the rest of the file; the run's block sits between two HTML comments, so a rerun
replaces it and leaves the section's hand-written notes (outside the comments) alone.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.document import NOTES_MARKER
from bench.loadgen import percentile
from bench.report import markdown_table, text_table
from bench.targets import MET, NOT_MET

PERCENTILES = (50, 90, 99)
GATEWAY_ROLES = ("envoy", "ext_proc", "mcp_service", "control_plane")  # what the gateway's CPU is made of
CPU_ROWS = (
    ("envoy", "Envoy"),
    ("ext_proc", "ext_proc (the decision hop)"),
    ("mcp_service", "MCP service"),
    ("control_plane", "control plane"),
    ("upstream", "the MCP server (upstream)"),
    ("loadgen", "load generator"),
)
ADDED_P50_MS, ADDED_P99_MS, SESSION_ADDED_MS = 2.0, 5.0, 10.0  # issue 23
BUSY_OTHER_PCT = 15.0  # other processes above this (% of all cores): the section says the machine was busy
SECTION_HEADING = "## MCP gateway: tools/call through the gateway against the MCP server directly"
SECTION_INTRO = """\
Issue 23's benchmark, `ccr-gateway bench --mcp` (bench/mcp.py, bench/mcp_load.py): the SDK's example
MCP server (`fake_provider.mcp_servers http`, answering JSON: the gateway answers a one-message
reply with JSON too, so both targets send and parse the same kind of bytes) and one gateway
(`ccr-gateway up`, hop decision path, no keys required, usage ledger and audit log on) whose `mcp:`
section names it. A call through the gateway goes client -> Envoy listener -> the decision hop
(ext_proc; its decision on the caller reused for `mcp.decision_reuse`, 2 s by default) -> the MCP
service -> Envoy's egress listener -> the server; *direct* is the same client
calling the server's own `/mcp`. The load is `tools/call` of `echo` (a 20-byte text) in one MCP
session, open loop (Poisson arrivals at a fixed rate, latency from the scheduled start, no
coordinated omission) on warm HTTP/1.1 keep-alive connections, raw JSON-RPC POSTs (no SDK client:
it costs milliseconds per call); every answer is checked (HTTP 200, the id, the echoed text). The
targets alternate in rounds (each round warmed up first), so a machine that gets busier or quieter
during the run weighs on both. CPU is per call (every HTTP request the load sent, warm-up included),
from /proc, summed over a component's processes; *other processes* is the rest of the machine, in %
of all cores. A new session is initialize + notifications/initialized + tools/list on a warm
connection, one session after another, then the session's first tools/call, timed apart (the
gateway opens its upstream session in the background from notifications/initialized on, and a first
call that comes sooner waits for it). A block per configuration (what the server answers, with or without
the audit log); a rerun replaces its own, between its two comments.
"""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def call_stats(
    samples: list[tuple[float, float, int]], loads: list[dict[str, Any]], cpu: dict[str, float], window_s: float
) -> dict[str, Any]:
    """One target's calls over all its rounds: latency of the right answers, errors, CPU."""
    answered = sorted(latency for _, latency, ok in samples if ok)
    errors: dict[str, int] = {}
    for load in loads:
        for kind, count in load["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    latency = {f"p{p}": _ms(percentile(answered, p)) for p in PERCENTILES}
    latency["max"] = _ms(answered[-1]) if answered else 0.0
    latency["mean"] = _ms(sum(answered) / len(answered)) if answered else 0.0
    return {
        "calls": len(samples),
        "failed": sum(1 for *_, ok in samples if not ok),
        "calls_per_s": round(len(samples) / window_s, 1) if window_s > 0 else 0.0,
        "errors": errors,  # every exchange of the load, warm-up included
        "first_errors": [e for load in loads for e in load.get("first_errors", [])][:5],
        "exchanges": sum(load["exchanges"] for load in loads),
        # Calls sent again on a new connection because the server had closed an idle one (uvicorn: 5 s).
        "reconnects": sum(load.get("reconnects", 0) for load in loads),
        "max_schedule_lag_ms": max((load["max_schedule_lag_ms"] for load in loads), default=0.0),
        "latency_ms": latency,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
    }


def session_stats(samples: list[tuple[float, float, int]], errors: dict[str, int], first: list[str]) -> dict[str, Any]:
    good = [(setup, call) for setup, call, ok in samples if ok]

    def median(values: list[float]) -> float:
        return _ms(statistics.median(values)) if values else 0.0

    setups = sorted(s for s, _ in good)
    return {
        "sessions": len(samples),
        "failed": len(samples) - len(good),
        "errors": errors,
        "first_errors": first[:5],
        "setup_ms": {"p50": median(setups), "p90": _ms(percentile(setups, 90)), "max": _ms(max(setups, default=0))},
        "first_call_ms": {"p50": median([c for _, c in good])},
        "setup_and_first_call_ms": {"p50": median([s + c for s, c in good])},
    }


def cpu_per_call(calls: dict[str, Any]) -> dict[str, float]:
    """ms of CPU per HTTP request the load sent, per component, and the gateway's total."""
    exchanges = max(calls["exchanges"], 1)
    per_call = {role: round(seconds * 1000 / exchanges, 3) for role, seconds in calls["cpu_s"].items()}
    per_call.pop("wall_s", None)
    per_call["gateway"] = round(sum(per_call.get(role, 0.0) for role in GATEWAY_ROLES), 3)
    return per_call


def busy_pct(calls: dict[str, Any], nproc: int) -> dict[str, float]:
    """% of one core per component over the target's rounds; ``other``: % of all cores."""
    wall = max(calls["cpu_s"].get("wall_s", 0.0), 1e-9)
    busy = {role: round(s * 100 / wall, 1) for role, s in calls["cpu_s"].items() if role not in ("wall_s", "other")}
    busy["other"] = round(calls["cpu_s"].get("other", 0.0) * 100 / wall / max(nproc, 1), 1)
    return busy


def _verdict(ok: bool, text: str) -> dict[str, str]:
    return {"status": MET if ok else NOT_MET, "text": text}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the derived numbers: added latency, CPU per call, verdicts, notes on the machine."""
    calls, sessions = result["calls"], result["sessions"]
    direct, gateway = calls["direct"]["latency_ms"], calls["gateway"]["latency_ms"]
    added = {key: round(gateway[key] - direct[key], 3) for key in (*(f"p{p}" for p in PERCENTILES), "mean")}
    nproc = result["machine"]["nproc"]
    derived: dict[str, Any] = {
        "added_ms": added,
        "cpu_ms_per_call": {target: cpu_per_call(calls[target]) for target in calls},
        "cpu_busy_pct": {target: busy_pct(calls[target], nproc) for target in calls},
    }
    setup = {t: sessions[t]["setup_ms"]["p50"] for t in sessions}
    whole = {t: sessions[t]["setup_and_first_call_ms"]["p50"] for t in sessions}
    derived["session_added_ms"] = {
        "setup": round(setup["gateway"] - setup["direct"], 3),
        "setup_and_first_call": round(whole["gateway"] - whole["direct"], 3),
    }
    rate, count = result["settings"]["rate"], sessions["gateway"]["sessions"]
    s_added = derived["session_added_ms"]
    derived["verdicts"] = [
        _verdict(
            added["p50"] <= ADDED_P50_MS,
            f"tools/call added p50 <= {ADDED_P50_MS:g} ms at {rate:g} calls/s: {added['p50']:+.2f} ms "
            f"(gateway {gateway['p50']:.2f} ms, direct {direct['p50']:.2f} ms)",
        ),
        _verdict(
            added["p99"] <= ADDED_P99_MS,
            f"tools/call added p99 <= {ADDED_P99_MS:g} ms at {rate:g} calls/s: {added['p99']:+.2f} ms "
            f"(gateway {gateway['p99']:.2f} ms, direct {direct['p99']:.2f} ms)",
        ),
        _verdict(
            s_added["setup"] <= SESSION_ADDED_MS,
            f"a new session (initialize + notifications/initialized + tools/list) adds <= {SESSION_ADDED_MS:g} ms: "
            f"{s_added['setup']:+.2f} ms (median of {count}: gateway {setup['gateway']:.2f} ms, "
            f"direct {setup['direct']:.2f} ms)",
        ),
        _verdict(
            s_added["setup_and_first_call"] <= SESSION_ADDED_MS,
            f"the same up to the session's first tools/call answer (the gateway's upstream session opened "
            f"meanwhile) adds <= {SESSION_ADDED_MS:g} ms: {s_added['setup_and_first_call']:+.2f} ms "
            f"(gateway {whole['gateway']:.2f} ms, direct {whole['direct']:.2f} ms)",
        ),
    ]
    derived["warnings"] = warnings(result, derived)
    return result | derived


def warnings(result: dict[str, Any], derived: dict[str, Any]) -> list[str]:
    found = []
    for target, calls in result["calls"].items():
        if calls["failed"] or calls["errors"]:
            found.append(f"{target}: {calls['failed']} calls failed, errors {calls['errors']}: {calls['first_errors']}")
        if calls["max_schedule_lag_ms"] > 20:
            found.append(
                f"{target}: the load generator started a call up to {calls['max_schedule_lag_ms']:.0f} ms late "
                "(it was starved of CPU: that time counts in the latency)"
            )
    for target, sessions in result["sessions"].items():
        if sessions["failed"] or sessions["errors"]:
            found.append(f"{target}: {sessions['failed']} sessions failed: {sessions['first_errors']}")
    return found + busy_notes(result, derived)


def busy_notes(result: dict[str, Any], derived: dict[str, Any]) -> list[str]:
    """What says the machine was busy with other work: other processes' CPU, the load average."""
    m = result["machine"]
    other = max(busy["other"] for busy in derived["cpu_busy_pct"].values())
    load = max(m["loadavg_at_start"][0], m.get("loadavg_at_end", [0.0])[0])
    if other < BUSY_OTHER_PCT and load < m["nproc"] * 0.75:
        return []
    return [
        f"the machine was busy with other work during this run (other processes up to {other:.0f}% of all "
        f"{m['nproc']} cores, load average up to {load:g}): latencies, the tail most, are higher than on a quiet "
        "machine, for both targets"
    ]


# --- rendering ---------------------------------------------------------------------------------


def _f(value: float) -> str:
    return f"{value:.2f}"


CALLS_HEADER = ["tools/call", "calls", "calls/s", "failed", *(f"p{p} ms" for p in PERCENTILES), "max ms"]


def call_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for target in ("direct", "gateway"):
        c = result["calls"][target]
        lat = c["latency_ms"]
        rows.append(
            [
                target,
                str(c["calls"]),
                f"{c['calls_per_s']:.1f}",
                str(c["failed"]),
                *(_f(lat[f"p{p}"]) for p in PERCENTILES),
                _f(lat["max"]),
            ]
        )
    added = result["added_ms"]
    rows.append(["added by the gateway", "", "", "", *(f"{added[f'p{p}']:+.2f}" for p in PERCENTILES), ""])
    return rows


CPU_HEADER = ["CPU ms per call", "direct", "gateway"]


def cpu_rows(result: dict[str, Any]) -> list[list[str]]:
    per_call, busy = result["cpu_ms_per_call"], result["cpu_busy_pct"]
    rows = [
        [label, f"{per_call['direct'].get(r, 0):.3f}", f"{per_call['gateway'].get(r, 0):.3f}"] for r, label in CPU_ROWS
    ]
    rows.append(
        ["the gateway (Envoy + ext_proc + MCP service + control plane)", "", f"{per_call['gateway']['gateway']:.3f}"]
    )
    rows.append(
        ["other processes, % of all cores", f"{busy['direct']['other']:.1f}%", f"{busy['gateway']['other']:.1f}%"]
    )
    return rows


SESSIONS_HEADER = ["new session", "sessions", "failed", "p50 ms", "p90 ms", "first tools/call p50 ms", "both p50 ms"]


def session_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for target in ("direct", "gateway"):
        s = result["sessions"][target]
        rows.append(
            [
                target,
                str(s["sessions"]),
                str(s["failed"]),
                _f(s["setup_ms"]["p50"]),
                _f(s["setup_ms"]["p90"]),
                _f(s["first_call_ms"]["p50"]),
                _f(s["setup_and_first_call_ms"]["p50"]),
            ]
        )
    added = result["session_added_ms"]
    rows.append(
        ["added by the gateway", "", "", f"{added['setup']:+.2f}", "", "", f"{added['setup_and_first_call']:+.2f}"]
    )
    return rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    return text_table(header, rows, text_columns=1, rule=False)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table(header, rows, text_columns=1)


def _setting_line(result: dict[str, Any]) -> str:
    s = result["settings"]
    return (
        f"tools/call at {s['rate']:g} calls/s, {s['duration_s']:g} s per target in {s['rounds']} alternating rounds "
        f"({s['warmup_s']:g} s warm-up each), {s['connections']} warm connections; the MCP server answers "
        f"{result['upstream']['answers']}; {s['sessions']} new sessions per target"
        + ("" if s.get("audit", True) else "; the gateway without its audit log (--mcp-no-audit)")
    )


def stdout_report(result: dict[str, Any]) -> str:
    lines = [f"MCP gateway: {_setting_line(result)}", ""]
    lines += [f"{v['status']}: {v['text']}" for v in result["verdicts"]]
    lines += ["", _text_table(CALLS_HEADER, call_rows(result)), "", _text_table(CPU_HEADER, cpu_rows(result))]
    lines += ["", _text_table(SESSIONS_HEADER, session_rows(result))]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def block_key(result: dict[str, Any]) -> str:
    s = result["settings"]
    return result["upstream"]["answers"].lower() + ("" if s.get("audit", True) else "-no-audit")


def configuration(result: dict[str, Any]) -> str:
    audit = "with" if result["settings"].get("audit", True) else "without"
    return f"The MCP server answering {result['upstream']['answers']}, the gateway {audit} its audit log"


BLOCK_END = ": end -->"


def markers(key: str) -> tuple[str, str]:
    return f"<!-- bench --mcp {key}: start -->", f"<!-- bench --mcp {key}{BLOCK_END}"


def markdown_block(result: dict[str, Any]) -> str:
    m = result["machine"]
    start, end = m["loadavg_at_start"], m.get("loadavg_at_end", [])
    lines = [
        f"### {configuration(result)}",
        "",
        f"Run {result['started']} (took {result['elapsed_s']:g} s) on {m['nproc']} cores "
        f"({m['cpu_model'] or 'unknown CPU'}, {m['memory_gb']} GB), Envoy {m['envoy']}, Python {m['python']}; "
        f"load average at start / end: {' '.join(f'{v:g}' for v in start)} / {' '.join(f'{v:g}' for v in end)}; "
        f"python_loop_s {m['python_loop_s']}. {_setting_line(result)}.",
        "",
        "```bash",
        result["command"],
        "```",
        "",
    ]
    lines += [f"- **{v['status']}**: {v['text']}" for v in result["verdicts"]]
    lines += ["", _markdown_table(CALLS_HEADER, call_rows(result)), "", _markdown_table(CPU_HEADER, cpu_rows(result))]
    lines += ["", _markdown_table(SESSIONS_HEADER, session_rows(result))]
    rest = result["at_rest"]["rss_mb"]
    lines += ["", "RSS at rest, MB: " + ", ".join(f"{role} {mb:g}" for role, mb in rest.items()) + "."]
    lines += [f"\nWarning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def with_mcp_block(previous: str | None, key: str, block: str) -> str:
    """``previous`` (docs/performance.md) with this configuration's block put in or replaced, in
    the MCP section below the notes marker (both added when missing); the rest of the file as it was."""
    start, end = markers(key)
    wrapped = f"{start}\n{block.rstrip()}\n{end}"
    text = previous or "# Performance\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        return before + wrapped + rest.split(end, 1)[1]
    if SECTION_HEADING not in text:
        if NOTES_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + NOTES_MARKER + "\n"
        return text.rstrip("\n") + "\n\n" + SECTION_HEADING + "\n\n" + SECTION_INTRO + "\n" + wrapped + "\n"
    head, section = text.split(SECTION_HEADING, 1)
    following = section.find("\n## ")  # the section ends at the next "## " heading
    body, tail = (section, "") if following < 0 else (section[:following], section[following:])
    last_end = body.rfind(BLOCK_END)
    if last_end >= 0:  # right after the section's last block: notes written below the blocks stay below
        cut = last_end + len(BLOCK_END)
        return head + SECTION_HEADING + body[:cut] + "\n\n" + wrapped + body[cut:] + tail
    return head + SECTION_HEADING + body.rstrip("\n") + "\n\n" + wrapped + "\n" + tail


def write_docs(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text() if path.exists() else None
    path.write_text(with_mcp_block(previous, block_key(result), markdown_block(result)))


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
