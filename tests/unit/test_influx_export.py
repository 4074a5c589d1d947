"""The InfluxDB exporter (ccr_gateway.influx_export): line protocol escaping, read back by two
reference parsers (InfluxDB's v1 and v2 readings of backslashes); the bounded buffer and backoff;
and the writer against a local HTTP receiver standing in for InfluxDB: path, query, token, body,
gzip, an outage (buffered lines delivered once, logged once, the oldest dropped and counted)."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import logging
import math
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import assume, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from ccr_gateway import influx_export
from ccr_gateway.influx_export import (
    REPLACEMENT,
    Backoff,
    ExportConfig,
    InfluxExporter,
    LineBuffer,
    Outage,
    encode_line,
    exposition_to_lines,
)
from extproc import genai_metrics

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "influx-test-token-5f2c9a"
PAGE = """# HELP ccr_requests_total Client requests
# TYPE ccr_requests_total counter
ccr_requests_total{client_api="anthropic",status_class="2xx"} 12.0
ccr_requests_total{client_api="openai",status_class="5xx"} 1.0
# HELP ccr_gateway_overhead_seconds Overhead
# TYPE ccr_gateway_overhead_seconds histogram
ccr_gateway_overhead_seconds_bucket{client_api="anthropic",le="0.05"} 11.0
ccr_gateway_overhead_seconds_bucket{client_api="anthropic",le="+Inf"} 12.0
ccr_gateway_overhead_seconds_count{client_api="anthropic"} 12.0
ccr_gateway_overhead_seconds_sum{client_api="anthropic"} 0.07
# HELP ccr_gateway_overhead_seconds_created Overhead
# TYPE ccr_gateway_overhead_seconds_created gauge
ccr_gateway_overhead_seconds_created{client_api="anthropic"} 1.7e9
# HELP ccr_child_up Child alive
# TYPE ccr_child_up gauge
ccr_child_up{child="extproc-0",error_type=""} 1.0
ccr_child_up{child="broken"} NaN
"""


# --- reference readers of line protocol --------------------------------------------------------


def _split(text: str, separators: str, v1: bool) -> list[str]:
    """Split at unescaped separators. v1 (influxdb/models): a backslash skips the next character,
    whatever it is. v2 (line-protocol/v2): ``\\\\`` is one backslash, another escape its character."""
    parts, current, i = [], "", 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and (v1 or text[i + 1] in separators + "=\\"):
            current += text[i : i + 2]
            i += 2
            continue
        if char in separators:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str, v1: bool) -> str:
    if v1:  # influxdb/pkg/escape: these pairs only
        for pair in ("\\,", "\\ ", "\\="):
            text = text.replace(pair, pair[1])
        return text
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",= \\":
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def parse_line(line: str, v1: bool) -> tuple[str, dict[str, str], float, int]:
    key, fields, timestamp = _split(line, " ", v1)
    measurement, *tags = _split(key, ",", v1)
    tag_map = {}
    for tag in tags:
        name, value = _split(tag, "=", v1)
        tag_map[_unescape(name, v1)] = _unescape(value, v1)
    field_name, field_value = fields.split("=")
    assert field_name == "value"
    return _unescape(measurement, v1), tag_map, float(field_value), int(timestamp)


# --- line protocol -------------------------------------------------------------------------------


def test_a_sample_is_one_line_with_sorted_tags_a_float_value_and_no_empty_tag():
    line = encode_line("ccr_requests_total", {"status_class": "2xx", "client_api": "anthropic", "error_type": ""}, 3, 7)
    assert line == "ccr_requests_total,client_api=anthropic,status_class=2xx value=3.0 7"


def test_spaces_commas_and_equals_are_escaped_where_line_protocol_needs_it():
    assert encode_line("m x,y=z", {"k ,=": "a b,c=d"}, 0.5, 1) == r"m\ x\,y=z,k\ \,\==a\ b\,c\=d value=0.5 1"


def test_what_line_protocol_cannot_carry_becomes_the_replacement_character():
    line = encode_line("m", {"a": "one\ntwo", "b": "ends\\", "c": "x\\,y", "d": "back\\slash"}, 1, 1)
    assert "\n" not in line
    assert parse_line(line, v1=True)[1] == {
        "a": f"one{REPLACEMENT}two",
        "b": f"ends{REPLACEMENT}",
        "c": f"x{REPLACEMENT},y",
        "d": "back\\slash",
    }


def test_names_influxdb_reserves_are_prefixed():
    assert encode_line("_m", {"_x": "1", "time": "2"}, 1, 1) == "metric_m,label_time=2,label_x=1 value=1.0 1"
    assert encode_line("#m", {}, 1, 1) == "metric_#m value=1.0 1"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_not_written(value):
    assert encode_line("m", {}, value, 1) is None


def test_small_and_large_floats_keep_a_form_line_protocol_reads():
    assert encode_line("m", {}, 1e-05, 1) == "m value=1e-05 1"
    assert encode_line("m", {}, 12345678901234567890, 1) == "m value=1.2345678901234567e+19 1"


_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


@given(
    measurement=_text,
    tags=st.dictionaries(_text, _text, max_size=4),
    value=st.floats(allow_nan=False, allow_infinity=False),
)
def test_every_line_reads_back_the_same_with_either_parser(measurement, tags, value):
    # No two keys made one (by the name rules, or by the escaping: control characters all become U+FFFD).
    written = {influx_export._representable(influx_export._name(key, "label"), ",= ") for key in tags}
    assume(len(written) == len(tags))
    line = encode_line(measurement, tags, value, 1767225600)
    assert line is not None and "\n" not in line and "\r" not in line
    expected_tags = {}
    for key, tag_value in tags.items():
        if tag_value:
            name = influx_export._name(key, "label")
            expected_tags[influx_export._representable(name, ",= ")] = influx_export._representable(tag_value, ",= ")
    expected = (
        influx_export._representable(influx_export._name(measurement, "metric"), ", "),
        expected_tags,
        value,
        1767225600,
    )
    assert parse_line(line, v1=True) == expected
    assert parse_line(line, v1=False) == expected


def test_a_page_becomes_counters_histogram_counts_and_gauges_without_created_nan_or_buckets():
    lines = exposition_to_lines(PAGE, 100, static_tags={"gateway": "gw-1"})
    assert lines == [
        "ccr_requests_total,client_api=anthropic,gateway=gw-1,status_class=2xx value=12.0 100",
        "ccr_requests_total,client_api=openai,gateway=gw-1,status_class=5xx value=1.0 100",
        "ccr_gateway_overhead_seconds_count,client_api=anthropic,gateway=gw-1 value=12.0 100",
        "ccr_gateway_overhead_seconds_sum,client_api=anthropic,gateway=gw-1 value=0.07 100",
        "ccr_child_up,child=extproc-0,gateway=gw-1 value=1.0 100",
    ]


def test_buckets_come_with_their_le_tag_when_asked():
    lines = exposition_to_lines(PAGE, 100, buckets=True)
    assert "ccr_gateway_overhead_seconds_bucket,client_api=anthropic,le=0.05 value=11.0 100" in lines
    assert "ccr_gateway_overhead_seconds_bucket,client_api=anthropic,le=+Inf value=12.0 100" in lines


def test_a_page_that_does_not_parse_is_a_value_error():
    with pytest.raises(ValueError):
        exposition_to_lines("not { a metrics page", 1)


# --- buffer, backoff, outage ---------------------------------------------------------------------


def test_a_full_buffer_drops_its_oldest_lines_and_counts_them():
    buffer = LineBuffer(3)
    buffer.add(["a", "b"])
    buffer.add(["c", "d", "e"])
    assert buffer.take(10) == ["c", "d", "e"] and buffer.dropped == 2


def test_a_batch_given_back_goes_before_newer_lines_and_the_oldest_go_past_capacity():
    buffer = LineBuffer(4)
    buffer.add(["a", "b", "c"])
    batch = buffer.take(2)
    buffer.add(["d", "e", "f"])
    buffer.give_back(batch)
    assert buffer.dropped == 2
    assert buffer.take(10) == ["c", "d", "e", "f"]


def test_backoff_doubles_up_to_its_maximum_honours_retry_after_and_resets():
    backoff = Backoff(1, 8)
    assert [backoff.failed() for _ in range(5)] == [1, 2, 4, 8, 8]
    backoff.succeeded()
    assert backoff.failed(retry_after=5) == 5
    assert backoff.failed(retry_after=100) == 8


def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends():
    outage = Outage("writing")
    assert outage.failed(10, "refused") is not None
    assert outage.failed(11, "refused") is None
    assert outage.recovered(40) == "writing works again after 30 s and 2 failed tries"
    assert outage.recovered(41) is None


# --- against a local receiver ----------------------------------------------------------------------


@dataclass
class Receiver:
    """Stands in for InfluxDB's write endpoint: records each request, answers ``status``."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    first_answer_after_s: float = 0.0  # a slow first write

    async def write(self, request: web.Request) -> web.Response:
        if not self.requests and self.first_answer_after_s:
            self.requests.append({"status": 0, "body": b""})  # seen, never answered in time
            await asyncio.sleep(self.first_answer_after_s)
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
                "status": self.status,
            }
        )
        return web.Response(status=self.status, headers=self.headers, text="" if self.status == 204 else "nope")

    @property
    def lines(self) -> list[str]:
        return [line for r in self.requests if r["status"] < 300 for line in r["body"].decode().splitlines()]


