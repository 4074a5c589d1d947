"""The benchmark harness runs and reports (CI smoke: seconds, not a measurement).

Real numbers come from running `ccr-gateway bench` by hand (docs/performance.md); this only keeps
the harness from rotting: processes start and stop, load is driven, every column gets a number,
and the cached case's repeated requests are answered from the response cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import cli, report
from bench.targets import GATEWAY, GATEWAY_EXTPROC, MET, NOT_MEASURED, NOT_MET, PLAIN
from bench.workloads import CACHED_CASE, MAIN_CASE, QUICK_CASES


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_bench_runs_all_three_targets_and_reports_every_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, docs_path = tmp_path / "bench.json", tmp_path / "performance.md"
    assert cli.run(_args("--quick", "--json", str(json_path), "--write-docs", str(docs_path))) == 0

    summary = json.loads(json_path.read_text())
    targets = [PLAIN, GATEWAY, GATEWAY_EXTPROC]
    assert summary["targets"] == targets
    assert [case["name"] for case in summary["cases"]] == list(QUICK_CASES)
    for case in summary["cases"]:
        # The cache rides the decision hop: a cached case has no ext_proc-path gateway.
        case_targets = targets[:2] if case.get("pool") else targets
        assert report.targets_in(case) == case_targets, case["name"]
        for target in case_targets:
            window = case[target]
            assert window["load"]["requests"] > 0, (case["name"], target, window)
            assert not window["load"]["errors"], (case["name"], target, window["load"]["errors"])
            assert window["load"]["latency_ms"]["p99"] > 0
            assert set(window["cpu_ms_per_request"]) >= {"envoy", "fake_provider", "upstream", "loadgen"}
            assert window["rss_mb"]["envoy"] > 0
        for target in case_targets[1:]:
            gateway = case[target]
            assert set(gateway["cpu_ms_per_request"]) >= {"envoy", "ext_proc", "control_plane"}
            assert gateway["rss_mb"]["ext_proc"] > 0
    # The non-streaming case is answered by the upstream Envoy: it works, the fake provider idles.
    main = next(case for case in summary["cases"] if case["name"] == MAIN_CASE)
    assert main["upstream"] == "upstream Envoy"
    for target in targets:
        assert main[target]["cpu_ms_per_request"]["upstream"] > 0
        assert main[target]["cpu_ms_per_request"]["fake_provider"] < main[target]["cpu_ms_per_request"]["upstream"]
    # Which decision path each gateway took, per request (counters, so exact up to the requests
    # still in flight when a window closes).
    hop, extproc = main[GATEWAY]["ext_proc_per_request"], main[GATEWAY_EXTPROC]["ext_proc_per_request"]
    assert hop["hop_calls"] == pytest.approx(2, abs=0.1) and hop["streams_started"] == 0
    assert extproc["streams_started"] == pytest.approx(1, abs=0.1) and extproc["hop_calls"] == 0
    for target in targets:
        assert summary["half_load"][target]["load"]["requests"] > 0
    # The cached case: after a miss per request of the pool and worker, the cache answers.
    cached = summary["derived"][CACHED_CASE][GATEWAY]
    assert cached["cache_hit_rate"] > 0.8, cached
    assert cached["cache_hit_rate_since_empty"] > 0.8, cached  # the cold misses counted too
    assert cached["cache_answers"].get("bypass", 0) == 0 and cached["cache_answers"].get("none", 0) == 0
    assert cached["hop_calls_per_request"] == pytest.approx(1, abs=0.1)  # one hop call
    cpu = next(case for case in summary["cases"] if case["name"] == CACHED_CASE)
    # No provider: the upstream Envoy idles through the gateway's window, and works through plain Envoy's.
    assert cpu[GATEWAY]["cpu_ms_per_request"]["upstream"] < cpu[PLAIN]["cpu_ms_per_request"]["upstream"] / 2
    assert [row["case"] for row in summary["cache_goals"]] == [CACHED_CASE]
    at_rest = summary["at_rest"][GATEWAY]
    assert at_rest["processes"]["ext_proc"] == len(at_rest["rss_mb_per_process"]["ext_proc"]) >= 1
    assert min(at_rest["rss_mb_per_process"]["ext_proc"]) > 0
    assert summary["machine"]["python_loop_s"] > 0  # the speed yardstick that makes runs comparable
    verdicts = {line["verdict"] for line in summary["budget"]}
    assert verdicts <= {MET, NOT_MET, NOT_MEASURED}
    assert len(summary["budget"]) == 12

    out = capsys.readouterr().out
    assert "translated-40k" in out and "gateway-ext_proc" in out and "budget (gateway, decision path hop):" in out
    assert "response cache (x-ccr-cache" in out and "cached-40k: hit rate" in out
    docs = docs_path.read_text()
    assert (
        "ccr-gateway bench --quick" in docs
        and "## Budget" in docs
        and "speed yardstick" in docs
        and "| translated-40k | gateway |" in docs
        and "| translated-40k | gateway-ext_proc |" in docs
        and "## Decision paths" in docs
        and "### Response cache" in docs
        and "| cached-40k | gateway | 16 |" in docs
    )
