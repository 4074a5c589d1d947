"""ccr_gateway.logs: every log line is JSON and carries no secret, whatever the caller logged."""

from __future__ import annotations

import json
import logging

import pytest

from ccr_gateway.logs import MASK, JsonFormatter, redact, secret_values

ENV = {"CCR_OPENAI_KEY": "not-shaped-like-a-key-1234", "HOME": "/root", "SHORT_TOKEN": "abc", "PATH": "/bin"}


def line(message: str, *args: object, environ: dict[str, str] = ENV) -> dict:
    record = logging.LogRecord("ccr.test", logging.WARNING, __file__, 1, message, args, None)
    return json.loads(JsonFormatter(environ).format(record))


def test_a_header_map_in_a_warning_loses_its_credentials():
    headers = {
        ":path": "/v1/messages",
        "authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "x-api-key": "sk-ant-api03-abcdefghijklmnop",
        "x-goog-api-key": "AIzaSyA-1234567890abcdefghijklmnop",
        "content-type": "application/json",
    }
    text = line("attempt headers=%s", headers)["message"]
    assert "eyJhbGci" not in text and "sk-ant" not in text and "AIza" not in text
    assert "'/v1/messages'" in text and "application/json" in text
    assert text.count(MASK) == 3


def test_values_of_secret_environment_variables_are_masked_wherever_they_appear():
    assert line("provider said: bad key not-shaped-like-a-key-1234!")["message"] == f"provider said: bad key {MASK}!"
    assert secret_values(ENV) == ("not-shaped-like-a-key-1234",)  # short and non-secret names left alone


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("api_key=hunter2hunter2", "hunter2"),
        ('token: "abcdefgh12345"', "abcdefgh"),
        ("password='correct horse'", "horse"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("curl -H 'x-api-key: mykey12345'", "mykey"),
    ],
)
def test_credential_fields_keep_their_name_and_lose_their_value(text, secret):
    redacted = redact(text)
    assert MASK in redacted and secret not in redacted
    assert (
        redacted.split(MASK)[0]
        .rstrip("'\" :=")
        .lower()
        .endswith(("api_key", "token", "password", "authorization", "x-api-key"))
    )


def test_exceptions_are_redacted_too():
    try:
        raise ValueError("upstream rejected sk-proj-secretsecret")
    except ValueError:
        import sys

        record = logging.LogRecord("ccr.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter({}).format(record))
    assert "sk-proj" not in entry["exception"] and MASK in entry["exception"]
