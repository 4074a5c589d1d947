"""The policy's optional ``batches:`` section: where the batch API runs, so the gateway routes to it.

```yaml
batches:
  api: 127.0.0.1:9180        # where `ccr-gateway batch-api` listens: host:port, or unix:/path/to.sock
  workers: [abcdefgh]        # key ids of the batch workers' own keys (optional)
```

Without it the batch paths (``/v1/messages/batches``, ``/v1/files``, ``/v1/batches``) are unknown
endpoints (404). With it, the decision (hop or ext_proc) authenticates each of their requests like
any other and forwards it untouched to that address, with the caller's tenant in ``x-ccr-tenant``
(control_plane.resources.batches, extproc.request_steps). Problems are reported with their line,
like the rest of the policy.

``workers``: the virtual keys the batch workers present (``ccr-gateway keys create``, the key id is
the 8 characters after ``sk-ccr-``). A request of such a key that carries a batch item's headers is
sent for the batch's owner: the key that created the batch, under its limits and budget, its usage
recorded with the batch (extproc.auth.batch_caller). Without ``workers`` every item is sent as the
worker's key's own request, which is enough where keys are not required.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located, join

_FIELDS = ("api", "workers")
_KEY_ID = re.compile(r"^[a-z2-7]{8}$")  # extproc.auth.keys' key ids (the control plane does not import it)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
UNIX_PREFIX = "unix:"


@dataclass(frozen=True, slots=True)
class BatchesSpec:
    host: str = ""  # an IP address or a DNS name; "" with a unix socket
    port: int = 0
    socket_path: str = ""  # a unix socket instead of host:port
    workers: tuple[str, ...] = ()  # key ids whose batch items are sent for the batch's owner

    @property
    def host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def address(self) -> str:
        return f"{UNIX_PREFIX}{self.socket_path}" if self.socket_path else f"{self.host}:{self.port}"


def parse_batches(check: Checker, at: Located, path: str = "batches") -> BatchesSpec | None:
    """The top-level ``batches:``; None when it has problems (recorded in ``check``)."""
    fields = check.mapping(at, path, _FIELDS, required=("api",))
    if "api" not in fields:
        return None
    workers: list[str] = []
    if "workers" in fields:
        workers_path = join(path, "workers")
        for index, item in enumerate(check.sequence(fields["workers"], workers_path)):
            key_id = check.string(
                item, join(workers_path, index), _KEY_ID, "key id (the 8 characters of a-z, 2-7 after sk-ccr-)"
            )
            if key_id is not None:
                if key_id in workers:
                    check.problem(item, join(workers_path, index), f"{key_id!r} is listed twice")
                workers.append(key_id)
    spec = _address(check, fields, path)
    if spec is None:
        return None
    return dataclasses.replace(spec, workers=tuple(workers))


def _address(check: Checker, fields: dict[str, Located], path: str) -> BatchesSpec | None:
    where = "where `ccr-gateway batch-api` listens"
    parsed = parse_address(check, fields["api"], join(path, "api"), "127.0.0.1:9180", where)
    if parsed is None:
        return None
    host, port, socket_path = parsed
    return BatchesSpec(host, port, socket_path)


def parse_address(
    check: Checker, at: Located, path: str, example: str, where: str, unix: bool = True, ip_only: bool = False
) -> tuple[str, int, str] | None:
    """A service's address as a policy writes it: ``host:port`` (``[::1]:port`` for IPv6) or, when
    ``unix``, ``unix:/path``; (host, port, socket path), None after recording the problem. Shared by
    ``batches.api`` and ``mcp.api`` / ``mcp.egress`` (control_plane.policy.mcp); ``ip_only``: the
    address Envoy itself binds (a listener takes an IP address, not a name)."""
    text = check.string(at, path)
    if text is None:
        return None
    if unix and text.startswith(UNIX_PREFIX):
        socket_path = text[len(UNIX_PREFIX) :]
        if not socket_path.startswith("/"):
            check.problem(at, path, f"a unix socket must be an absolute path (unix:/path), got {text!r}")
            return None
        return "", 0, socket_path
    host, colon, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:9180
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        shapes = f"host:port (like {example}) or unix:/path" if unix else f"host:port (like {example})"
        check.problem(at, path, f"must be {shapes} {where}, got {text!r}")
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if ip_only:
            check.problem(at, path, f"{host!r} must be an IP address (Envoy listens there), like {example}")
            return None
        if not _HOST.match(host):
            check.problem(at, path, f"{host!r} is not an IP address or a host name")
            return None
    return host, int(port_text), ""