async def _serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    # auto_decompress off: the receiver sees the bytes as sent; a short shutdown: a hanging answer is dropped
    runner = web.AppRunner(app, auto_decompress=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def metrics_url() -> AsyncIterator[str]:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", page)
    runner, port = await _serve(app)
    yield f"http://127.0.0.1:{port}/metrics"
    await runner.cleanup()


async def _start_receiver(receiver: Receiver, port: int = 0) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/api/v2/write", receiver.write)
    runner, port = await _serve(app, port)
    return runner, f"http://127.0.0.1:{port}"


def _config(metrics_url: str, influx_url: str, **overrides) -> ExportConfig:
    settings = {"retry_first_s": 0.001, "retry_max_s": 0.002, "timeout_s": 2.0, **overrides}
    return ExportConfig((metrics_url,), influx_url, "claude-router", "metrics", TOKEN, **settings)


def _clock(start: int = 1767225600) -> Callable[[], float]:
    seconds = itertools.count(start)
    return lambda: float(next(seconds))


async def test_a_write_carries_the_org_bucket_precision_token_and_the_lines(metrics_url):
    receiver = Receiver()
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(metrics_url, influx, static_tags={"gateway": "gw-1"}), session, _clock())
            await exporter.scrape_once()
            assert await exporter.write_once()
    finally:
        await runner.cleanup()
    (request,) = receiver.requests
    assert request["path"] == "/api/v2/write"
    assert request["query"] == {"org": "claude-router", "bucket": "metrics", "precision": "s"}
    assert request["headers"]["Authorization"] == f"Token {TOKEN}"
    assert request["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    lines = request["body"].decode().splitlines()
    assert "ccr_requests_total,client_api=anthropic,gateway=gw-1,status_class=2xx value=12.0 1767225600" in lines
    assert "ccr_influx_export_buffered_lines,gateway=gw-1 value=5.0 1767225600" in lines
    assert exporter.written_lines == len(lines) and not exporter.buffer


async def test_gzip_is_sent_with_its_content_encoding(metrics_url):
    receiver = Receiver()
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(metrics_url, influx, gzip=True), session, _clock())
            await exporter.scrape_once()
            assert await exporter.write_once()
    finally:
        await runner.cleanup()
    assert receiver.requests[0]["headers"]["Content-Encoding"] == "gzip"
    assert b"ccr_requests_total," in receiver.requests[0]["body"]  # the receiver decompressed it


