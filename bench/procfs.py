"""CPU time and memory of processes, read from /proc (Linux only; no psutil needed).

CPU is ``utime + stime`` from ``/proc/<pid>/stat``: all threads of the process, including threads
that have already exited, in clock ticks (10 ms on most kernels, so measure windows of seconds).
RSS is ``VmRSS`` from ``/proc/<pid>/status``; a group's footprint (``footprint_kb``) comes from
``/proc/<pid>/smaps``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_s: float  # user + system
    start_ticks: int  # identifies the process: a reused pid has a different start time


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split at the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        start_ticks=int(fields[19]),
    )


def footprint_kb(pids: Iterable[int]) -> int:
    """The resident memory of a group of processes, each page counted once: its anonymous memory
    (private to each process: they are exec'd, not forked) plus each file mapping's resident pages
    once for the group (the largest resident size of that file range among them). A sum of RSS
    counts the code every Python process maps (the interpreter, grpc's and protobuf's extension
    modules) once per process; a sum of PSS would count the group's share of pages it shares with
    processes outside it (the benchmark's other Envoys and Pythons) and come out too small."""
    anonymous, files = 0, {}  # files: (device, inode, offset, length) -> resident kB
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps", "rb") as f:
                key = None
                for line in f:
                    head = line.split(None, 5)
                    if b"-" in head[0] and len(head) >= 5:  # "start-end perms offset dev inode [path]"
                        # A file range: its device, inode, offset and length; None: anonymous memory.
                        key = None if head[4] == b"0" else (head[3], head[4], head[2], _length(head[0]))
                    elif head[0] == b"Rss:":
                        kb = int(head[1])
                        if key is None:
                            anonymous += kb
                        else:
                            files[key] = max(files.get(key, 0), kb)
        except OSError:
            continue
    return anonymous + sum(files.values())


def _length(span: bytes) -> int:
    start, _, end = span.partition(b"-")
    return int(end, 16) - int(start, 16)


def read_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (children, grandchildren...)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None:
            children.setdefault(stat.ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds and RSS of one component (a set of processes) at one moment."""

    cpu_by_pid: dict[int, float]
    rss_kb: int

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_by_pid.values())

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(self.cpu_by_pid)


def measure(pids: Iterable[int]) -> Usage:
    cpu: dict[int, float] = {}
    rss = 0
    for pid in pids:
        stat = read_stat(pid)
        if stat is None:
            continue
        cpu[pid] = stat.cpu_s
        rss += read_rss_kb(pid)
    return Usage(cpu, rss)


class Components:
    """Named groups of processes (envoy, ext_proc, ...), re-discovered before every snapshot so
    that a restarted child is found; ``discover`` returns {component: [pid, ...]}."""

    def __init__(self, discover: Callable[[], Mapping[str, list[int]]]) -> None:
        self._discover = discover

    def pids(self) -> dict[str, list[int]]:
        return {name: list(pids) for name, pids in self._discover().items()}

    def snapshot(self) -> dict[str, Usage]:
        return {name: measure(pids) for name, pids in self._discover().items()}


def cpu_delta(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> dict[str, float]:
    """CPU seconds spent per component between two snapshots. Only processes present at both ends
    count: the CPU of a process that started or died inside the window is unknown (the runner
    reports such windows)."""
    delta: dict[str, float] = {}
    for name, end in after.items():
        start = before.get(name)
        if start is None:
            continue
        delta[name] = sum(
            max(0.0, cpu - start.cpu_by_pid[pid]) for pid, cpu in end.cpu_by_pid.items() if pid in start.cpu_by_pid
        )
    return delta


def changed(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> list[str]:
    """Components whose set of processes differs between two snapshots."""
    return sorted(name for name, end in after.items() if name in before and before[name].pids != end.pids)


def listening_pids(port: int) -> list[int]:
    """The processes holding a socket that listens on TCP ``port`` (any address, IPv4 or IPv6):
    sockets from /proc/net/tcp{,6}, their owners from /proc/<pid>/fd. Only the processes this user
    may inspect; [] when none."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; the socket's inode is field 10.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return []
    return [pid for pid in all_pids() if not inodes.isdisjoint(_fd_links(pid))]


def _fd_links(pid: int) -> list[str]:
    """What the process's open files point at; [] for a process not ours to inspect, or gone."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    links = []
    for fd in fds:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed since the listing
            continue
    return links
