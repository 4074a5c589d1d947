"""Connection strings kept in Vault, with real servers: a Redis that requires a password (the limits'
and the cache's connection, as a worker makes it) and the local PostgreSQL (the ledger's and the key
store's DSN, read at every connection). The Vault double holds the secrets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from ccr.v1 import vault_refs
from ccr.v1.env_refs import expand_env
from ccr_gateway.auth_wiring import connection_url
from tests.integration import redis_procs
from tests.vault_double import ManualClock, VaultDouble, threaded_double

REDIS_REF = "vault:secret/data/ccr/redis#url"
POSTGRES_REF = "vault:secret/data/ccr/postgres#dsn"


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[VaultDouble, ManualClock]]:
    clock = ManualClock()
    monkeypatch.setattr(vault_refs, "_DEFAULT", vault_refs.VaultReferences(clock=clock))
    with threaded_double() as double:
        monkeypatch.setenv("VAULT_ADDR", double.url)
        monkeypatch.setenv("VAULT_TOKEN", "root")
        monkeypatch.delenv("CCR_VAULT", raising=False)
        yield double, clock


def test_a_redis_password_rotated_in_vault_is_used_by_the_next_connection(tmp_path: Path, vault) -> None:
    double, clock = vault
    with contextlib.ExitStack() as processes:
        server = redis_procs.start_redis(processes, tmp_path, "redis", [])
        server.admin("CONFIG", "SET", "requirepass", "first-secret")
        url = f"redis://:{{}}@{redis_procs.HOST}:{server.port}/0"
        double.put_secret("ccr/redis", {"url": url.format("first-secret")})

        with redis.Redis.from_url(connection_url(REDIS_REF)) as client:
            assert client.ping()

        # Rotation: Redis takes the new password, Vault holds it; the next connection reads it.
        with redis.Redis.from_url(url.format("first-secret")) as admin:
            admin.config_set("requirepass", "second-secret")
        double.put_secret("ccr/redis", {"url": url.format("second-secret")})
        clock.now += vault_refs.CACHE_S + 1
        with redis.Redis.from_url(connection_url(REDIS_REF)) as client:
            assert client.ping()
        with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(url.format("first-secret")) as old:
            old.ping()


async def test_a_postgres_dsn_kept_in_vault_is_read_at_each_connection(vault) -> None:
    double, clock = vault
    double.put_secret("ccr/postgres", {"dsn": "postgresql://postgres@127.0.0.1:5432/test"})
    connection = await asyncpg.connect(expand_env(POSTGRES_REF))
    try:
        assert await connection.fetchval("SELECT current_database()") == "test"
    finally:
        await connection.close()
    double.put_secret("ccr/postgres", {"dsn": "postgresql://postgres@127.0.0.1:5432/postgres"})
    clock.now += vault_refs.CACHE_S + 1
    connection = await asyncpg.connect(expand_env(POSTGRES_REF))
    try:
        assert await connection.fetchval("SELECT current_database()") == "postgres"  # moved without a restart
    finally:
        await connection.close()