async def test_lines_kept_while_influxdb_is_away_arrive_once_when_it_is_back(metrics_url, caplog):
    caplog.set_level(logging.INFO, logger="ccr_gateway.influx_export")
    port = _free_port()
    receiver = Receiver()
    async with aiohttp.ClientSession() as session:
        exporter = InfluxExporter(_config(metrics_url, f"http://127.0.0.1:{port}", batch_lines=4), session, _clock())
        for _ in range(3):
            await exporter.scrape_once()
            assert not await exporter.write_once()  # refused: nothing listens
        buffered = len(exporter.buffer)
        runner, _ = await _start_receiver(receiver, port)
        try:
            while exporter.buffer:
                assert await exporter.write_once()
        finally:
            await runner.cleanup()
    assert len(receiver.lines) == buffered == 3 * 5 + 3 * 6  # 5 lines per page, 6 of the exporter's own
    assert len(set(receiver.lines)) == len(receiver.lines)  # each once
    assert {line.rsplit(" ", 1)[1] for line in receiver.lines} == {"1767225600", "1767225601", "1767225602"}
    assert exporter.failed_writes == 3 and exporter.buffer.dropped == 0
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1, "one log line per outage, not one per try"
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


async def test_a_long_outage_keeps_the_newest_lines_and_counts_the_dropped(metrics_url, caplog):
    caplog.set_level(logging.INFO, logger="ccr_gateway.influx_export")
    receiver = Receiver(status=503, headers={"Retry-After": "0"})
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(metrics_url, influx, buffer_lines=20, batch_lines=20), session, _clock())
            for _ in range(4):  # 11 lines a scrape: 44 made, 20 kept
                await exporter.scrape_once()
                assert not await exporter.write_once()
            assert len(exporter.buffer) == 20 and exporter.buffer.dropped == 24
            receiver.status = 204
            assert await exporter.write_once() and not exporter.buffer
            await exporter.scrape_once()
            assert await exporter.write_once()
    finally:
        await runner.cleanup()
    assert "ccr_influx_export_dropped_lines_total value=24.0 1767225604" in receiver.lines
    assert not any(line.endswith(" 1767225600") for line in receiver.lines), "the oldest were dropped"
    assert any("24 lines dropped meanwhile" in r.getMessage() for r in caplog.records)


