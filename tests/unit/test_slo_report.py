"""`ccr-gateway slo report` (ccr_gateway.slo_report): the report built from canned Prometheus
answers (targets met, missed, no data, partial data), and the command's one-line errors and exit
statuses against a fake Prometheus HTTP API."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ccr_gateway import slo_report
from ccr_gateway.slo_report import (
    ALL,
    DURATION,
    OVERHEAD,
    REQUESTS,
    Sample,
    SloError,
    Targets,
    Verdict,
    build_report,
    exit_status,
    parse_vector,
    parse_window,
    queries,
    render_table,
    to_json,
)
from extproc import genai_metrics

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 3, 1, tzinfo=UTC)
WINDOW = parse_window("30d")
OVERHEAD_BOUNDS = tuple(genai_metrics.OVERHEAD._upper_bounds)
DURATION_BOUNDS = tuple(genai_metrics.REQUEST_DURATION._upper_bounds)
FAST = (100, 400, 2000, 6000, 9000, 9800, 9950, 9995, 10000, 10000, 10000, 10000, 10000)  # p99.5 <= 0.1 s
SLOW_TAIL = (0, 0, 100, 2000, 6000, 9000, 9500, 9700, 9800, 9950, 10000, 10000, 10000)  # 98% within 0.2 s


def histogram_quantile(quantile: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' interpolation, to make canned answers consistent with their buckets."""
    total = cumulative[-1][1]
    rank = quantile * total
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def canned(
    requests: Mapping[str, Mapping[str, float]],
    overhead: Mapping[str, tuple[float, ...]] | None = None,
    duration: tuple[float, ...] | None = None,
) -> dict[str, list[Sample]]:
    """What Prometheus would answer each query of slo_report.queries(), from counts per client API."""
    out: dict[str, list[Sample]] = {
        REQUESTS: [
            Sample({"client_api": api, "status_class": status_class}, count)
            for api, classes in requests.items()
            for status_class, count in classes.items()
        ]
    }
    if overhead:
        out[f"{OVERHEAD} buckets"] = [
            Sample({"client_api": api, "le": _le(bound)}, count)
            for api, counts in overhead.items()
            for bound, count in zip(OVERHEAD_BOUNDS, counts, strict=True)
        ]
        summed = [sum(counts[i] for counts in overhead.values()) for i in range(len(OVERHEAD_BOUNDS))]
        for quantile, _ in slo_report.SEED_TARGETS.latency:
            out[f"{OVERHEAD} q{quantile} by client_api"] = [
                Sample(
                    {"client_api": api}, histogram_quantile(quantile, list(zip(OVERHEAD_BOUNDS, counts, strict=True)))
                )
                for api, counts in overhead.items()
            ]
            out[f"{OVERHEAD} q{quantile}"] = [
                Sample({}, histogram_quantile(quantile, list(zip(OVERHEAD_BOUNDS, summed, strict=True))))
            ]
    if duration:
        out[f"{DURATION} buckets"] = [
            Sample({"le": _le(bound)}, count) for bound, count in zip(DURATION_BOUNDS, duration, strict=True)
        ]
        for quantile, _ in slo_report.SEED_TARGETS.latency:
            out[f"{DURATION} q{quantile}"] = [
                Sample({}, histogram_quantile(quantile, list(zip(DURATION_BOUNDS, duration, strict=True))))
            ]
    return out


HEALTHY = canned(
    {"anthropic": {"2xx": 9_000_000, "4xx": 1000, "5xx": 100, "0xx": 40}, "openai": {"2xx": 1_000_000, "5xx": 10}},
    {"anthropic": FAST, "openai": FAST},
    (0, 0, 0, 10, 100, 1000, 4000, 7000, 9000, 9800, 9950, 10000, 10000, 10000, 10000),
)


# --- the window and the queries --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("1h", 3600), ("7d", 604800), ("30d", 2592000), ("2w", 1209600)])
def test_windows_are_prometheus_durations(text, seconds):
    assert parse_window(text) == slo_report.Window(text, seconds)


@pytest.mark.parametrize("text", ["3x", "0d", "", "30 d", "-1d", "1h30m", "d"])
def test_a_bad_window_is_one_clear_error(text):
    with pytest.raises(SloError, match="expected a duration like 1h, 7d, 30d or 2w"):
        parse_window(text)


