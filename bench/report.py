"""What the numbers mean: ratios, per-chunk costs, the budget verdicts, and their presentation.

Pure functions of the results dict that ``bench.runner.run_bench`` returns (and that ``--json``
writes), so a saved JSON file can be re-rendered and these functions tested without running a load.

A case (and the half-load run) holds one measured window per target under the target's name:
``plain-envoy``, ``gateway`` (the default decision path, hop: the one the budget judges) and, when
it ran, ``gateway-ext_proc`` (the ext_proc path, for comparison) and the hop variants asked for
(``HOP_VARIANTS``: without the ledger, with keys required), which are also compared with
``gateway``. Results of older runs, with only the first two, render too.

A cached case's gateway windows also hold the ``x-ccr-cache`` values the load generator counted:
``bench.cache_report`` derives the hit rates from them and judges them against issue 16's goals.
The target names and verdict words are ``bench.targets``'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.auth_report import AUTH_GOALS_TEXT, auth_cost, auth_cost_lines
from bench.cache_report import (
    CACHE_GOALS_TEXT,
    CACHE_HEADER_ROW,
    cache_answers,
    cache_goal_lines,
    cache_goals,
    cache_rows,
    skipped_lines,
)
from bench.targets import (
    GATEWAY,
    GATEWAY_TARGETS,
    HOP_VARIANTS,
    MET,
    NOT_MEASURED,
    NOT_MET,
    PLAIN,
    TARGET_BY_DECISION_PATH,
    TARGETS,
)
from bench.workloads import (
    MAIN_CASE,
    PACED_STREAM_CASE,
    PASSTHROUGH_CASE,
    PASSTHROUGH_STREAM_CASE,
    STREAM_CASE,
)

SOAK_REQUESTS = 200_000

# The budget for this machine, for the gateway on its default path (hop), each against plain Envoy
# in the same run.
RPS_RATIO_MIN = {MAIN_CASE: 0.20, PASSTHROUGH_CASE: 0.30}  # non-streaming 40 KB, translated / passthrough
CPU_MULTIPLE_MAX = 10.0  # gateway (Envoy + ext_proc) CPU per request / plain Envoy's, translated 40 KB
PYTHON_CPU_MS_MAX = {MAIN_CASE: 0.35, PASSTHROUGH_CASE: 0.2}  # ext_proc component, ms per request
CHAT_CASE, RESPONSES_CASE = "chat-to-anthropic-40k", "responses-to-anthropic-40k"
RESPONSES_CPU_EXCESS_MAX = 0.10  # a Responses request's gateway CPU over the same Chat request's
CHUNK_CPU_MS_MAX = 0.2  # ext_proc CPU per upstream SSE event of a translated stream
ADDED_P99_MS_MAX = 10.0  # at half the gateway's max req/s, open loop
RSS_GROWTH_PCT_MAX = 10.0  # over SOAK_REQUESTS
WORKER_RSS_MB_MAX = 60.0  # one ext_proc worker at rest
GATEWAY_RSS_MB_MAX = 250.0  # Envoy + ext_proc + control plane at rest, with GATEWAY_RSS_WORKERS workers
GATEWAY_RSS_WORKERS = 2

GATEWAY_COMPONENTS = ("envoy", "ext_proc", "control_plane")  # the control plane includes the `up` supervisor
COMPONENTS = (*GATEWAY_COMPONENTS, "fake_provider", "upstream", "loadgen")
HOP_CALLS = "hop_calls"  # an ext_proc_per_request key: calls to the decision hop (cluster ccr_hop)


def _case(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in results.get("cases", []) if c["name"] == name), None)


def targets_in(record: dict[str, Any]) -> list[str]:
    """The targets measured in a case (or the half-load run), in measuring order."""
    return [target for target in TARGETS if target in record]


def gateway_targets_in(record: dict[str, Any]) -> list[str]:
    return [target for target in GATEWAY_TARGETS if target in record]


def gateway_cpu_ms(window: dict[str, Any]) -> float:
    """Envoy + ext_proc CPU per request: what the budget calls the gateway's CPU."""
    cpu = window["cpu_ms_per_request"]
    return cpu.get("envoy", 0.0) + cpu.get("ext_proc", 0.0)


def _reference(case: dict[str, Any], results: dict[str, Any]) -> dict[str, Any] | None:
    """The non-streamed case with the same body and path, to subtract per-request costs from. Its
    upstream is the upstream Envoy, the stream's the fake provider: the subtraction is of ext_proc
    CPU, which does not depend on the upstream."""
    return _case(results, MAIN_CASE if case["translated"] else PASSTHROUGH_CASE)