async def test_lines_influxdb_refuses_as_malformed_are_dropped_not_retried(metrics_url, caplog):
    receiver = Receiver(status=400)
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(metrics_url, influx), session, _clock())
            await exporter.scrape_once()
            assert await exporter.write_once()
    finally:
        await runner.cleanup()
    assert exporter.refused_lines == 11 and not exporter.buffer and exporter.failed_writes == 0
    assert "InfluxDB refused 11 lines (HTTP 400)" in caplog.text


async def test_an_unreachable_metrics_page_is_logged_once_and_counted(caplog):
    receiver = Receiver()
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(f"http://127.0.0.1:{_free_port()}/metrics", influx), session, _clock())
            for _ in range(3):
                await exporter.scrape_once()
    finally:
        await runner.cleanup()
    assert exporter.failed_scrapes == 3
    assert len(exporter.buffer) == 3 * 6  # the exporter's own lines still go out
    assert len([r for r in caplog.records if "failing" in r.getMessage()]) == 1


async def test_run_scrapes_on_its_interval_writes_and_flushes_on_stop(metrics_url):
    receiver = Receiver()
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(metrics_url, influx, interval_s=0.05), session, _clock())
            stop = asyncio.Event()
            task = asyncio.create_task(exporter.run(stop))
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, 5)
    finally:
        await runner.cleanup()
    stamps = {line.rsplit(" ", 1)[1] for line in receiver.lines}
    assert len(stamps) >= 3 and not exporter.buffer


