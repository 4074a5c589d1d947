"""`ccr-gateway status`: every running gateway's policy, workers and clusters, and whether it is healthy.

Reads what the gateway's own processes publish, and sends no request through the listener:
- the state file each `up` keeps (ccr_gateway/state_file.py: pid, addresses, children);
- the control plane's status file (control_plane/server.py, PolicyStatusFile: the policy generation
  accepted and the last rejected edit);
- Envoy's admin API: ``/clusters?format=json`` (hosts with their health flags, circuit breaker
  limits) and ``/stats`` (``circuit_breakers.default.remaining_*``: the headroom left).

Healthy means: every child alive, Envoy's admin answering, every cluster with a healthy host and
room under each circuit breaker, and no policy edit rejected since the last accepted one. Exit
status 0 when every gateway is healthy, 1 otherwise, 3 when none runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccr_gateway import state_file

# The parsing of Envoy's admin documents and of the status file lives with the Admin API's
# GET /status (the control plane may not import this package); re-exported here for `status`.
from control_plane.admin.views_status import (
    ClusterHealth,
    cluster_health,
    rejection_pending,
)
from control_plane.admin.views_status import Headroom as Headroom
from control_plane.admin.views_status import host_is_healthy as host_is_healthy
from control_plane.admin.views_status import moment as _time

EXIT_UNHEALTHY = 1
EXIT_NONE_RUNNING = 3
ADMIN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class GatewayState:
    """One `up`'s state file, as written by the supervisor."""

    pid: int
    path: str
    raw: dict[str, Any]

    @property
    def listener(self) -> str:
        return str(self.raw.get("listener", ""))

    @property
    def admin(self) -> str:
        return str(self.raw.get("admin", ""))


@dataclass(frozen=True, slots=True)
class StateFiles:
    running: list[GatewayState]
    stale: list[str]  # what was removed: state files of dead `up`s (and their run directories)
    unreadable: list[str]  # files that are not a state document


@dataclass(frozen=True, slots=True)
class GatewayReport:
    state: dict[str, Any]
    policy: dict[str, Any] | None  # the control plane's status file; None when unreadable
    clusters: list[ClusterHealth] | None  # None: Envoy's admin did not answer
    problems: list[str]

    @property
    def healthy(self) -> bool:
        return not self.problems


# --- pure: from documents to a report --------------------------------------------------------------


def gateway_problems(
    state: dict[str, Any], policy: dict[str, Any] | None, clusters: list[ClusterHealth] | None
) -> list[str]:
    problems = [
        f"worker {child.get('name', '?')} is not running"
        + (f" (last exit {child['last_exit']})" if child.get("last_exit") is not None else "")
        for child in state.get("children", [])
        if not child.get("alive", False)
    ]
    if clusters is None:
        problems.append(f"Envoy's admin at {state.get('admin', '?')} does not answer")
    else:
        problems += [problem for cluster in clusters for problem in cluster.problems()]
    if policy is not None and rejection_pending(policy):
        problems.append("the last policy edit was rejected; the gateway runs the previous one")
    return problems


def _since(started: Any, now: datetime) -> str:
    moment = _time(started)
    if moment is None:
        return ""
    seconds = max(int((now - moment).total_seconds()), 0)
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 60:
        age = f"{seconds}s"
    elif hours < 1:
        age = f"{minutes}m"
    elif hours < 48:
        age = f"{hours}h {minutes % 60}m"
    else:
        age = f"{hours // 24}d {hours % 24}h"
    return f", up {age}"


