"""`up`'s one scrape target (ccr_gateway.metrics_endpoint): processes writing to one directory are
summed, a dead process's live gauges go, counters outlive their process, `up`'s own metrics appear
once, and the page parses as Prometheus' text format."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ccr_gateway import metrics_endpoint
from ccr_gateway.preflight import free_port
from ccr_gateway.supervisor import CHILD_UP

CHILD = """
import sys
from prometheus_client import Counter, Gauge
Counter("ccr_test_done_total", "d", ["worker"]).labels("any").inc(int(sys.argv[1]))
Gauge("ccr_test_live_bytes", "b", multiprocess_mode="livesum").set(int(sys.argv[1]))
"""


def samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("ccr_test_", "ccr_child_up"))
    }


def test_processes_are_summed_and_a_dead_ones_live_gauges_go(tmp_path: Path) -> None:
    directory = metrics_endpoint.prepare(str(tmp_path))
    environ = {**os.environ, metrics_endpoint.MULTIPROC_ENV: directory}
    pids = []
    for amount in (3, 4):
        process = subprocess.Popen([sys.executable, "-c", CHILD, str(amount)], env=environ)
        assert process.wait(timeout=30) == 0
        pids.append(process.pid)
    summed = samples(metrics_endpoint.exposition(directory).decode())
    assert summed["ccr_test_done_total"] == 7 and summed["ccr_test_live_bytes"] == 7
    metrics_endpoint.process_dead(directory, pids[0])
    after = samples(metrics_endpoint.exposition(directory).decode())
    assert after["ccr_test_done_total"] == 7  # a counter never goes back when its process is gone
    assert after["ccr_test_live_bytes"] == 4


def test_the_page_is_served_with_ups_own_metrics_once(tmp_path: Path) -> None:
    directory = metrics_endpoint.prepare(str(tmp_path))
    CHILD_UP.labels("extproc-0").set(1)
    port = free_port()
    server = metrics_endpoint.serve(port, directory)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        families = [line.split()[2] for line in page.splitlines() if line.startswith("# HELP")]
        assert len(families) == len(set(families))  # no family twice: Prometheus would refuse the page
        assert samples(page)["ccr_child_up"] == 1
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other")
        except urllib.error.HTTPError as error:
            assert error.code == 404
    finally:
        server.shutdown()


def test_prepare_empties_a_previous_runs_files(tmp_path: Path) -> None:
    directory = metrics_endpoint.prepare(str(tmp_path))
    Path(directory, "counter_1.db").write_bytes(b"old")
    assert os.listdir(metrics_endpoint.prepare(str(tmp_path))) == []