def test_the_promql_sums_increases_over_the_window_and_interpolates_over_summed_buckets():
    named = queries(WINDOW)
    assert named[REQUESTS] == "sum by (client_api, status_class) (increase(ccr_requests_total[30d]))"
    assert named[f"{OVERHEAD} q0.95"] == (
        "histogram_quantile(0.95, sum by (le) (increase(ccr_gateway_overhead_seconds_bucket[30d])))"
    )
    assert named[f"{OVERHEAD} q0.99 by client_api"] == (
        "histogram_quantile(0.99, sum by (client_api, le) (increase(ccr_gateway_overhead_seconds_bucket[30d])))"
    )
    assert named[f"{DURATION} buckets"] == (
        "sum by (le) (increase(gen_ai_server_request_duration_seconds_bucket[30d]))"
    )
    assert len(named) == 12


def test_the_seed_latency_targets_are_bounds_of_the_overhead_histogram_so_they_are_judged_exactly():
    for _, target_s in slo_report.SEED_TARGETS.latency:
        assert target_s in OVERHEAD_BOUNDS


def test_an_instant_vector_is_read_with_its_labels_and_special_values():
    payload = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"client_api": "openai"}, "value": [1772323200, "NaN"]},
                {"metric": {"le": "+Inf"}, "value": [1772323200, "+Inf"]},
                {"metric": {}, "value": [1772323200, "0.25"]},
            ],
        },
    }
    first, second, third = parse_vector(payload)
    assert first.labels == {"client_api": "openai"} and math.isnan(first.value)
    assert math.isinf(second.value) and third.value == 0.25


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "answered an error: parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "not an instant vector"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}, "unexpected vector"),
    ],
)
def test_an_answer_that_is_not_a_vector_is_an_error(payload, message):
    with pytest.raises(SloError, match=message):
        parse_vector(payload)


# --- the report ------------------------------------------------------------------------------------


def test_every_target_met_overall_and_per_client_api():
    report = build_report(HEALTHY, WINDOW, AT)
    assert [scope.name for scope in report.scopes] == [ALL, "anthropic", "openai"]
    overall = report.scopes[0]
    assert overall.availability.answered == 10_001_110  # 0xx not counted
    assert overall.availability.client_gone == 40
    assert overall.availability.ratio == pytest.approx(1 - 110 / 10_001_110)
    assert overall.availability.verdict is Verdict.MET
    assert [check.verdict for check in overall.latency] == [Verdict.MET] * 3
    assert overall.latency[1].share_within == pytest.approx(0.9995)  # exact: 0.1 s is a bucket bound
    assert report.missed() == [] and exit_status(report, check=True) == 0
    text = render_table(report)
    assert "verdict: every target met" in text
    assert "target >= 99.99%" in text and "target < 100 ms" in text
    assert "error budget    1,000 failed requests allowed, 110 failed: 890 left (89% of the budget)" in text


def test_quantiles_are_given_with_the_bucket_that_bounds_them():
    overall = build_report(HEALTHY, WINDOW, AT).scopes[0]
    p50 = overall.latency[0].figure
    assert p50.bucket == (0.002, 0.005)
    assert p50.seconds == pytest.approx(0.002 + 0.003 * (5000 - 2000) / (6000 - 2000))
    assert "4.25 ms (interpolated in the 2-5 ms bucket)" in render_table(build_report(HEALTHY, WINDOW, AT))


def test_missed_targets_are_named_with_their_figure_and_fail_the_check():
    answers = canned(
        {"anthropic": {"2xx": 99_000, "5xx": 50}, "openai": {"2xx": 10_000}},
        {"anthropic": FAST, "openai": SLOW_TAIL},
    )
    report = build_report(answers, WINDOW, AT)
    assert report.missed() == [
        f"{ALL}: availability 99.9541% < 99.99%",
        "anthropic: availability 99.9495% < 99.99%",
        "openai: overhead p99 above 200 ms (98.00% of requests within it, 99% needed)",
    ]
    openai = report.scopes[2]
    assert openai.availability.verdict is Verdict.MET
    assert openai.latency[2].share_within == pytest.approx(0.98)
    assert exit_status(report, check=True) == 1
    assert exit_status(report, check=False) == 0
    text = render_table(report)
    assert "verdict: 3 target(s) missed" in text
    assert "9.9 failed requests allowed, 50 failed: exhausted, 40.1 over" in text  # anthropic


