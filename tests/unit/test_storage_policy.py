"""The policy's `storage:` section (control_plane.policy.storage): defaults, ${VAR} references kept
as written, and mistakes reported with their line like the rest of the policy."""

from __future__ import annotations

import pytest

from control_plane.policy import PolicyError, PostgresSpec, RabbitMQSpec, SpoolSpec, StorageSpec, load_policy
from control_plane.policy.storage import DEFAULT_SQLITE_PATH

PROVIDERS = "providers:\n  - {name: p, api: anthropic, base_url: 'http://10.0.0.1:8000', models: [claude-sonnet-4-5]}\n"


def load(storage: str):
    return load_policy(PROVIDERS + storage, "gw.yaml")


def problems(storage: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(storage)
    return [str(problem) for problem in caught.value.problems]


def test_without_a_storage_section_there_is_none():
    assert load("").storage is None


def test_an_empty_mapping_means_the_local_sqlite_ledger_with_every_default():
    storage = load("storage: {}\n").storage
    assert storage == StorageSpec()
    assert storage.sqlite == DEFAULT_SQLITE_PATH == "~/.local/share/ccr-gateway/ledger.db"
    assert (storage.postgres, storage.rabbitmq, storage.retention_days, storage.compression) == (
        None,
        None,
        None,
        False,
    )
    assert storage.spool == SpoolSpec("~/.local/share/ccr-gateway/spool", 256 * 1024 * 1024)
    assert not storage.uses_broker


def test_a_full_section_is_read_with_its_references_unexpanded(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "secret-pg")
    monkeypatch.setenv("AMQP_URL", "amqp://u:secret-mq@mq/")
    storage = load(
        "storage:\n"
        "  postgres: {dsn: 'postgresql://ccr:${PGPASSWORD}@db:5432/ccr', pool_min: 1, pool_max: 20}\n"
        "  rabbitmq: {url: '${AMQP_URL}', queue: usage.q, dead_letter_exchange: usage.dlx}\n"
        "  spool: {dir: /var/lib/ccr/spool, max_bytes: 1GiB}\n"
        "  retention: 12 weeks\n"
        "  compression: true\n"
        "  sqlite: ${HOME}/ledger.db\n"
    ).storage
    assert storage == StorageSpec(
        postgres=PostgresSpec("postgresql://ccr:${PGPASSWORD}@db:5432/ccr", 1, 20),
        rabbitmq=RabbitMQSpec("${AMQP_URL}", "usage.q", "usage.dlx"),
        spool=SpoolSpec("/var/lib/ccr/spool", 1024**3),
        retention_days=84,
        compression=True,
        sqlite="${HOME}/ledger.db",
    )
    assert storage.uses_broker
    assert "secret" not in repr(storage)  # never expanded: nothing printed can hold the secret


def test_postgres_and_rabbitmq_have_their_defaults():
    storage = load("storage:\n  postgres: {dsn: 'postgres://db/ccr'}\n  rabbitmq: {url: 'amqps://mq'}\n").storage
    assert storage.postgres == PostgresSpec("postgres://db/ccr", 2, 10)
    assert storage.rabbitmq == RabbitMQSpec("amqps://mq", "ccr.usage", "ccr.usage.dlx")


@pytest.mark.parametrize("present", ["postgres: {dsn: 'postgresql://db/ccr'}", "rabbitmq: {url: 'amqp://mq'}"])
def test_postgres_and_rabbitmq_go_together(present):
    assert problems(f"storage:\n  {present}\n") == [
        "gw.yaml:4:3: storage: postgres and rabbitmq go together: the writer reads the queue"
    ]


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("storage: {postgress: {}}\n", "gw.yaml:3:11: storage.postgress: unknown field (did you mean 'postgres'?)"),
        ("storage: [postgres]\n", "gw.yaml:3:10: storage: must be a mapping, got a list"),
        (
            "storage:\n  postgres: {pool_max: 3}\n  rabbitmq: {url: 'amqp://mq'}\n",
            "gw.yaml:4:13: storage.postgres.dsn: is required",
        ),
        (
            "storage:\n  postgres: {dsn: 'mysql://db', pool_min: 2}\n  rabbitmq: {url: 'amqp://mq'}\n",
            "gw.yaml:4:19: storage.postgres.dsn: must be a URL starting with postgresql:// or postgres://, a ${VAR} or a vault: reference",
        ),
        (
            "storage:\n  postgres: {dsn: 'postgresql://db', pool_min: 5, pool_max: 2}\n  rabbitmq: {url: 'amqp://mq'}\n",
            "gw.yaml:4:48: storage.postgres.pool_min: must not exceed pool_max (2), got 5",
        ),
        (
            "storage:\n  postgres: {dsn: 'postgresql://db', pool_max: 0}\n  rabbitmq: {url: 'amqp://mq'}\n",
            "gw.yaml:4:48: storage.postgres.pool_max: must be between 1 and 1000, got 0",
        ),
        (
            "storage:\n  postgres: {dsn: 'postgresql://db'}\n  rabbitmq: {url: 'http://mq'}\n",
            "gw.yaml:5:19: storage.rabbitmq.url: must be a URL starting with amqp:// or amqps://, a ${VAR} or a vault: reference",
        ),
        (
            "storage:\n  postgres: {dsn: 'postgresql://db'}\n  rabbitmq: {url: 'amqp://mq', queue: 'a queue'}\n",
            "gw.yaml:5:39: storage.rabbitmq.queue: 'a queue' is not a valid RabbitMQ name ([A-Za-z0-9_.:-])",
        ),
        (
            "storage: {spool: {max_bytes: 10}}\n",
            "gw.yaml:3:30: storage.spool.max_bytes: must be at least 1MiB, got 10 bytes",
        ),
        (
            "storage: {spool: {max_bytes: lots}}\n",
            "gw.yaml:3:30: storage.spool.max_bytes: must be a size like 268435456, 256MiB or 1GB, got 'lots'",
        ),
        (
            "storage: {retention: 3 months}\n",
            "gw.yaml:3:22: storage.retention: must be a period like '90 days' or '12 weeks', got '3 months'",
        ),
        (
            "storage: {retention: 90}\n",
            "storage.retention: must be a period like '90 days' or '12 weeks', got an integer",
        ),
        (
            "storage: {retention: 0 days}\n",
            "storage.retention: must be a period like '90 days' or '12 weeks', got '0 days'",
        ),
        (
            "storage: {compression: yes please}\n",
            "gw.yaml:3:24: storage.compression: must be true or false, got a string",
        ),
        ("storage: {sqlite: ''}\n", "gw.yaml:3:19: storage.sqlite: must be a non-empty string, got a string"),
        (
            "storage: {sqlite: '${1X}/l.db'}\n",
            "gw.yaml:3:19: storage.sqlite: ${1X} does not name an environment variable",
        ),
        ("storage: {sqlite: '${HOME/l.db'}\n", "gw.yaml:3:19: storage.sqlite: has a ${ without its closing }"),
    ],
)
def test_storage_mistakes_are_reported_with_their_line(storage, expected):
    found = problems(storage)
    assert any(expected in problem for problem in found), found


def test_messages_never_repeat_a_connection_string():
    found = problems("storage:\n  postgres: {dsn: 'mysql://u:hunter2@db'}\n  rabbitmq: {url: 'http://u:hunter2@mq'}\n")
    assert len(found) == 2 and not any("hunter2" in problem for problem in found)


def test_a_password_written_in_a_connection_string_is_a_warning():
    policy = load(
        "storage:\n  postgres: {dsn: 'postgresql://ccr:hunter2@db/ccr'}\n  rabbitmq: {url: 'amqp://u:${MQ_PASS}@mq'}\n"
    )
    assert [str(w) for w in policy.warnings] == [
        "gw.yaml:4:19: warning: storage.postgres.dsn: holds a password: write it as a ${VAR} reference, set in the "
        "gateway's environment"
    ]


def test_storage_does_not_travel_to_ext_proc():
    policy = load("storage:\n  postgres: {dsn: 'postgresql://db'}\n  rabbitmq: {url: 'amqp://mq'}\n")
    assert "postgresql" not in str(policy.to_proto("1"))
