"""The scanner the e2e session runs over every captured log at its end (tests/e2e/conftest.py):
it finds each kind of secret the tests hand out, raw or JSON-escaped, and lets masked ones pass."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccr_gateway.logs import JsonFormatter
from extproc.auth.keys import format_key, new_key_id, new_secret
from tests.e2e import log_secrets
from tests.e2e.gateway import PROVIDER_KEYS

VIRTUAL_KEY = format_key(new_key_id(), new_secret())
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImEifQ.eyJzdWIiOiJhbGljZSIsIm9yZyI6ImFjbWUifQ.c2lnbmF0dXJl"


@pytest.fixture
def planted() -> Iterator[Path]:
    """A directory outside pytest's temporary one: the session's own scan must not find the
    secrets these tests plant."""
    with tempfile.TemporaryDirectory(prefix="ccr-log-scan-") as directory:
        yield Path(directory)


def scan(directory: Path, *lines: str) -> log_secrets.ScanReport:
    log = directory / "sub" / "gateway.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("".join(line + "\n" for line in lines))
    return log_secrets.scan(log_secrets.log_files(directory), log_secrets.known_secrets({}), log_secrets.load_schema())


def json_line(message: str) -> str:
    return json.dumps(
        {"time": "2026-01-31T12:00:00.000Z", "level": "warning", "logger": "t", "message": message}
        | {"process": "up", "pid": 1}
    )


def test_each_secret_the_tests_hand_out_is_found_raw_or_json_escaped(planted: Path):
    gemini_key = PROVIDER_KEYS["CCR_TEST_GEMINI_KEY"]  # no recognisable shape: found by value
    report = scan(
        planted,
        f"upstream said {gemini_key}",
        json_line(f"x-api-key: {VIRTUAL_KEY}"),
        json.dumps({"message": f"token {JWT}"}).replace("/", "\\/"),
        "starting ccr-gateway:",
    )
    assert [(f.line_number, f.what) for f in report.findings] == [
        (1, "the value of CCR_TEST_GEMINI_KEY"),
        (2, "a virtual key"),
        (3, "a JWT"),
    ]
    assert report.lines == 4 and report.json_log_lines == 1


def test_masked_secrets_and_key_ids_pass(planted: Path):
    secrets = (VIRTUAL_KEY, JWT, PROVIDER_KEYS["CCR_TEST_GEMINI_KEY"])
    record = logging.LogRecord("extproc.auth", logging.WARNING, __file__, 1, "refused %s %s %s", secrets, None)
    formatter_output = JsonFormatter(PROVIDER_KEYS, process="extproc-0").format(record)
    report = scan(planted, formatter_output, f"key {VIRTUAL_KEY.split('_')[0]} revoked")
    assert report.findings == [] and report.json_log_lines == 1


def test_a_log_line_outside_the_schema_is_a_finding(planted: Path):
    entry = json.loads(json_line("hello")) | {"trace_id": "not-hex"}
    (finding,) = scan(planted, json.dumps(entry)).findings
    assert finding.what.startswith("not in the log schema")
