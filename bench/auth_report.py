"""What keys and limits cost the hop gateway (issue 15): each auth target (``--paths hop-auth``,
``hop-auth-redis``) against the hop gateway in the same run, judged against the issue's goals.

Pure functions of the results dict and of ``bench.report.derive``'s figures (``rps_vs_hop``,
``python_cpu_ms_vs_hop``), which ``bench.report.summarize`` calls.
"""

from __future__ import annotations

from typing import Any

from bench.targets import AUTH_TARGETS, GATEWAY, MET, NOT_MET

# What keys and limits may cost the hop gateway (issue 15), each auth target against GATEWAY in the
# same run: not budget lines (the budget judges GATEWAY alone), judged where the auth targets ran.
AUTH_PYTHON_CPU_MS_MAX = 0.1  # ext_proc CPU per request added
AUTH_RPS_LOSS_MAX = 0.10  # req/s lost, as a share of GATEWAY's
AUTH_GOALS_TEXT = (
    f"goals: at most {AUTH_PYTHON_CPU_MS_MAX:g} ms of Python CPU per request added and at most "
    f"{AUTH_RPS_LOSS_MAX:.0%} of req/s lost, against {GATEWAY} in the same run"
)


def auth_cost(results: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per auth target and case that ran: its req/s as a share of the hop gateway's and the Python
    CPU per request it adds, each judged against its goal (``AUTH_RPS_LOSS_MAX``,
    ``AUTH_PYTHON_CPU_MS_MAX``). Empty when no auth target ran."""
    out = []
    for target in AUTH_TARGETS:
        for case in results.get("cases", []):
            row = derived.get(case["name"], {}).get(target, {})
            if row.get("rps_vs_hop") is None:
                continue
            rps, python = row["rps_vs_hop"], row["python_cpu_ms_vs_hop"]
            out.append(
                {
                    "target": target,
                    "case": case["name"],
                    "rps_vs_hop": rps,
                    "rps_verdict": MET if rps >= 1 - AUTH_RPS_LOSS_MAX else NOT_MET,
                    "python_cpu_ms_added": python,
                    "python_verdict": MET if python <= AUTH_PYTHON_CPU_MS_MAX else NOT_MET,
                    "redis_cpu_ms_per_request": row.get("redis_cpu_ms_per_request"),
                }
            )
    return out


def auth_cost_lines(summary: dict[str, Any], markdown: bool = False) -> list[str]:
    """``auth_cost`` as one line per target and case."""

    def verdict(text: str) -> str:
        return f"**{text}**" if markdown else text.upper()

    lines = []
    for row in summary.get("auth_cost", []):
        redis = row["redis_cpu_ms_per_request"]
        lines.append(
            f"{'- ' if markdown else ''}{row['target']}, {row['case']}: "
            f"req/s {row['rps_vs_hop']:.1%} of {GATEWAY}'s ({verdict(row['rps_verdict'])}), "
            f"Python CPU {row['python_cpu_ms_added']:+.3f} ms/request ({verdict(row['python_verdict'])})"
            + (f"; the Redis server {redis:.3f} ms/request" if redis is not None else "")
        )
    return lines