async def test_stopping_in_the_middle_of_a_write_loses_nothing(metrics_url):
    receiver = Receiver(first_answer_after_s=5)
    runner, influx = await _start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            exporter = InfluxExporter(_config(metrics_url, influx, interval_s=0.05), session, _clock())
            stop = asyncio.Event()
            task = asyncio.create_task(exporter.run(stop))
            await asyncio.sleep(0.3)  # the first write hangs meanwhile
            stop.set()
            await asyncio.wait_for(task, 5)
    finally:
        await runner.cleanup()
    stamps = {line.rsplit(" ", 1)[1] for line in receiver.lines}
    assert "1767225600" in stamps and len(stamps) >= 3, "the hanging batch was written by the final drain"
    assert not exporter.buffer


# --- command line ---------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    influx_export.add_arguments(parser)
    return parser.parse_args(["--influx", "http://127.0.0.1:8086", "--org", "o", "--bucket", "b", *argv])


def test_the_token_comes_from_the_environment_only(capsys):
    with pytest.raises(SystemExit):
        _args("--token", TOKEN)
    assert "put it in $INFLUX_TOKEN" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\$INFLUX_TOKEN is not set"):
        influx_export.config_from(_args(), {})
    config = influx_export.config_from(_args("--token-env", "MY_TOKEN", "--tag", "gateway=gw-1"), {"MY_TOKEN": TOKEN})
    assert config.token == TOKEN and config.static_tags == {"gateway": "gw-1"}
    assert TOKEN not in repr(config)
    assert config.metrics_urls == ("http://127.0.0.1:9464/metrics",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0.5"], "at least 1 s"),
        (["--tag", "novalue"], "KEY=VALUE"),
        (["--metrics", "127.0.0.1:9464/metrics"], "not an http"),
        (["--buffer-lines", "10", "--batch-lines", "100"], "--buffer-lines at least"),
    ],
)
def test_bad_options_are_told_in_one_line(argv, message):
    with pytest.raises(ValueError, match=message):
        influx_export.config_from(_args(*argv), {"INFLUX_TOKEN": TOKEN})


def test_the_command_without_a_token_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    assert influx_export.run(_args()) == 2
    assert capsys.readouterr().err == (
        "ccr-gateway influx-export: $INFLUX_TOKEN is not set: export the InfluxDB write token in it\n"
    )


# --- the downsampling tasks ------------------------------------------------------------------------

TASKS = sorted((ROOT / "deploy" / "observability" / "influxdb").glob("*.flux"))


def test_the_downsampling_tasks_tell_cumulative_series_from_gauges_as_the_exporter_names_them():
    patterns = {match for task in TASKS for match in re.findall(r"[=!]~ /([^/]+)/", task.read_text())}
    assert len(TASKS) == 2 and len(patterns) == 1, patterns
    cumulative = re.compile(patterns.pop())
    sample_suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    families = [family for family in REGISTRY.collect() if family.name.startswith(("ccr_", "gen_ai_"))]
    assert {"counter", "histogram", "gauge"} <= {family.type for family in families}
    assert genai_metrics.OVERHEAD._name in {family.name for family in families}  # extproc's families registered
    for family in families:
        for suffix in sample_suffixes[family.type]:
            measurement = family.name + suffix  # what exposition_to_lines names the sample's lines
            assert bool(cumulative.search(measurement)) == (family.type != "gauge"), measurement


def test_the_tasks_read_and_write_the_buckets_the_docs_create():
    hourly, daily = (task.read_text() for task in sorted(TASKS, key=lambda p: "1d" in p.name))
    assert 'from(bucket: "metrics")' in hourly and 'to(bucket: "metrics_1h")' in hourly
    assert 'from(bucket: "metrics_1h")' in daily and 'to(bucket: "metrics_1d")' in daily
    readme = (ROOT / "deploy" / "observability" / "influxdb" / "README.md").read_text()
    for bucket, retention in (("metrics", "7d"), ("metrics_1h", "90d"), ("metrics_1d", "730d")):
        assert f"--name {bucket} --retention {retention}" in readme
