"""The benchmark harness runs and reports (CI smoke: seconds, not a measurement).

Real numbers come from running `ccr-gateway bench` by hand (docs/performance.md); this only keeps
the harness from rotting: processes start and stop, load is driven, every column gets a number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import cli, report
from bench.workloads import QUICK_CASES


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_bench_runs_both_targets_and_reports_every_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, docs_path = tmp_path / "bench.json", tmp_path / "performance.md"
    assert cli.run(_args("--quick", "--json", str(json_path), "--write-docs", str(docs_path))) == 0

    summary = json.loads(json_path.read_text())
    assert [case["name"] for case in summary["cases"]] == list(QUICK_CASES)
    for case in summary["cases"]:
        for target in (report.PLAIN, report.GATEWAY):
            window = case[target]
            assert window["load"]["requests"] > 0, (case["name"], target, window)
            assert window["load"]["latency_ms"]["p99"] > 0
            assert set(window["cpu_ms_per_request"]) >= {"envoy", "fake_provider", "loadgen"}
            assert window["rss_mb"]["envoy"] > 0
        gateway = case[report.GATEWAY]
        assert set(gateway["cpu_ms_per_request"]) >= {"envoy", "ext_proc", "control_plane"}
        assert gateway["rss_mb"]["ext_proc"] > 0
        calls = gateway["ext_proc_per_request"]
        assert calls["streams_started"] + calls["hop_calls"] > 0  # every request asked one or the other
    assert summary["half_load"][report.GATEWAY]["load"]["requests"] > 0
    assert summary["machine"]["python_loop_s"] > 0  # the speed yardstick that makes runs comparable
    verdicts = {line["verdict"] for line in summary["budget"]}
    assert verdicts <= {report.MET, report.NOT_MET, report.NOT_MEASURED}
    assert len(summary["budget"]) == 8

    out = capsys.readouterr().out
    assert "translated-40k" in out and "budget:" in out
    docs = docs_path.read_text()
    assert (
        "ccr-gateway bench --quick" in docs
        and "## Budget" in docs
        and "speed yardstick" in docs
        and "| translated-40k | gateway |" in docs
    )