def _ratio(numerator: float, denominator: float, digits: int = 3) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def _latency_added(plain: dict[str, Any], gateway: dict[str, Any]) -> dict[str, float]:
    plain_ms, gateway_ms = plain["load"]["latency_ms"], gateway["load"]["latency_ms"]
    return {f"added_{p}_ms": round(gateway_ms[p] - plain_ms[p], 3) for p in ("p50", "p99")}


def compare(plain: dict[str, Any], gateway: dict[str, Any]) -> dict[str, Any]:
    """One gateway window against plain Envoy's window of the same case."""
    gateway_ms = gateway_cpu_ms(gateway)
    plain_ms = plain["cpu_ms_per_request"].get("envoy", 0.0)
    per_request = gateway.get("ext_proc_per_request", {})
    return {
        "rps_ratio": _ratio(gateway["load"]["rps"], plain["load"]["rps"]),
        **_latency_added(plain, gateway),
        "gateway_cpu_ms_per_request": round(gateway_ms, 4),
        "plain_envoy_cpu_ms_per_request": round(plain_ms, 4),
        "cpu_multiple": _ratio(gateway_ms, plain_ms, 2),
        "python_cpu_ms_per_request": round(gateway["cpu_ms_per_request"].get("ext_proc", 0.0), 4),
        "hop_calls_per_request": per_request.get(HOP_CALLS),
        "streams_per_request": per_request.get("streams_started"),
        "msgs_per_request": per_request.get("stream_msgs_sent"),
    }


def _per_chunk(case: dict[str, Any], target: str, results: dict[str, Any]) -> dict[str, Any]:
    """A stream's ext_proc CPU and messages per upstream SSE event."""
    events = case.get("upstream_sse_events") or 0
    if not (case["stream"] and events) or case.get("pool"):  # a cache hit replays: no upstream chunk
        return {}
    window = case[target]
    ext_ms = window["cpu_ms_per_request"].get("ext_proc", 0.0)
    msgs = window.get("ext_proc_per_request", {}).get("stream_msgs_sent", 0.0)
    ref = _reference(case, results)
    if ref is not None and target in ref:
        # Marginal: what the stream costs on top of the same request answered in one piece.
        ref_window = ref[target]
        ref_msgs = ref_window.get("ext_proc_per_request", {}).get("stream_msgs_sent", 0.0)
        return {
            "ext_proc_cpu_ms_per_chunk": round(
                max(0.0, ext_ms - ref_window["cpu_ms_per_request"].get("ext_proc", 0.0)) / events, 4
            ),
            "ext_proc_msgs_per_chunk": round(max(0.0, msgs - ref_msgs) / events, 4),
            "per_chunk_method": f"(this case - {ref['name']}) / upstream SSE events",
        }
    # No reference measured: everything ext_proc spent, an upper bound.
    return {
        "ext_proc_cpu_ms_per_chunk": round(ext_ms / events, 4),
        "ext_proc_msgs_per_chunk": round(max(0.0, msgs - 3) / events, 4),
        "per_chunk_method": "all ext_proc CPU / upstream SSE events (upper bound)",
    }


