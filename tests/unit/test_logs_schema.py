"""The log line's schema: the formatter of every Python process and `up`'s rewrite of Envoy's lines
write JSON that deploy/observability/logging/log-line.schema.json accepts, with the request's fields
from ccr.v1.log_context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from ccr.v1 import log_context
from ccr_gateway.envoy_log import EnvoyJsonLines, EnvoyLogFilter
from ccr_gateway.logs import JsonFormatter, level_name, process_role, utc_time

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "deploy/observability/logging/log-line.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
REQUEST_ID = "3f2a9c1e-8b7d-4e2f-9a1b-0c3d4e5f6a7b"


def valid(line: str | bytes) -> dict:
    entry = json.loads(line)
    VALIDATOR.validate(entry)
    return entry


def record(message: str = "hello world", *args: object, level: int = logging.INFO, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("extproc.processor", level, __file__, 1, message, args, exc_info)


def formatted(log_record: logging.LogRecord, process: str = "extproc-0") -> dict:
    return valid(JsonFormatter({}, process=process).format(log_record))


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_a_plain_line_has_the_required_fields_and_no_request_fields():
    entry = formatted(record())
    assert list(entry) == ["time", "level", "logger", "message", "process", "pid"]
    assert entry["level"] == "info" and entry["logger"] == "extproc.processor" and entry["message"] == "hello world"
    assert entry["process"] == "extproc-0" and entry["pid"] > 0


def test_the_request_fields_come_from_the_log_context():
    with log_context.bound(request_id=REQUEST_ID, trace_id=TRACE_ID, span_id=SPAN_ID):
        with log_context.bound(tenant="acme"):
            inner = formatted(record())
        outer = formatted(record())
    after = formatted(record())
    assert inner | {} == {**inner, "request_id": REQUEST_ID, "trace_id": TRACE_ID, "span_id": SPAN_ID, "tenant": "acme"}
    assert "tenant" not in outer and outer["request_id"] == REQUEST_ID
    assert not {"request_id", "trace_id", "span_id", "tenant"} & set(after)


def test_fields_given_with_extra_win_over_the_context():
    logger = logging.getLogger("ccr.test.extra")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({}, process="up"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with log_context.bound(request_id="from-context", tenant="acme"):
            logger.warning("queued", extra={"request_id": "from-record"})
    finally:
        logger.removeHandler(handler)
    entry = valid(stream.getvalue())
    assert entry["request_id"] == "from-record" and entry["tenant"] == "acme"


def test_a_traceback_is_the_exception_field():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = formatted(record("failed", level=logging.ERROR, exc_info=sys.exc_info()))
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback") and "RuntimeError: boom" in entry["exception"]


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (5, "debug"),
        (10, "debug"),
        (15, "debug"),
        (20, "info"),
        (25, "info"),
        (30, "warning"),
        (40, "error"),
        (50, "critical"),
        (60, "critical"),
    ],
)
def test_every_level_number_maps_to_a_schema_level(number: int, name: str):
    assert level_name(number) == name
    assert formatted(record(level=number))["level"] == name


def test_time_is_rfc3339_utc_with_milliseconds():
    assert utc_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_time(1769860800.1239) == "2026-01-31T12:00:00.123Z"
    assert utc_time(1769860800.9999) == "2026-01-31T12:00:00.999Z"
    assert utc_time(1769860801.0) == "2026-01-31T12:00:01.000Z"  # the cached second moves on


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["--log-level", "info", "up", "-c", "gateway.yaml"], "up"),
        (["--log-level", "warning", "control-plane", "-c", "p.yaml", "--xds", "127.0.0.1:1"], "control-plane"),
        (["--log-level", "info", "extproc", "--listen", "unix:/tmp/ccr-run-x/extproc-3.sock"], "extproc-3"),
        (["extproc", "--listen", "unix:/tmp/ccr-extproc.sock"], "extproc"),
        (["--log-level", "info", "ledger", "--queue", "ccr.usage"], "ledger"),
        (["fake-provider", "--port", "9100"], "fake-provider"),
        (["keys", "create", "--tenant", "acme"], "keys"),
        ([], "ccr-gateway"),
    ],
)
def test_the_process_role_comes_from_the_command_line(argv: list[str], role: str):
    assert process_role(argv) == role
    assert formatted(record(), process=role)["process"] == role


# --- ccr.v1.log_context ------------------------------------------------------------------------------


def test_bind_adds_fields_and_reset_restores_exactly_what_was_there():
    assert log_context.current() == {}
    first = log_context.bind(request_id="r1", trace_id=TRACE_ID)
    second = log_context.bind(tenant="acme", request_id=None)  # None leaves a field alone
    assert log_context.current() == {"request_id": "r1", "trace_id": TRACE_ID, "tenant": "acme"}
    log_context.reset(second)
    assert log_context.current() == {"request_id": "r1", "trace_id": TRACE_ID}
    log_context.reset(first)
    assert log_context.current() == {}


def test_an_empty_field_is_not_written():
    with log_context.bound(request_id=REQUEST_ID, tenant=""):
        entry = formatted(record())
    assert entry["request_id"] == REQUEST_ID and "tenant" not in entry


def test_the_fields_are_read_only():
    with log_context.bound(request_id="r1"), pytest.raises(TypeError):
        log_context.current()["request_id"] = "r2"  # type: ignore[index]


async def test_concurrent_requests_keep_their_own_fields_and_tasks_inherit_them():
    lines: dict[str, list[dict]] = {"a": [], "b": []}
    formatter = JsonFormatter({}, process="extproc-0")

    async def child(name: str) -> None:
        await asyncio.sleep(0)
        lines[name].append(valid(formatter.format(record("child of %s", name))))

    async def request(name: str, tenant: str) -> None:
        with log_context.bound(request_id=f"request-{name}"):
            await asyncio.sleep(0)
            with log_context.bound(tenant=tenant):
                task = asyncio.create_task(child(name))  # created here: the context is copied now
            lines[name].append(valid(formatter.format(record("after tenant of %s", name))))
            await task

    await asyncio.gather(request("a", "acme"), request("b", "globex"))
    assert [(e["request_id"], e.get("tenant")) for e in lines["a"]] == [("request-a", None), ("request-a", "acme")]
    assert [(e["request_id"], e.get("tenant")) for e in lines["b"]] == [("request-b", None), ("request-b", "globex")]
    assert log_context.current() == {}


# --- Envoy's lines -----------------------------------------------------------------------------------


def test_envoy_lines_become_schema_lines_in_utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        converter = EnvoyJsonLines(pid=4242, secrets=("gemini-provider-key",))
        warning = valid(converter.convert(b"[2026-01-31 07:00:00.250][envoy][warning] upstream gemini-provider-key\n"))
        continued = valid(converter.convert(b"  second line of that message\n"))
        trace = valid(converter.convert(b"[2026-01-31 07:00:01.000][envoy][trace] x\n"))
        critical = valid(converter.convert(b"[2026-01-31 07:00:02.000][envoy][critical] y\n"))
        no_date = valid(converter.convert(b"[2026-13-45 07:00:02.000][envoy][info] z\n"))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert warning == {
        "time": "2026-01-31T12:00:00.250Z",
        "level": "warning",
        "logger": "envoy",
        "message": "upstream [redacted]",
        "process": "envoy",
        "pid": 4242,
    }
    assert continued["level"] == "warning" and continued["message"] == "  second line of that message"
    assert trace["level"] == "debug" and critical["level"] == "critical"
    assert no_date["message"] == "z"  # the time it was read


def test_the_envoy_log_filter_writes_json_lines_when_given_envoy_s_pid():
    other = b"[2026-01-01 00:00:00.000][envoy][warning] lds: listener 'ccr_listener' config rejected\n"
    wip = (
        b'[2026-01-01 00:00:00.000][envoy][warning] Message type "envoy.extensions.filters.http.sse_to_metadata'
        b".v3.SseToMetadata\" is contained in proto file 'envoy/extensions/filters/http/sse_to_metadata/v3/"
        b"sse_to_metadata.proto' marked as work-in-progress\n"
    )
    out = io.BytesIO()
    envoy_log = EnvoyLogFilter(io.BytesIO(wip + other), out, json_pid=7)
    envoy_log.start()
    envoy_log.join(timeout=5)
    (line,) = out.getvalue().splitlines()
    assert valid(line)["message"] == "lds: listener 'ccr_listener' config rejected"
