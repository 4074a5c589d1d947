"""What the batch end-to-end tests share: a throwaway PostgreSQL database, and a RabbitMQ node of
their own that a test may stop and start again (the machine's broker is shared: never restarted)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.gateway import free_port, listening, wait_until

POSTGRES = os.environ.get("CCR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
RABBITMQ_SBIN = Path("/usr/lib/rabbitmq/bin")


@contextlib.contextmanager
def throwaway_database(prefix: str = "ccr_batch_test") -> Iterator[str]:
    """A new database's DSN, dropped afterwards; the test is skipped without PostgreSQL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    try:
        asyncio.run(admin(f"CREATE DATABASE {name}"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {exc}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@dataclass
class RabbitNode:
    """A RabbitMQ node on free ports with its data in ``directory``: durable queues and persistent
    messages survive ``restart`` as they would a production broker's. No plugins (no management
    listener to collide with the machine's node); the machine's epmd and Erlang cookie are shared."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def node(self) -> str:
        return f"ccrtest{self.port}@localhost"

    @classmethod
    def start_new(cls, directory: Path) -> RabbitNode:
        if not (RABBITMQ_SBIN / "rabbitmq-server").exists() and shutil.which("rabbitmq-server") is None:
            pytest.skip("rabbitmq-server is not installed: no broker of the test's own to restart")
        directory.mkdir(parents=True, exist_ok=True)
        node = cls(directory, free_port())
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node.port}\nloopback_users = none\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        node.start()
        return node

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        server = RABBITMQ_SBIN / "rabbitmq-server"
        command = [str(server) if server.exists() else "rabbitmq-server"]
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._environment())
        wait_until(lambda: self._up(), 90, f"RabbitMQ node {self.node}", interval=0.2)

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited:\n{(self.directory / 'server.log').read_text()[-3000:]}")
        return listening(self.port)

    def stop(self) -> None:
        """A clean broker shutdown (what a rolling restart does): SIGTERM, then wait."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
