"""Throwaway Redis deployments for the topology tests, every process on free ports in a temporary
directory of its own: a Sentinel group (a master, one replica, three sentinels with quorum 2) and
a Cluster of three masters. Both are context managers: whatever was started is killed and its
directory removed on exit, also when starting failed half way. The machine's Redis on 6379 is
never touched. Admin work uses the synchronous client: these run in fixtures, outside the tests'
event loop.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")
HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
SLOTS = 16384

# Sentinel: a master unanswered for DOWN_AFTER_MS is down; quorum 2 of 3 agree it is.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000

_ports_given: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never the same twice in a run (the cluster needs two per node
    before any of them binds)."""
    while True:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class RedisProcess:
    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True)

    def admin(self, *args: str | int) -> object:
        with self.client() as client:
            return client.execute_command(*args)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write to anyone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        log = self.directory / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def start_redis(
    stack: contextlib.ExitStack, root: Path, name: str, config: list[str], *, sentinel: bool = False, port: int = 0
) -> RedisProcess:
    """Start one redis-server (or sentinel) in ``root/name``; ``stack`` kills it on exit."""
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed")
    port = port or free_port()
    directory = root / name
    directory.mkdir()
    lines = [f"bind {HOST}", f"port {port}", f"dir {directory}", f"logfile {directory / 'redis.log'}"]
    if not sentinel:
        lines += ['save ""', "appendonly no"]
    conf = directory / "redis.conf"
    conf.write_text("\n".join([*lines, *config]) + "\n")
    command = [REDIS_SERVER, str(conf), *(["--sentinel"] if sentinel else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = RedisProcess(name, port, directory, process)
    stack.callback(started.kill)
    try:
        wait_until(lambda: process.poll() is None and started.admin("PING") is True, f"{name} on {port}")
    except TimeoutError as error:
        raise RuntimeError(f"{name} did not start:\n{started.log_tail()}") from error
    return started


# -- Sentinel ------------------------------------------------------------------------------------


@dataclass
class SentinelGroup:
    service: str
    master: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(s.address for s in self.sentinels)}/{self.service}"

    def masters_named(self) -> set[int]:
        """The master port each sentinel names now."""
        ports = set()
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                _host, port = sentinel.admin("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)  # type: ignore[misc]
                ports.add(int(port))
        return ports

    def wait_ready(self) -> None:
        """The replica in sync and every sentinel knowing the replica and the two other sentinels:
        before that, a kill would find no quorum or nobody to promote."""

        def replica_in_sync() -> bool:
            with self.replica.client() as client:
                return client.info("replication")["master_link_status"] == "up"

        def sentinels_agree() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.service)
                if state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                    return False
            return True

        wait_until(replica_in_sync, "the replica to sync")
        wait_until(sentinels_agree, "the sentinels to find each other and the replica")

    def wait_for_master(self, port: int, timeout_s: float = 30.0) -> None:
        wait_until(lambda: self.masters_named() == {port}, f"every sentinel to name {port} master", timeout_s)


@contextlib.contextmanager
def sentinel_group(service: str = "ccrtest") -> Iterator[SentinelGroup]:
    with tempfile.TemporaryDirectory(prefix="ccr-sentinel-") as root, contextlib.ExitStack() as stack:
        fast_sync = ["repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        master = start_redis(stack, Path(root), "master", fast_sync)
        replica = start_redis(stack, Path(root), "replica", [*fast_sync, f"replicaof {HOST} {master.port}"])
        watch = [
            f"sentinel monitor {service} {HOST} {master.port} 2",
            f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {service} 1",
        ]
        sentinels = [start_redis(stack, Path(root), f"sentinel{i}", watch, sentinel=True) for i in range(3)]
        group = SentinelGroup(service, master, replica, sentinels)
        group.wait_ready()
        yield group


# -- Cluster -------------------------------------------------------------------------------------


@dataclass
class ClusterGroup:
    nodes: list[RedisProcess]
    ids: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://{','.join(node.address for node in self.nodes)}"

    def owner(self, slot: int) -> RedisProcess:
        """The node that serves ``slot``, as the first node sees it."""
        for start, end, primary, *_replicas in self.nodes[0].admin("CLUSTER", "SLOTS"):  # type: ignore[attr-defined]
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == int(primary[1]))
        raise LookupError(f"slot {slot} is not served")

    def node_id(self, node: RedisProcess) -> str:
        return self.ids[self.nodes.index(node)]

    def begin_migration(self, slot: int, source: RedisProcess, target: RedisProcess) -> None:
        """Importing on the target, then migrating on the source: from here the source answers ASK
        for a key of the slot it no longer holds."""
        target.admin("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.admin("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def move_keys(self, slot: int, source: RedisProcess, target: RedisProcess) -> int:
        keys = source.admin("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            source.admin("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)  # type: ignore[misc]
        return len(keys)  # type: ignore[arg-type]

    def end_migration(self, slot: int, target: RedisProcess) -> None:
        """The slot is the target's on every node: the source answers MOVED from now on."""
        for node in [target, *(node for node in self.nodes if node is not target)]:
            node.admin("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))
        wait_until(lambda: all(self._owner_seen_by(node, slot) == target.port for node in self.nodes), "slot owner")

    @staticmethod
    def _owner_seen_by(node: RedisProcess, slot: int) -> int:
        for start, end, primary, *_replicas in node.admin("CLUSTER", "SLOTS"):  # type: ignore[attr-defined]
            if start <= slot <= end:
                return int(primary[1])
        return 0


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[ClusterGroup]:
    """``masters`` nodes, the slots split in even ranges, met by hand (what ``redis-cli --cluster
    create`` does, without its one-second polls)."""
    with tempfile.TemporaryDirectory(prefix="ccr-cluster-") as root, contextlib.ExitStack() as stack:
        nodes = []
        for index in range(masters):
            bus = free_port()
            config = [
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                "cluster-node-timeout 2000",
                f"cluster-port {bus}",
            ]
            node = start_redis(stack, Path(root), f"node{index}", config)
            nodes.append((node, bus))
        bounds = [SLOTS * index // masters for index in range(masters + 1)]
        for index, (node, _bus) in enumerate(nodes):
            node.admin("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            node.admin("CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1)
        first = nodes[0][0]
        for node, bus in nodes[1:]:
            first.admin("CLUSTER", "MEET", HOST, node.port, bus)

        def cluster_ok(node: RedisProcess) -> bool:
            info = dict(line.split(":", 1) for line in str(node.admin("CLUSTER", "INFO")).split())
            return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == masters

        wait_until(lambda: all(cluster_ok(node) for node, _bus in nodes), "the cluster to form")
        group = ClusterGroup([node for node, _bus in nodes])
        group.ids = [str(node.admin("CLUSTER", "MYID")) for node in group.nodes]
        yield group
