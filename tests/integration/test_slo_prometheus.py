"""`ccr-gateway slo report` against a real Prometheus: three hours of a simulated gateway's metrics
written as OpenMetrics, backfilled into a TSDB by `promtool tsdb create-blocks-from openmetrics`,
served by `prometheus`, then reported on. Proves the PromQL (increase over the window,
histogram_quantile over summed buckets) on Prometheus itself. Skipped without the Debian
`prometheus` package (/usr/bin/prometheus, /usr/bin/promtool)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from extproc import genai_metrics

ROOT = Path(__file__).resolve().parents[2]
STEP_S = 15  # the scrape interval
HOURS = 3
WINDOW_S = 2 * 3600  # the report's --since 2h: inside the data, so increase() needs no extrapolation

# Requests per second by client API and status class; the overhead's cumulative share per bucket bound.
RATES = {
    ("anthropic", "2xx"): 10.0,
    ("anthropic", "4xx"): 0.1,
    ("anthropic", "5xx"): 0.0005,  # 3.6 of 72,723 answered in 2 h: 99.995%, met
    ("anthropic", "0xx"): 0.01,
    ("openai", "2xx"): 2.0,
    ("openai", "5xx"): 0.01,  # 72 of 14,472: 99.50%, missed
}
OVERHEAD_SHARES = {
    "anthropic": (0.01, 0.04, 0.2, 0.6, 0.9, 0.98, 0.995, 0.9995, 1, 1, 1, 1, 1),  # every target met
    "openai": (0, 0, 0.01, 0.2, 0.6, 0.9, 0.95, 0.97, 0.98, 0.995, 1, 1, 1),  # 98% within 200 ms: p99 missed
}
DURATION_SHARES = (0, 0, 0, 0.001, 0.01, 0.1, 0.4, 0.7, 0.9, 0.98, 0.995, 1, 1, 1, 1)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def openmetrics(start: int, end: int) -> str:
    """Counters growing linearly from 0 at ``start``, one sample every STEP_S up to ``end``."""
    stamps = range(start, end + 1, STEP_S)
    lines = ["# TYPE ccr_requests counter"]
    for (api, status_class), rate in RATES.items():
        labels = f'client_api="{api}",status_class="{status_class}"'
        lines += [f"ccr_requests_total{{{labels}}} {rate * (t - start)!r} {t}" for t in stamps]
    lines.append("# TYPE ccr_gateway_overhead_seconds histogram")
    for api, shares in OVERHEAD_SHARES.items():
        rate = sum(r for (a, _), r in RATES.items() if a == api)  # every request's overhead, 0xx included
        for t in stamps:
            total = rate * (t - start)
            for bound, share in zip(genai_metrics.OVERHEAD._upper_bounds, shares, strict=True):
                lines.append(
                    f'ccr_gateway_overhead_seconds_bucket{{client_api="{api}",le="{_le(bound)}"}} {total * share!r} {t}'
                )
            lines.append(f'ccr_gateway_overhead_seconds_count{{client_api="{api}"}} {total!r} {t}')
            lines.append(f'ccr_gateway_overhead_seconds_sum{{client_api="{api}"}} {total * 0.01!r} {t}')
    lines.append("# TYPE gen_ai_server_request_duration_seconds histogram")
    for t in stamps:
        total = 12.0 * (t - start)
        for bound, share in zip(genai_metrics.REQUEST_DURATION._upper_bounds, DURATION_SHARES, strict=True):
            lines.append(f'gen_ai_server_request_duration_seconds_bucket{{le="{_le(bound)}"}} {total * share!r} {t}')
        lines.append(f"gen_ai_server_request_duration_seconds_count {total!r} {t}")
        lines.append(f"gen_ai_server_request_duration_seconds_sum {total * 0.9!r} {t}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(its URL, the end of the data) for a Prometheus serving the backfilled TSDB."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.skip("prometheus/promtool not installed (Debian package prometheus)")
    work = tmp_path_factory.mktemp("slo-prometheus")
    end = int(time.time()) // 60 * 60 - 600
    start = end - HOURS * 3600
    (work / "data.om").write_text(openmetrics(start, end))
    tsdb = work / "tsdb"
    backfill = subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "data.om"), str(tsdb)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backfill.returncode == 0, backfill.stderr + backfill.stdout
    (work / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = _free_port()
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready:\n{(work / 'prometheus.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, end
    finally:
        server.terminate()
        server.wait(timeout=30)


def slo(url: str, end: int, *argv: str) -> subprocess.CompletedProcess[str]:
    until = datetime.fromtimestamp(end, UTC).isoformat()
    return subprocess.run(
        [sys.executable, "-m", "ccr_gateway.cli", "slo", "report", "--prometheus", url, "--until", until, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_the_report_from_a_real_prometheus_has_the_figures_that_were_fed_in(prometheus):
    url, end = prometheus
    result = slo(url, end, "--since", "2h", "--format", "json", "--check")
    assert result.returncode == 1, result.stderr  # openai misses two targets
    report = json.loads(result.stdout)
    overall, anthropic, openai = report["scopes"]
    assert [s["scope"] for s in report["scopes"]] == ["all client APIs", "anthropic", "openai"]
    assert anthropic["requests"]["answered"] == pytest.approx((10 + 0.1 + 0.0005) * WINDOW_S)
    assert anthropic["requests"]["0xx"] == pytest.approx(0.01 * WINDOW_S)
    assert anthropic["availability"]["verdict"] == "met"
    assert openai["availability"]["ratio"] == pytest.approx(1 - 0.01 / 2.01)
    assert overall["error_budget"]["allowed_failed"] == pytest.approx(0.0001 * 12.1105 * WINDOW_S)
    assert [o["verdict"] for o in anthropic["overhead"]] == ["met", "met", "met"]
    assert [o["share_within_target"] for o in openai["overhead"]] == pytest.approx([0.95, 0.97, 0.98])
    # histogram_quantile's own figure, inside the bucket the report names: openai's p50 sits between
    # 5 ms (20%) and 10 ms (60%): 0.005 + 0.005 * (0.5 - 0.2) / 0.4.
    p50 = openai["overhead"][0]
    assert p50["bucket_seconds"] == [0.005, 0.01]
    assert p50["seconds_interpolated"] == pytest.approx(0.00875)
    assert report["missed"] == [
        "all client APIs: availability 99.9133% < 99.99%",
        "openai: availability 99.5025% < 99.99%",
        "openai: overhead p99 above 200 ms (98.00% of requests within it, 99% needed)",
    ]
    assert report["whole_request"][0]["bucket_seconds"] == [0.64, 1.28]


def test_the_table_names_every_figure_and_target(prometheus):
    url, end = prometheus
    result = slo(url, end, "--since", "2h")
    assert result.returncode == 0, result.stderr
    print(result.stdout)  # the sample report docs/observability.md shows
    assert "availability    99.9950%" in result.stdout
    assert "overhead p99" in result.stdout and "target < 200 ms" in result.stdout
    assert "verdict: 3 target(s) missed" in result.stdout


def test_a_window_before_any_data_is_one_clear_line(prometheus):
    url, end = prometheus
    result = slo(url, end - HOURS * 3600 - 7200, "--since", "1h")
    assert result.returncode == 2
    assert result.stderr.startswith("ccr-gateway slo report: no requests in the last 1h before ")