def test_no_requests_in_the_window_is_an_error_not_a_report():
    with pytest.raises(SloError, match=r"no requests in the last 30d before 2026-03-01 00:00:00 UTC"):
        build_report(canned({}), WINDOW, AT)
    with pytest.raises(SloError, match="no requests"):
        build_report(canned({"anthropic": {"2xx": 0.0}}), WINDOW, AT)


def test_requests_without_the_latency_histogram_give_availability_and_say_what_was_not_measured():
    report = build_report(canned({"anthropic": {"2xx": 1000}}), WINDOW, AT)
    overall = report.scopes[0]
    assert overall.availability.verdict is Verdict.MET
    assert [check.verdict for check in overall.latency] == [Verdict.NO_DATA] * 3
    assert report.missed() == []
    assert exit_status(report, check=True) == 1, "an overall figure not measured fails the check"
    text = render_table(report)
    assert "not measured (no data): all client APIs: overhead p50, overhead p95, overhead p99" in text
    assert report.whole_request[0].bucket is None


def test_a_client_api_whose_clients_all_left_has_no_availability_but_does_not_fail_the_check():
    answers = canned(
        {"anthropic": {"2xx": 10_000}, "openai": {"0xx": 3}},
        {"anthropic": FAST, "openai": FAST},
    )
    report = build_report(answers, WINDOW, AT)
    openai = report.scopes[2]
    assert openai.availability.ratio is None and openai.availability.verdict is Verdict.NO_DATA
    assert exit_status(report, check=True) == 0


def test_a_quantile_past_the_last_bucket_bound_says_so():
    slow = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 10_000)
    report = build_report(canned({"anthropic": {"2xx": 10_000}}, {"anthropic": slow}), WINDOW, AT)
    p50 = report.scopes[0].latency[0]
    assert p50.figure.bucket == (2.5, math.inf) and p50.verdict is Verdict.MISSED
    assert "> 2.5 s (past the last bucket; histogram_quantile says 2.5 s)" in render_table(report)


def test_a_target_between_bucket_bounds_is_judged_on_the_interpolated_figure():
    targets = Targets(latency=((0.5, 0.0045),))
    answers = canned({"anthropic": {"2xx": 10_000}}, {"anthropic": FAST})
    check = build_report(answers, WINDOW, AT, targets=targets).scopes[0].latency[0]
    assert check.share_within is None
    assert check.figure.seconds == pytest.approx(0.00425) and check.verdict is Verdict.MET


def test_partial_data_nan_estimates_and_non_monotonic_buckets_are_tolerated():
    answers = canned({"anthropic": {"2xx": 10_000}}, {"anthropic": FAST})
    answers[f"{OVERHEAD} q0.5"] = [Sample({}, math.nan)]  # histogram_quantile gave nothing
    buckets = answers[f"{OVERHEAD} buckets"]
    buckets[7] = Sample(buckets[7].labels, 9940)  # extrapolation dipped below the bucket before it (9950)
    overall = build_report(answers, WINDOW, AT).scopes[0]
    assert overall.latency[0].figure.seconds is None and overall.latency[0].figure.bucket == (0.002, 0.005)
    assert overall.latency[0].verdict is Verdict.MET
    assert overall.latency[1].share_within == pytest.approx(0.995)


def test_json_is_strict_json_with_every_figure():
    document = to_json(build_report(HEALTHY, WINDOW, AT, "http://prometheus:9090"))
    text = json.dumps(document, allow_nan=False)
    again = json.loads(text)
    assert again["met"] is True and again["window"] == "30d"
    overall = again["scopes"][0]
    assert overall["scope"] == ALL
    assert overall["requests"]["0xx"] == 40
    assert overall["error_budget"]["allowed_failed"] == pytest.approx(1000.111)
    assert [o["verdict"] for o in overall["overhead"]] == ["met"] * 3
    assert overall["overhead"][1]["bucket_seconds"] == [0.01, 0.025]


