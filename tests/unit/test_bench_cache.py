"""The bench's response cache workload without a gateway: the cached cases' pools of requests, the
generated policy that caches their models, the load generators sending a pool in turn and counting
``x-ccr-cache`` (against a small local server that answers like the cache), and the hit rates and
goals derived from the counts (tests/e2e/test_bench_smoke.py runs a cached case through a gateway).
"""

from __future__ import annotations

import copy
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import document, report
from bench.baseline import UPSTREAM_HEADER, UPSTREAM_HEADER_DIRECT
from bench.cache_report import CACHE_ANSWERS_BEFORE, cache_answers
from bench.environment import gateway_policy
from bench.load import H2load, LoadError, LoadSpec, PythonLoad, Wrk
from bench.targets import GATEWAY, GATEWAY_EXTPROC, MET, NOT_MEASURED, NOT_MET, PLAIN
from bench.workloads import (
    CACHED_CASE,
    CACHED_MODELS,
    CASES,
    CASES_BY_NAME,
    QUICK_CASES,
    SIZES,
)
from ccr.v1.contract import CACHE_HEADER
from control_plane.policy import load_policy
from extproc.cache.key import is_deterministic
from extproc.translate.base import Api

CACHED = [case for case in CASES if case.cached]


# --- the workload ------------------------------------------------------------------------------


def test_a_cached_case_sends_a_pool_of_distinct_deterministic_requests_of_the_exact_size() -> None:
    assert {case.name for case in CACHED} == {"cached-40k", "cached-2k", "cached-stream-40k"}
    assert CACHED_CASE in QUICK_CASES
    for case in CACHED:
        bodies = case.client_bodies()
        assert len(bodies) == len(set(bodies)) == case.pool == 16
        assert bodies == case.client_bodies()  # the same bytes every run
        for body in bodies:
            assert len(body) == SIZES[case.size] + (len(',"stream":true') if case.stream else 0)
            parsed = json.loads(body)
            assert is_deterministic(Api.ANTHROPIC, parsed) and parsed["model"] == case.model in CACHED_MODELS
            assert parsed.get("stream", False) == case.stream
    # The other cases send one request, sampled as Claude Code does: never cached.
    for case in CASES:
        if not case.cached:
            assert len(case.client_bodies()) == 1
            assert not is_deterministic(Api.ANTHROPIC, json.loads(case.client_body()))


def test_plain_envoy_is_sent_the_very_bytes_the_gateway_is() -> None:
    for case in CACHED:
        assert not case.translated and case.baseline_path() == case.client_path() == "/v1/messages"
        assert case.baseline_bodies() == case.client_bodies()
        extra = {UPSTREAM_HEADER: UPSTREAM_HEADER_DIRECT} if case.direct else {}
        assert case.baseline_headers() == case.client_headers() | extra


def test_the_generated_policy_caches_the_cached_cases_models_and_no_other() -> None:
    policy = load_policy(yaml.safe_dump(gateway_policy(8080, 9001, 9002, "hop")))
    models = {model.name: (provider, model) for provider in policy.providers for model in provider.models}
    cached = {name for name, (_, model) in models.items() if model.cache is not None}
    assert cached == set(CACHED_MODELS)
    for name in cached:
        provider, model = models[name]
        assert provider.api == "anthropic" and (model.cache.when, model.cache.ttl_s) == ("deterministic", 3600)
    assert policy.cache is None  # no default: the other cases' models never compute a cache key
    for case in CACHED:
        assert models[case.model][0].port == (9002 if case.direct else 9001), case.name


# --- the load generators -----------------------------------------------------------------------


