"""What the injector adds to a pod: the gateway as `ccr-gateway up` runs it, split into containers.

- ``ccr-bootstrap`` (init container): ``ccr-gateway envoy-bootstrap --output`` writes Envoy's
  bootstrap into the shared run directory (a control plane named by DNS becomes a STRICT_DNS
  cluster there: every replica behind the Service, re-resolved as they come and go).
- ``ccr-extproc-I`` per worker: ``ccr-gateway extproc`` on ``unix:/run/ccr/extproc-I.sock`` (gRPC)
  and ``unix:/run/ccr/hop-I.sock`` (the decision hop), policy from the control plane.
- ``ccr-envoy``: ``envoy -c /run/ccr/envoy.yaml``; listeners, routes and provider clusters arrive
  over ADS, so the application reaches the gateway on 127.0.0.1 at the policy's listener port.
- volumes ``ccr-run`` (the sockets and the bootstrap), ``ccr-tmp`` (/tmp) and, for the workers,
  ``ccr-data`` (/var/lib/ccr, the image's $HOME and $XDG_DATA_HOME: a local key store or a usage
  spool): the root filesystems are read-only.

Pure: settings in, Kubernetes objects (dicts) out. Every value that comes from a pod's annotations
reaches a container as one argv item, never through a shell.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from ccr.v1.contract import HOP_CLUSTER
from control_plane.injector.config import InjectorConfig, address_problem

PREFIX = "ccr-gateway.io/"
INJECT_LABEL = PREFIX + "inject"  # "true" on a pod (or its namespace): inject; "false" on a pod: never
STATUS_ANNOTATION = PREFIX + "status"  # "injected" once done: a second pass changes nothing
INJECTED = "injected"
# Per-pod overrides of the injector's settings.
CONTROL_PLANE_ANNOTATION = PREFIX + "control-plane"  # xDS host:port
WORKERS_ANNOTATION = PREFIX + "workers"  # ext_proc workers (1..max_workers)
ADMIN_PORT_ANNOTATION = PREFIX + "admin-port"  # Envoy's admin port, when the application uses 9901
OVERRIDES = (CONTROL_PLANE_ANNOTATION, WORKERS_ANNOTATION, ADMIN_PORT_ANNOTATION)

RUN_DIR = "/run/ccr"
BOOTSTRAP_PATH = RUN_DIR + "/envoy.yaml"
RUN_VOLUME = "ccr-run"
TMP_VOLUME = "ccr-tmp"
DATA_VOLUME = "ccr-data"
DATA_DIR = "/var/lib/ccr"  # the Dockerfile's $HOME and $XDG_DATA_HOME
BOOTSTRAP_CONTAINER = "ccr-bootstrap"
ENVOY_CONTAINER = "ccr-envoy"
EXTPROC_CONTAINER = "ccr-extproc-{index}"

# Probes run in the container (exec): Envoy's admin listens on 127.0.0.1 only and the workers'
# hops on Unix sockets, neither reachable by the kubelet's httpGet. ccr_gateway.probes is what
# `ccr-gateway up` polls and `ccr-gateway pod probe` calls; it imports nothing but the standard
# library, so `python -c` costs ~0.1 s of CPU per probe where the CLI costs ~0.4 s (measured), every
# few seconds per container. The liveness probes accept any answer ("!= 0"): a worker waiting for
# its first policy answers 503 and must not be restarted for it.
_PROBE = "import sys; from ccr_gateway.probes import {function}; sys.exit(0 if {function}({target!r}) {test} else 1)"


def _probe(function: str, target: str, test: str) -> list[str]:
    return ["python", "-c", _PROBE.format(function=function, target=target, test=test)]


class AnnotationError(ValueError):
    """A ccr-gateway.io/ annotation of the pod has a value the injector cannot use."""


@dataclass(frozen=True, slots=True)
class PodSettings:
    """The injector's settings with the pod's annotations applied."""

    config: InjectorConfig
    control_plane: str
    workers: int
    admin_port: int

    @classmethod
    def of(cls, config: InjectorConfig, annotations: dict[str, Any]) -> PodSettings:
        """Raises AnnotationError naming the annotation and what it must be."""
        control_plane = annotations.get(CONTROL_PLANE_ANNOTATION, config.control_plane)
        if (problem := address_problem(control_plane)) is not None:
            raise AnnotationError(f"annotation {CONTROL_PLANE_ANNOTATION}: {problem}")
        workers = _whole(annotations, WORKERS_ANNOTATION, config.workers, 1, config.max_workers)
        admin_port = _whole(annotations, ADMIN_PORT_ANNOTATION, config.admin_port, 1, 65535)
        return cls(config, control_plane, workers, admin_port)


def _whole(annotations: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    if name not in annotations:
        return default
    value = annotations[name]
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,5}", value) or not low <= int(value) <= high:
        raise AnnotationError(f"annotation {name}: {value!r} is not a whole number within {low}..{high}")
    return int(value)


def worker_sockets(workers: int) -> tuple[list[str], list[str]]:
    """Each worker's gRPC and decision hop socket: the names `ccr-gateway envoy-bootstrap --run-dir`
    writes into the bootstrap (ccr_gateway.envoy_bootstrap.worker_sockets; a test holds them equal)."""
    return (
        [f"{RUN_DIR}/extproc-{index}.sock" for index in range(workers)],
        [f"{RUN_DIR}/hop-{index}.sock" for index in range(workers)],
    )


@dataclass(frozen=True, slots=True)
class SidecarParts:
    init_containers: list[dict]  # go first, in this order
    containers: list[dict]  # go after the application's
    volumes: list[dict]

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in (*self.init_containers, *self.containers)]


def sidecar_parts(settings: PodSettings) -> SidecarParts:
    """The init containers, containers and volumes for one pod. With ``native_sidecars`` the
    workers and Envoy are init containers with ``restartPolicy: Always`` (Kubernetes >= 1.29):
    they start, workers first, before the application's containers and stop after them, and
    a Job's pod completes."""
    config = settings.config
    sidecars = [*(_extproc(settings, index) for index in range(settings.workers)), _envoy(settings)]
    init = [_bootstrap(settings)]
    if config.native_sidecars:
        return SidecarParts([*init, *({**c, "restartPolicy": "Always"} for c in sidecars)], [], _volumes())
    return SidecarParts(init, sidecars, _volumes())


