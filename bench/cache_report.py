"""The response cache's figures: what the gateway's ``x-ccr-cache`` said in a cached case, the hit
rates, and how they fare against issue 16's goals.

The load generator counts the header's values on every answer (``load.header_counts`` of a window;
an answer without it counts as ""), in the warm-up and in the measured window apart: the cold
misses (one per request of the pool and worker, more while a first answer is still being stored)
fall in the check and the warm-up, ``CACHE_ANSWERS_BEFORE``. Pure functions of the results dict,
like ``bench.report``, which calls them.
"""

from __future__ import annotations

from typing import Any

from bench.targets import GATEWAY, MET, NOT_MEASURED, NOT_MET, PLAIN
from bench.workloads import CACHED_CASE

# What the response cache is to reach (issue 16), for the hop gateway on a cached case: not budget
# lines, judged where a cached case ran.
CACHE_HIT_RATE_MIN = 0.80  # of the answers in the measured window, x-ccr-cache: hit
CACHED_RPS_RATIO_MIN = 0.50  # req/s against plain Envoy relaying the same request to its upstream
CACHE_GOALS_TEXT = (
    f"goals: a hit rate above {CACHE_HIT_RATE_MIN:.0%} and, for {CACHED_CASE}, at least "
    f"{CACHED_RPS_RATIO_MIN:.0%} of plain Envoy's req/s"
)
CACHE_ANSWERS_BEFORE = "cache_answers_before"  # a cached case's window: x-ccr-cache counts of check + warm-up
CACHE_VALUES = ("hit", "miss", "bypass")  # x-ccr-cache; an answer without the header counts as ""


def _hit_rate(counts: dict[str, int]) -> float | None:
    answers = sum(counts.values())
    return round(counts.get("hit", 0) / answers, 4) if answers else None


def cache_answers(window: dict[str, Any]) -> dict[str, Any]:
    """A cached case's gateway window: its ``x-ccr-cache`` counts and hit rates, in the measured
    window and since the cache was empty (the check and the warm-up too: the cold misses)."""
    counts = window["load"].get("header_counts")
    if counts is None:
        return {}
    since_empty = dict(counts)
    for value, count in window.get(CACHE_ANSWERS_BEFORE, {}).items():
        since_empty[value] = since_empty.get(value, 0) + count
    return {
        "cache_answers": {value or "none": count for value, count in counts.items()},
        "cache_hit_rate": _hit_rate(counts),
        "cache_answers_since_empty": {value or "none": count for value, count in since_empty.items()},
        "cache_hit_rate_since_empty": _hit_rate(since_empty),
    }


def cache_goals(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cached case that ran, the hop gateway's hit rate and req/s against plain Envoy, judged
    against ``CACHE_HIT_RATE_MIN`` and (for ``CACHED_CASE``; other cases are shown) against
    ``CACHED_RPS_RATIO_MIN``. Empty when no cached case ran."""
    out = []
    for case in results.get("cases", []):
        row = derived.get(case["name"], {}).get(GATEWAY, {})
        if not case.get("pool") or row.get("cache_hit_rate") is None:
            continue
        hit_rate, ratio = row["cache_hit_rate"], row["rps_ratio"]
        judged = case["name"] == CACHED_CASE and ratio is not None
        out.append(
            {
                "case": case["name"],
                "hit_rate": hit_rate,
                "hit_rate_verdict": MET if hit_rate > CACHE_HIT_RATE_MIN else NOT_MET,
                "hit_rate_since_empty": row["cache_hit_rate_since_empty"],
                "rps": case[GATEWAY]["load"]["rps"],
                "plain_rps": case[PLAIN]["load"]["rps"],
                "rps_ratio": ratio,
                "rps_verdict": (MET if ratio >= CACHED_RPS_RATIO_MIN else NOT_MET) if judged else NOT_MEASURED,
            }
        )
    return out


def skipped_lines(results: dict[str, Any]) -> list[str]:
    """The targets a cached case did not run, and why (``skipped_targets`` of the case)."""
    return [
        f"{case['name']}: {target} not run ({why})"
        for case in results.get("cases", [])
        for target, why in case.get("skipped_targets", {}).items()
    ]


def cache_goal_lines(summary: dict[str, Any], markdown: bool = False) -> list[str]:
    """``cache_goals`` as one line per cached case."""

    def verdict(text: str) -> str:
        return f"**{text}**" if markdown else text.upper()

    lines = []
    for row in summary.get("cache_goals", []):
        rps = f"req/s {row['rps']:.0f} vs plain Envoy's {row['plain_rps']:.0f}: {_percent(row['rps_ratio'])}"
        lines.append(
            f"{'- ' if markdown else ''}{row['case']}: hit rate {_percent(row['hit_rate'], 2)} in the window "
            f"({verdict(row['hit_rate_verdict'])}; {_percent(row['hit_rate_since_empty'], 2)} since the cache was empty), "
            + rps
            + (f" ({verdict(row['rps_verdict'])})" if row["rps_verdict"] != NOT_MEASURED else "")
        )
    return lines


def _percent(value: float | None, digits: int = 1) -> str:
    """Hit rates with 2 digits: 99.98% is not 100%."""
    return "-" if value is None else f"{value:.{digits}%}"


CACHE_HEADER_ROW = [
    "case",
    "target",
    "pool",
    "hit",
    "miss",
    "bypass",
    "no header",
    "hit rate",
    "since empty",
    "req/s",
    "plain Envoy req/s",
    "req/s vs plain",
    "Python CPU ms/req",
    "hop calls/req",
]


def cache_rows(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Each gateway on each cached case: what the cache answered in the measured window."""
    rows = []
    for case in results.get("cases", []):
        if not case.get("pool"):
            continue
        for target, d in derived.get(case["name"], {}).items():
            answers = d.get("cache_answers")
            if answers is None:
                continue
            cpu, hops = d["python_cpu_ms_per_request"], d["hop_calls_per_request"]
            rows.append(
                [
                    case["name"],
                    target,
                    str(case["pool"]),
                    *(str(answers.get(value, 0)) for value in (*CACHE_VALUES, "none")),
                    _percent(d["cache_hit_rate"], 2),
                    _percent(d["cache_hit_rate_since_empty"], 2),
                    f"{case[target]['load']['rps']:.0f}",
                    f"{case[PLAIN]['load']['rps']:.0f}",
                    _percent(d["rps_ratio"]),
                    f"{cpu:.3f}",
                    "-" if hops is None else f"{hops:.2f}",
                ]
            )
    return rows