def render(reports: list[GatewayReport], files: StateFiles, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    lines: list[str] = []
    for removed in files.stale:
        lines.append(f"stale: {removed} belonged to a gateway that is no longer running; removed")
    for path in files.unreadable:
        lines.append(f"unreadable state file {path}: ignored")
    for report in reports:
        if lines:
            lines.append("")
        lines += _render_one(report, now)
    if not reports:
        lines.append("no gateway running")
    return "\n".join(lines)


def _render_one(report: GatewayReport, now: datetime) -> list[str]:
    state = report.state
    lines = [
        f"gateway pid {state.get('pid', '?')}: {'healthy' if report.healthy else 'UNHEALTHY'}, "
        f"started {state.get('started', '?')}{_since(state.get('started'), now)}",
        f"  listener   {state.get('listener', '?')}   admin {state.get('admin', '?')}   xds {state.get('xds', '?')}",
    ]
    policy = report.policy
    if policy is None:
        lines.append(f"  policy     {state.get('policy_source', '?')} (control plane status unavailable)")
    else:
        providers = ", ".join(policy.get("providers", []))
        lines.append(
            f"  policy     generation {policy.get('version', '?')} from {policy.get('source', '?')}, "
            f"accepted {policy.get('accepted_at', '?')} (providers: {providers})"
        )
        rejected = policy.get("last_rejected")
        if rejected:
            pending = "still pending: the previous policy stays live" if rejection_pending(policy) else "since replaced"
            lines.append(f"  rejected   {rejected.get('at', '?')} ({pending}):")
            lines += [f"               {line}" for line in str(rejected.get("message", "")).splitlines()]
    for index, child in enumerate(state.get("children", [])):
        label = "processes " if index == 0 else "          "
        alive = "alive" if child.get("alive") else "DOWN"
        detail = f"  {label} {child.get('name', '?'):<14} pid {child.get('pid', '?'):<8} {alive:<5} restarts {child.get('restarts', 0)}"
        if child.get("restarts"):
            detail += f" (last {child.get('last_restart', '?')}, exit {child.get('last_exit', '?')})"
        lines.append(detail)
    if report.clusters is not None:
        for index, cluster in enumerate(report.clusters):
            label = "clusters  " if index == 0 else "          "
            room = "  ".join(f"{kind} {h.remaining}/{h.maximum} free" for kind, h in cluster.headroom.items())
            lines.append(f"  {label} {cluster.name:<28} {cluster.healthy}/{cluster.hosts} healthy  {room}".rstrip())
    for index, (metric, url) in enumerate(sorted(state.get("metrics", {}).items())):
        label = "metrics   " if index == 0 else "          "
        lines.append(f"  {label} {metric:<14} {url}")
    lines += [f"  problem    {problem}" for problem in report.problems]
    return lines


def to_json(reports: list[GatewayReport], files: StateFiles) -> dict[str, Any]:
    return {
        "gateways": [
            {
                **report.state,
                "healthy": report.healthy,
                "problems": report.problems,
                "policy": report.policy,
                "clusters": None if report.clusters is None else [asdict(c) for c in report.clusters],
            }
            for report in reports
        ],
        "stale": files.stale,
        "unreadable": files.unreadable,
    }


def exit_status(reports: list[GatewayReport]) -> int:
    if not reports:
        return EXIT_NONE_RUNNING
    return 0 if all(r.healthy for r in reports) else EXIT_UNHEALTHY


# --- I/O: state files, the control plane's file, Envoy's admin ------------------------------------


def read_states(directory: Path | None = None, remove_stale: bool = False) -> StateFiles:
    """The state files of running gateways; with ``remove_stale``, those of dead ones are deleted."""
    directory = directory or state_file.state_dir()
    running, stale_pids, unreadable = [], [], []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            pid = int(raw["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(str(path))
            continue
        if state_file.is_running_gateway(pid):
            running.append(GatewayState(pid, str(path), raw))
        else:
            stale_pids.append(str(path))
    if remove_stale and (stale_pids or unreadable):
        # state_file's own clean-up (the one `up` runs): it also deletes the dead one's run directory.
        stale = state_file.remove_stale(directory)
        unreadable = [path for path in unreadable if Path(path).exists()]
    else:
        stale = stale_pids
    return StateFiles(running, stale, unreadable)


def fetch_json(url: str, timeout: float = ADMIN_TIMEOUT) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def read_policy_status(path: str) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def report_on(state: GatewayState, fetch: Callable[[str], dict[str, Any] | None] = fetch_json) -> GatewayReport:
    admin = state.admin.rstrip("/")
    clusters_doc = fetch(f"{admin}/clusters?format=json") if admin else None
    stats_doc = fetch(f"{admin}/stats?format=json&filter=circuit_breakers%5C.default%5C.remaining_") if admin else None
    clusters = None if clusters_doc is None else cluster_health(clusters_doc, stats_doc or {})
    policy = read_policy_status(str(state.raw.get("control_plane_status", "")))
    return GatewayReport(state.raw, policy, clusters, gateway_problems(state.raw, policy, clusters))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Every running gateway (state files in $CCR_GATEWAY_STATE_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/"
        "ccr-gateway-<uid>): policy, processes, clusters. Exit status 0: all healthy; 1: one is not; "
        "3: none runs."
    )
    parser.add_argument("--json", action="store_true", help="print the status as one JSON document")


def run(args: argparse.Namespace) -> int:
    files = read_states(remove_stale=True)
    reports = [report_on(state) for state in files.running]
    if args.json:
        print(json.dumps(to_json(reports, files), indent=2))
    else:
        print(render(reports, files))
    status = exit_status(reports)
    if status == EXIT_NONE_RUNNING and not args.json:
        print(f"(state files are read from {state_file.state_dir()})", file=sys.stderr)
    return status