class _CacheLikeServer(http.server.ThreadingHTTPServer):
    """Answers ``x-ccr-cache: miss`` to a body it has not seen, ``hit`` after; records the bodies."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CacheLikeHandler)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()


class _CacheLikeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CacheLikeServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        with self.server.lock:
            value = "hit" if body in self.server.bodies else "miss"
            self.server.bodies.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.send_header(CACHE_HEADER, value)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def cache_like() -> Iterator[_CacheLikeServer]:
    server = _CacheLikeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("driver", [PythonLoad(), Wrk()], ids=["python", "wrk"])
def test_a_load_generator_sends_the_pool_in_turn_and_counts_the_cache_header(
    driver: Any, cache_like: _CacheLikeServer, tmp_path: Path
) -> None:
    if driver.name == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    pool = [f'{{"n":{i}}}'.encode() for i in range(5)]
    paths = []
    for i, body in enumerate(pool):
        paths.append(tmp_path / f"body{i}.json")
        paths[-1].write_bytes(body)
    url = f"http://127.0.0.1:{cache_like.server_address[1]}/v1/messages"
    spec = LoadSpec(
        url, tuple(paths), {"content-type": "application/json"}, 0.5, 1, count_header=CACHE_HEADER
    )  # wrk: 1 s
    argv = driver.command(spec, tmp_path)
    output = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout
    result = driver.parse(output, spec, tmp_path)

    sent = list(cache_like.bodies)
    assert len(sent) > 2 * len(pool) and not result.errors
    start = pool.index(sent[0])  # wrk may ask its request() once before the first request
    assert sent[: 2 * len(pool)] == (pool + pool + pool)[start : start + 2 * len(pool)]  # in turn, then again
    counts = result.header_counts
    assert counts is not None and counts["miss"] == len(pool)  # one miss per body, then hits only
    assert sum(counts.values()) == result.requests and counts["hit"] == result.requests - len(pool)
    assert result.as_dict()["header_counts"] == counts


def test_an_uncounted_single_body_keeps_wrk_on_its_static_request(tmp_path: Path) -> None:
    """A per-request Lua call (``request``, ``response``) costs wrk throughput: only a pool and a
    count pay for it."""
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    plain = LoadSpec("http://127.0.0.1:1/", (body,), {}, 1.0, 1)
    Wrk().command(plain, tmp_path)
    script = (tmp_path / "wrk.lua").read_text()
    assert "request = function" not in script and "response = function" not in script
    counted = LoadSpec("http://127.0.0.1:1/", (body, body), {}, 1.0, 1, count_header="X-CCR-Cache")
    Wrk().command(counted, tmp_path)
    script = (tmp_path / "wrk.lua").read_text()
    assert "request = function" in script and 'headers["x-ccr-cache"]' in script  # Envoy's lowercase names


def test_h2load_cannot_send_a_pool_so_a_cached_case_runs_on_the_python_generator(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    assert not H2load.pools_bodies and Wrk.pools_bodies and PythonLoad.pools_bodies
    with pytest.raises(LoadError, match="one body"):
        H2load().command(LoadSpec("http://127.0.0.1:1/", (body, body), {}, 1.0, 1), tmp_path)
    with pytest.raises(LoadError, match="one body"):
        H2load().command(LoadSpec("http://127.0.0.1:1/", (body,), {}, 1.0, 1, count_header=CACHE_HEADER), tmp_path)


# --- hit rates and goals -----------------------------------------------------------------------


def _window(target: str, rps: float, counts: dict[str, int] | None, before: dict[str, int] | None = None):
    window: dict[str, Any] = {
        "target": target,
        "load": {
            "rps": rps,
            "requests": int(rps * 10),
            "errors": {},
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0},
        },
        "cpu_ms_per_request": {"envoy": 0.1, "upstream": 0.05, "loadgen": 0.02}
        | ({"ext_proc": 0.2} if target != PLAIN else {}),
        "rss_mb": {"envoy": 60.0},
        "warnings": [],
    }
    if counts is not None:
        window["load"]["header_counts"] = counts
    if target != PLAIN:
        window["ext_proc_per_request"] = {"hop_calls": 1.0, "streams_started": 0.0, "stream_msgs_sent": 0.0}
        window[CACHE_ANSWERS_BEFORE] = before or {}
    return window


def _cached_results(gateway_rps: float = 5_000, hits: int = 49_990, misses: int = 10) -> dict[str, Any]:
    cases = []
    for name in (CACHED_CASE, "cached-2k"):
        case = CASES_BY_NAME[name]
        cases.append(
            {
                "name": name,
                "description": case.description,
                "translated": False,
                "stream": case.stream,
                "chunks": case.chunks,
                "pool": case.pool,
                "skipped_targets": {GATEWAY_EXTPROC: "the response cache rides the decision hop"},
                PLAIN: _window(PLAIN, 9_000, {"": 90_000}),
                GATEWAY: _window(GATEWAY, gateway_rps, {"hit": hits, "miss": misses}, {"miss": 32, "hit": 968}),
            }
        )
    return {"cases": cases}


def test_the_hit_rate_is_of_the_measured_window_and_since_the_cache_was_empty() -> None:
    window = _window(GATEWAY, 1_000, {"hit": 900, "miss": 60, "bypass": 30, "": 10}, {"miss": 32, "hit": 968})
    derived = cache_answers(window)
    assert derived["cache_answers"] == {"hit": 900, "miss": 60, "bypass": 30, "none": 10}
    assert derived["cache_hit_rate"] == 0.9
    assert derived["cache_answers_since_empty"] == {"hit": 1868, "miss": 92, "bypass": 30, "none": 10}
    assert derived["cache_hit_rate_since_empty"] == 0.934
    assert cache_answers(_window(GATEWAY, 1_000, None)) == {}  # not a cached case: nothing counted


@pytest.mark.parametrize(
    ("gateway_rps", "hits", "misses", "verdicts"),
    [
        (5_000, 49_990, 10, (MET, MET)),
        (4_000, 49_990, 10, (MET, NOT_MET)),  # 44% of plain Envoy's req/s
        (5_000, 8_000, 2_000, (NOT_MET, MET)),  # a hit rate of 80% is not above it
    ],
)
def test_the_cache_goals_judge_the_hop_gateway_on_the_40k_case(
    gateway_rps: float, hits: int, misses: int, verdicts: tuple[str, str]
) -> None:
    summary = report.summarize(_cached_results(gateway_rps, hits, misses))
    forty, two = summary["cache_goals"]
    assert (forty["case"], two["case"]) == (CACHED_CASE, "cached-2k")
    assert (forty["hit_rate_verdict"], forty["rps_verdict"]) == verdicts
    assert two["rps_verdict"] == NOT_MEASURED  # shown, not judged: the goal is for 40 KB
    assert forty["rps_ratio"] == round(gateway_rps / 9_000, 3)
    assert len(summary["budget"]) == 12  # goals, not budget lines
    out = report.stdout_report(summary)
    assert "cached-40k: gateway-ext_proc not run (the response cache rides the decision hop)" in out
    assert "response cache (x-ccr-cache" in out and f"cached-40k: hit rate {hits / (hits + misses):.2%}" in out
    assert f"({verdicts[1].upper()})" in out.split("cached-40k: hit rate", 1)[1].splitlines()[0]


def test_the_cache_section_is_written_only_when_a_cached_case_ran() -> None:
    machine = {
        "machine": {"nproc": 2, "cpu_model": "x", "memory_gb": 1, "kernel": "k", "python": "3", "envoy": "1.40"}
        | {"load_generator": "wrk", "loadavg_at_start": [0, 0, 0], "loadavg_at_end": [0, 0, 0]},
        "settings": {"connections": 16, "threads": 1, "duration_s": 10, "warmup_s": 2, "workers": 2},
        "started": "now",
        "elapsed_s": 1,
    }
    summary = report.summarize(_cached_results()) | machine
    doc = document.markdown(summary, "ccr-gateway bench --cases cached-40k")
    assert "### Response cache" in doc and "| cached-40k | gateway | 16 | 49990 | 10 | 0 | 0 | 99.98% | 99.92% |" in doc
    assert "**met**" in doc
    without = copy.deepcopy(summary)
    without["cases"] = []
    without = report.summarize(without) | machine
    assert "Response cache" not in document.markdown(without, "ccr-gateway bench")