def _volumes() -> list[dict]:
    return [
        {"name": RUN_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": DATA_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}},
    ]


def _security_context(config: InjectorConfig) -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_user,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


_POD_ENV = [
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
]
_MOUNTS = [{"name": RUN_VOLUME, "mountPath": RUN_DIR}, {"name": TMP_VOLUME, "mountPath": "/tmp"}]


def _container(settings: PodSettings, name: str, role: str, command: list[str]) -> dict:
    config = settings.config
    return {
        "name": name,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "env": [dict(env) for env in _POD_ENV],
        "resources": copy.deepcopy(config.resources[role]),
        "securityContext": _security_context(config),
        "volumeMounts": [dict(mount) for mount in _MOUNTS],
    }


def _bootstrap(settings: PodSettings) -> dict:
    # $(POD_NAME) is expanded by the kubelet from the container's env: at admission the name of a
    # ReplicaSet's pod is not known yet (generateName).
    command = ["ccr-gateway", "envoy-bootstrap", "--run-dir", RUN_DIR, "--workers", str(settings.workers)]
    command += ["--admin-port", str(settings.admin_port), "--node-id", "$(POD_NAMESPACE).$(POD_NAME)"]
    command += ["--xds", settings.control_plane, "--output", BOOTSTRAP_PATH]
    return _container(settings, BOOTSTRAP_CONTAINER, "bootstrap", command)


def _extproc(settings: PodSettings, index: int) -> dict:
    config = settings.config
    extproc, hop = worker_sockets(settings.workers)
    command = ["ccr-gateway", "extproc", "--listen", f"unix:{extproc[index]}", "--hop-listen", f"unix:{hop[index]}"]
    command += ["--hop-cluster", f"{HOP_CLUSTER}_{index}", "--control-plane", settings.control_plane]
    # Each worker enforces limit/N of an in-process limit, as under `up` (auth_wiring).
    command += ["--auth-workers", str(settings.workers), *config.extproc_args]
    container = _container(settings, EXTPROC_CONTAINER.format(index=index), "extproc", command)
    container["env"] += copy.deepcopy(list(config.extproc_env))
    container["volumeMounts"].append({"name": DATA_VOLUME, "mountPath": DATA_DIR})
    # Ready once the worker holds a policy (200); alive while its hop answers at all.
    ready = _probe("unix_http_status", hop[index], "== 200")
    alive = _probe("unix_http_status", hop[index], "!= 0")
    container["startupProbe"] = _exec_probe(alive, period=2, failures=30)
    container["readinessProbe"] = _exec_probe(ready, period=5, failures=2)
    container["livenessProbe"] = _exec_probe(alive, period=10, failures=3)
    return container


def _envoy(settings: PodSettings) -> dict:
    config = settings.config
    command = ["envoy", "-c", BOOTSTRAP_PATH, "--disable-hot-restart", "-l", config.envoy_log_level]
    command += ["--concurrency", str(config.envoy_concurrency)]
    container = _container(settings, ENVOY_CONTAINER, "envoy", command)
    admin = f"http://127.0.0.1:{settings.admin_port}"
    # /ready: initialised, listeners and clusters from the control plane in place.
    ready = _probe("http_status", f"{admin}/ready", "== 200")
    alive = _probe("http_status", f"{admin}/server_info", "!= 0")
    container["startupProbe"] = _exec_probe(ready, period=2, failures=60)
    container["readinessProbe"] = _exec_probe(ready, period=5, failures=2)
    container["livenessProbe"] = _exec_probe(alive, period=10, failures=3)
    return container


def _exec_probe(command: list[str], period: int, failures: int) -> dict:
    return {"exec": {"command": command}, "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}