def test_json_writes_an_infinite_bucket_bound_as_a_string():
    slow = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 10_000)
    report = build_report(canned({"a": {"2xx": 10_000}}, {"a": slow}), WINDOW, AT)
    text = json.dumps(to_json(report), allow_nan=False)
    assert '"bucket_seconds": [2.5, "+Inf"]' in text


# --- the command against a fake Prometheus -----------------------------------------------------------


class FakePrometheus:
    """``POST /api/v1/query``: the canned answer of each query slo_report sends; records ``time``."""

    def __init__(
        self,
        answers: Mapping[str, list[Sample]],
        status: int = 200,
        body: bytes | None = None,
        window: slo_report.Window = WINDOW,
    ) -> None:
        by_promql = {promql: answers.get(name, []) for name, promql in queries(window).items()}
        times: list[str] = []
        self.times = times

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                times.append(form["time"][0])
                payload = body
                if payload is None:
                    samples = by_promql.get(form["query"][0])
                    if samples is None:
                        payload = json.dumps({"status": "error", "errorType": "bad_data", "error": "unknown query"})
                    else:
                        result = [{"metric": s.labels, "value": [0, repr(s.value)]} for s in samples]
                        payload = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
                    payload = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[Callable[..., FakePrometheus]]:
    started: list[FakePrometheus] = []

    def start(*args: Any, **kwargs: Any) -> FakePrometheus:
        fake = FakePrometheus(*args, **kwargs)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


def slo(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccr_gateway.cli", "slo", "report", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_the_command_prints_the_report_and_checks_it(prometheus):
    fake = prometheus(HEALTHY)
    result = slo("--prometheus", fake.url, "--since", "30d", "--until", "2026-03-01", "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"SLO report: the 30d before 2026-03-01 00:00:00 UTC (Prometheus {fake.url})")
    assert set(fake.times) == {"1772323200.000"}, "every query evaluated at the window's end"
    as_json = slo("--prometheus", fake.url, "--until", "2026-03-01", "--format", "json")
    assert json.loads(as_json.stdout)["met"] is True


def test_the_check_fails_when_a_target_is_missed(prometheus):
    fake = prometheus(canned({"anthropic": {"2xx": 1000, "5xx": 1}}, {"anthropic": FAST}))
    result = slo("--prometheus", fake.url, "--until", "2026-03-01", "--check")
    assert result.returncode == 1
    assert "verdict: 2 target(s) missed" in result.stdout


def _one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"ccr-gateway slo report: {expected}"]
    assert result.stdout == ""


def test_unreachable_prometheus_is_one_line(prometheus):
    fake = prometheus({})
    fake.close()  # nothing listens there now
    _one_error_line(
        slo("--prometheus", fake.url), f"Prometheus at {fake.url} is unreachable: [Errno 111] Connection refused"
    )


def test_no_data_in_the_window_is_one_line(prometheus):
    fake = prometheus({}, window=parse_window("1h"))
    result = slo("--prometheus", fake.url, "--since", "1h", "--until", "2026-03-01T12:00")
    _one_error_line(
        result,
        "no requests in the last 1h before 2026-03-01 12:00:00 UTC: ccr_requests_total is empty there "
        "(is Prometheus scraping the gateway's /metrics, and is the window right?)",
    )


def test_a_bad_since_or_until_is_one_line():
    _one_error_line(
        slo("--since", "30days"),
        "--since '30days': expected a duration like 1h, 7d, 30d or 2w (units s, m, h, d, w, y)",
    )
    result = slo("--until", "yesterday")
    assert result.returncode == 2 and "--until 'yesterday': expected now" in result.stderr


def test_a_query_prometheus_rejects_and_a_server_that_is_not_prometheus_are_one_line(prometheus):
    rejecting = prometheus({}, status=400, body=b'{"status":"error","errorType":"bad_data","error":"1:1: parse error"}')
    result = slo("--prometheus", rejecting.url)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "Prometheus rejected" in result.stderr and "1:1: parse error" in result.stderr
    not_prometheus = prometheus({}, status=404, body=b"<html>not found</html>")
    _one_error_line(
        slo("--prometheus", not_prometheus.url), f"{not_prometheus.url} answered HTTP 404 to a query: is it Prometheus?"
    )
    html = prometheus({}, status=200, body=b"<html>hello</html>")
    _one_error_line(slo("--prometheus", html.url), f"{html.url} answered something other than JSON: is it Prometheus?")
