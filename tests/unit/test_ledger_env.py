"""${VAR} expansion of connection strings and URLs safe to log."""

from __future__ import annotations

import pytest

from ledger.env import EnvError, expand_env, redact_url


def test_references_are_expanded_from_the_environment_given():
    url = "amqp://ledger:${MQ_PASSWORD}@${MQ_HOST}:5672/"
    assert expand_env(url, {"MQ_PASSWORD": "s3cr$t", "MQ_HOST": "mq"}) == "amqp://ledger:s3cr$t@mq:5672/"


def test_a_missing_variable_is_named():
    with pytest.raises(EnvError, match="MQ_PASSWORD is not set"):
        expand_env("amqp://u:${MQ_PASSWORD}@h/", {})


def test_text_without_braced_references_is_unchanged():
    assert expand_env("postgresql://u:pa$word@h/db", {}) == "postgresql://u:pa$word@h/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("postgresql://postgres:pw@db/ledger?sslmode=require", "postgresql://postgres:***@db/ledger?sslmode=require"),
        ("postgresql://postgres@db/ledger", "postgresql://postgres@db/ledger"),
        ("amqp://u:p@[::1]:5672/", "amqp://u:***@[::1]:5672/"),
    ],
)
def test_passwords_are_masked_for_logs(url, shown):
    assert redact_url(url) == shown