def against_hop(hop: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """A hop variant's window (``HOP_VARIANTS``) against the hop gateway's of the same case: what
    the feature it adds or removes costs, per request, in the same run."""
    hop_cpu, cpu = hop["cpu_ms_per_request"], variant["cpu_ms_per_request"]
    return {
        "rps_vs_hop": _ratio(variant["load"]["rps"], hop["load"]["rps"]),
        "python_cpu_ms_vs_hop": round(cpu.get("ext_proc", 0.0) - hop_cpu.get("ext_proc", 0.0), 4),
        "envoy_cpu_ms_vs_hop": round(cpu.get("envoy", 0.0) - hop_cpu.get("envoy", 0.0), 4),
        # The machine's Redis (hop-auth-redis only): its CPU is the limits', not the gateway's.
        "redis_cpu_ms_per_request": cpu.get("redis"),
    }


def derive(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per case and gateway target: the comparison with plain Envoy, for streams the ext_proc cost
    per upstream SSE event, for a hop variant the comparison with the hop gateway, and for a cached
    case the cache's answers and hit rates. ``derived[case][target]``, ``derived["half_load"][target]``."""
    derived: dict[str, dict[str, Any]] = {}
    for case in results.get("cases", []):
        derived[case["name"]] = {
            target: compare(case[PLAIN], case[target])
            | _per_chunk(case, target, results)
            | (against_hop(case[GATEWAY], case[target]) if target in HOP_VARIANTS and GATEWAY in case else {})
            | (cache_answers(case[target]) if case.get("pool") else {})
            for target in gateway_targets_in(case)
        }
    if soak := results.get("soak"):
        derived["soak"] = {"trend_mb_per_100k_requests": soak_trend(soak)}
    if half := results.get("half_load"):
        derived["half_load"] = {"rate": half["rate"]} | {
            target: _latency_added(half[PLAIN], half[target]) for target in gateway_targets_in(half)
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


def _judge(
    text: str, value: float | None, ok: Callable[[float], bool], shown: str, missing: str, detail: str = ""
) -> dict[str, str]:
    """A budget line: ``shown`` formats the value; ``missing`` says what to run when there is none."""
    if value is None:
        return _line(text, "-", NOT_MEASURED, missing)
    return _line(text, shown.format(value), MET if ok(value) else NOT_MET, detail)


def _gateway_row(derived: dict[str, dict[str, Any]], case: str) -> dict[str, Any]:
    """The judged gateway's (hop) derived figures for a case; {} when the case did not run."""
    return derived.get(case, {}).get(GATEWAY, {})


def _client_api_line(derived: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Issue 24: a Responses request (Codex) costs what the same conversation costs from a Chat
    client, both translated to an Anthropic-format provider: gateway CPU per request."""
    chat = _gateway_row(derived, CHAT_CASE).get("gateway_cpu_ms_per_request")
    responses = _gateway_row(derived, RESPONSES_CASE).get("gateway_cpu_ms_per_request")
    excess = responses / chat - 1 if chat and responses is not None else None
    return _judge(
        f"Responses 40 KB -> Anthropic provider: gateway CPU per request <= {RESPONSES_CPU_EXCESS_MAX:.0%} over the Chat path's",
        excess,
        lambda v: v <= RESPONSES_CPU_EXCESS_MAX,
        "{:+.1%}",
        f"run the {CHAT_CASE} and {RESPONSES_CASE} cases",
        f"{responses:.3f} vs {chat:.3f} ms" if excess is not None else "",
    )


def budget(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The budget verdicts, for the gateway on its default path (hop); gateway-ext_proc is not judged."""
    lines = []
    for case, kind in ((MAIN_CASE, "translated"), (PASSTHROUGH_CASE, "passthrough")):
        minimum = RPS_RATIO_MIN[case]
        lines.append(
            _judge(
                f"{kind} non-streaming 40 KB: gateway req/s >= {minimum:.0%} of plain Envoy",
                _gateway_row(derived, case).get("rps_ratio"),
                lambda v, minimum=minimum: v >= minimum,
                "{:.1%}",
                f"run the {case} case",
            )
        )
    main = _gateway_row(derived, MAIN_CASE)
    lines.append(
        _judge(
            f"gateway CPU (Envoy + ext_proc) <= {CPU_MULTIPLE_MAX:g}x plain Envoy's per request, translated 40 KB",
            main.get("cpu_multiple"),
            lambda v: v <= CPU_MULTIPLE_MAX,
            "{:.1f}x",
            f"run the {MAIN_CASE} case",
            f"{main['gateway_cpu_ms_per_request']:.3f} vs {main['plain_envoy_cpu_ms_per_request']:.3f} ms"
            if main
            else "",
        )
    )
    for case, kind in ((MAIN_CASE, "translated"), (PASSTHROUGH_CASE, "passthrough")):
        maximum = PYTHON_CPU_MS_MAX[case]
        lines.append(
            _judge(
                f"Python (ext_proc) CPU <= {maximum:g} ms/request, {kind} non-streaming 40 KB",
                _gateway_row(derived, case).get("python_cpu_ms_per_request"),
                lambda v, maximum=maximum: v <= maximum,
                "{:.3f} ms",
                f"run the {case} case",
            )
        )
    if CHAT_CASE in derived or RESPONSES_CASE in derived:  # judged when the run compared the client APIs
        lines.append(_client_api_line(derived))
    for case, label in ((STREAM_CASE, "60 chunks at once"), (PACED_STREAM_CASE, "200 chunks one by one")):
        row = _gateway_row(derived, case)
        lines.append(
            _judge(
                f"translated streams <= {CHUNK_CPU_MS_MAX} ms ext_proc CPU per chunk ({label})",
                row.get("ext_proc_cpu_ms_per_chunk"),
                lambda v: v <= CHUNK_CPU_MS_MAX,
                "{:.3f} ms",
                f"run the {case} case",
                row.get("per_chunk_method", ""),
            )
        )
    row = _gateway_row(derived, PASSTHROUGH_STREAM_CASE)
    # Messages are per request (headers, body): anything growing with the chunk count shows here.
    lines.append(
        _judge(
            "passthrough streams cost no ext_proc message per chunk",
            row.get("ext_proc_msgs_per_chunk"),
            lambda v: v < 0.01,
            "{:.3f} msgs/chunk",
            f"run the {PASSTHROUGH_STREAM_CASE} case",
            row.get("per_chunk_method", ""),
        )
    )
    half = derived.get("half_load", {})
    lines.append(
        _judge(
            f"added p99 latency over plain Envoy <= {ADDED_P99_MS_MAX:g} ms at half the gateway's max throughput",
            half.get(GATEWAY, {}).get("added_p99_ms"),
            lambda v: v <= ADDED_P99_MS_MAX,
            "{:+.2f} ms",
            f"needs the {MAIN_CASE} case and the half-load run",
            f"translated 40 KB at {half['rate']:g} req/s, open loop" if half else "",
        )
    )
    lines.append(_soak_line(results, derived))
    lines += _at_rest_lines(results.get("at_rest", {}).get(GATEWAY))
    return lines


def _soak_line(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> dict[str, str]:
    soak = results.get("soak")
    text = f"RSS growth < {RSS_GROWTH_PCT_MAX:g}% over {SOAK_REQUESTS:,} requests (Envoy, ext_proc)"
    if not (soak and soak["growth_pct"]):
        return _line(text, "-", NOT_MEASURED, "run with --soak 200000")
    worst = max(soak["growth_pct"].values())
    value = ", ".join(f"{k} {v:+.1f}%" for k, v in soak["growth_pct"].items())
    growing = [f"{k} {v:+.1f} MB" for k, v in derived.get("soak", {}).get("trend_mb_per_100k_requests", {}).items()]
    detail = f"{soak['requests']:,} requests" + (f"; trend {', '.join(growing)} per 100k requests" if growing else "")
    if soak["requests"] < SOAK_REQUESTS:
        return _line(text, value, NOT_MEASURED, f"only {soak['requests']:,} requests (--soak 200000)")
    return _line(text, value, MET if worst < RSS_GROWTH_PCT_MAX else NOT_MET, detail)


def _at_rest_lines(rest: dict[str, Any] | None) -> list[dict[str, str]]:
    """RSS right after startup, before any load: per ext_proc worker, and the whole gateway."""
    worker_text = f"an ext_proc worker <= {WORKER_RSS_MB_MAX:g} MB RSS at rest"
    # The whole gateway's memory is its footprint (procfs.footprint_kb): a sum of RSS counts the
    # pages its Python processes share (the interpreter's and the extension modules' code) once per
    # process. Results from before the footprint was recorded are judged on their RSS sum, as they were.
    measure = "footprint, shared pages once" if rest and "footprint_mb" in rest else "sum of RSS"
    total_text = (
        f"whole gateway with {GATEWAY_RSS_WORKERS} ext_proc workers <= {GATEWAY_RSS_MB_MAX:g} MB at rest "
        f"(Envoy + ext_proc + control plane, {measure})"
    )
    workers = rest.get("rss_mb_per_process", {}).get("ext_proc") if rest else None
    if not rest or not workers:
        missing = "not recorded in these results (a run of this version records it)"
        return [_line(worker_text, "-", NOT_MEASURED, missing), _line(total_text, "-", NOT_MEASURED, missing)]
    worst = max(workers)
    lines = [
        _line(
            worker_text,
            f"{worst:.1f} MB",
            MET if worst <= WORKER_RSS_MB_MAX else NOT_MET,
            "largest of " + ", ".join(f"{v:.1f}" for v in workers) + " MB",
        )
    ]
    rss_total = sum(rest["rss_mb"].get(role, 0.0) for role in GATEWAY_COMPONENTS)
    detail = "RSS " + ", ".join(f"{role} {rest['rss_mb'].get(role, 0.0):.1f}" for role in GATEWAY_COMPONENTS) + " MB"
    total = rest.get("footprint_mb", rss_total)
    if "footprint_mb" in rest:
        detail += f", summed {rss_total:.1f} MB with the shared pages once per process"
    if len(workers) == GATEWAY_RSS_WORKERS:
        lines.append(_line(total_text, f"{total:.1f} MB", MET if total <= GATEWAY_RSS_MB_MAX else NOT_MET, detail))
    else:
        detail = f"this run had {len(workers)} workers (--workers {GATEWAY_RSS_WORKERS}); {detail}"
        lines.append(_line(total_text, f"{total:.1f} MB", NOT_MEASURED, detail))
    return lines


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The results with ``derived``, ``budget``, ``auth_cost`` and ``cache_goals`` added (what
    --json writes)."""
    derived = derive(results)
    return results | {
        "derived": derived,
        "budget": budget(results, derived),
        "auth_cost": auth_cost(results, derived),
        "cache_goals": cache_goals(results, derived),
    }


# --- presentation ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _window_row(name: str, window: dict[str, Any]) -> list[str]:
    load = window["load"]
    lat = load["latency_ms"]
    cpu = window["cpu_ms_per_request"]
    rss = window["rss_mb"]
    per_request = window.get("ext_proc_per_request", {})
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
        _fmt(cpu.get("upstream"), 3),
        _fmt(rss.get("envoy"), 0),
        _fmt(rss.get("ext_proc"), 0),
        _fmt(per_request.get(HOP_CALLS), 1),
        _fmt(per_request.get("stream_msgs_sent"), 1),
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
    "fake provider",
    "upstream Envoy",
    "RSS MB envoy",
    "ext_proc",
    "hop calls/req",
    "ext_proc msgs/req",
]
RATIO_HEADER = [
    "case",
    "target",
    "req/s vs plain",
    "added p50 ms",
    "added p99 ms",
    "gateway CPU ms/req",
    "plain Envoy CPU ms/req",
    "CPU x plain",
    "Python CPU ms/req",
    "hop calls/req",
    "ext_proc streams/req",
    "ext_proc msgs/req",
    "upstream SSE events",
    "ext_proc CPU ms/chunk",
    "ext_proc msgs/chunk",
]
AT_REST_HEADER = [
    "target",
    "decision",
    "envoy",
    "ext_proc",
    "ext_proc per worker",
    "control plane",
    "total",
    "footprint",
]
VARIANT_HEADER = [
    "case",
    "target",
    "req/s",
    f"req/s vs {GATEWAY}",
    "Python CPU ms/req",
    f"Python CPU vs {GATEWAY}",
    f"Envoy CPU vs {GATEWAY}",
    "Redis CPU ms/req",
]


def main_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for case in results.get("cases", []):
        rows += [_window_row(case["name"], case[target]) for target in targets_in(case)]
    if half := results.get("half_load"):
        label = f"{half['case']} @ {half['rate']:g} req/s"
        rows += [_window_row(label, half[target]) for target in targets_in(half)]
    return rows


def ratio_rows(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for case in results.get("cases", []):
        for target, d in derived[case["name"]].items():
            rows.append(
                [
                    case["name"],
                    target,
                    f"{d['rps_ratio']:.1%}" if d["rps_ratio"] is not None else "-",
                    _fmt(d["added_p50_ms"]),
                    _fmt(d["added_p99_ms"]),
                    _fmt(d["gateway_cpu_ms_per_request"], 3),
                    _fmt(d["plain_envoy_cpu_ms_per_request"], 3),
                    _fmt(d["cpu_multiple"], 1),
                    _fmt(d["python_cpu_ms_per_request"], 3),
                    _fmt(d["hop_calls_per_request"]),
                    _fmt(d["streams_per_request"]),
                    _fmt(d["msgs_per_request"], 1),
                    str(case.get("upstream_sse_events") or "-"),
                    _fmt(d.get("ext_proc_cpu_ms_per_chunk"), 4),
                    _fmt(d.get("ext_proc_msgs_per_chunk"), 3),
                ]
            )
    if half := derived.get("half_load"):
        for target in gateway_targets_in(half):
            added = half[target]
            label = f"{MAIN_CASE} @ {half['rate']:g} req/s"
            rows.append([label, target, "(same rate)", _fmt(added["added_p50_ms"]), _fmt(added["added_p99_ms"])])
            rows[-1] += [""] * (len(RATIO_HEADER) - len(rows[-1]))
    return rows


def variant_rows(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Each hop variant that ran against the hop gateway, per case (``against_hop``)."""
    rows = []
    for case in results.get("cases", []):
        for target in HOP_VARIANTS:
            d = derived.get(case["name"], {}).get(target, {})
            if d.get("rps_vs_hop") is None:
                continue
            rows.append(
                [
                    case["name"],
                    target,
                    f"{case[target]['load']['rps']:.0f}",
                    f"{d['rps_vs_hop']:.1%}",
                    _fmt(d["python_cpu_ms_per_request"], 3),
                    f"{d['python_cpu_ms_vs_hop']:+.3f}",
                    f"{d['envoy_cpu_ms_vs_hop']:+.3f}",
                    _fmt(d["redis_cpu_ms_per_request"], 3),
                ]
            )
    return rows


def at_rest_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for target, rest in results.get("at_rest", {}).items():
        rss = rest["rss_mb"]
        workers = rest["rss_mb_per_process"].get("ext_proc", [])
        decision = {name: path for path, name in TARGET_BY_DECISION_PATH.items()}.get(target, "-")
        rows.append(
            [
                target,
                decision,
                _fmt(rss.get("envoy"), 1),
                _fmt(rss.get("ext_proc"), 1) + (f" ({len(workers)})" if workers else ""),
                ", ".join(f"{v:.1f}" for v in workers) or "-",
                _fmt(rss.get("control_plane"), 1),
                _fmt(sum(rss.get(role, 0.0) for role in GATEWAY_COMPONENTS), 1),
                _fmt(rest.get("footprint_mb"), 1),
            ]
        )
    return rows


def text_table(header: list[str], rows: list[list[str]], text_columns: int = 2, rule: bool = True) -> str:
    """Columns after the first ``text_columns`` hold numbers: right-aligned; ``rule``: a dashed line
    under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        aligned = (
            str(c).ljust(w) if i < text_columns else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(aligned).rstrip()

    out = [line(header)]
    if rule:
        out.append("  ".join("-" * w for w in widths))
    out += [line(row) for row in rows]
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
        "each gateway vs plain Envoy (same run, same upstream, same body upstream):",
        text_table(RATIO_HEADER, ratio_rows(summary, derived)),
    ]
    if variants := variant_rows(summary, derived):
        parts += ["", f"each hop variant vs {GATEWAY} (hop; same run):", text_table(VARIANT_HEADER, variants)]
    if auth := auth_cost_lines(summary):
        parts += ["", f"what auth costs ({AUTH_GOALS_TEXT}):", *(f"  {line}" for line in auth)]
    if cached := cache_rows(summary, derived):
        parts += [
            "",
            "response cache (x-ccr-cache of the answers in the measured window, counted by the load generator):",
            text_table(CACHE_HEADER_ROW, cached),
            *skipped_lines(summary),
            f"{GATEWAY} vs plain Envoy ({CACHE_GOALS_TEXT}):",
            *(f"  {line}" for line in cache_goal_lines(summary)),
        ]
    if rest := at_rest_rows(summary):
        parts += [
            "",
            "RSS MB at rest (after startup, before any load; footprint: the pages the processes share counted once):",
            text_table(AT_REST_HEADER, rest),
        ]
    warnings = run_warnings(summary)
    if warnings:
        parts += ["", "warnings:", *(f"  {w}" for w in warnings)]
    parts += ["", f"budget ({GATEWAY}, decision path hop):", *(f"  {line}" for line in budget_lines(summary))]
    return "\n".join(parts)


def run_warnings(summary: dict[str, Any]) -> list[str]:
    out = []
    for case in summary.get("cases", []):
        for target in targets_in(case):
            out += [f"{case['name']} via {target}: {w}" for w in case[target].get("warnings", [])]
        if case["stream"] and case.get("upstream_sse_events", 0) < case["chunks"]:
            out.append(f"{case['name']}: only {case.get('upstream_sse_events')} SSE events for {case['chunks']} chunks")
    if half := summary.get("half_load"):
        for target in targets_in(half):
            out += [f"half load via {target}: {w}" for w in half[target].get("warnings", [])]
        # The rate is half the hop gateway's maximum: it can be near or past another target's own.
        main = _case(summary, half["case"]) or {}
        for target in gateway_targets_in(half):
            most = main[target]["load"]["rps"] if target in main else 0.0
            if most and half["rate"] >= 0.9 * most:  # open loop at saturation: the queue only grows
                out.append(
                    f"half load via {target}: {half['rate']:g} req/s is {half['rate'] / most:.0%} of its own "
                    f"max ({most:.0f} req/s), so its latency there is mostly queueing"
                )
    return out


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
