"""The policy's optional ``batches:`` section: where the batch API runs, so the gateway routes to it.

```yaml
batches:
  api: 127.0.0.1:9180        # where `ccr-gateway batch-api` listens: host:port, or unix:/path/to.sock
```

Without it the batch paths (``/v1/messages/batches``, ``/v1/files``, ``/v1/batches``) are unknown
endpoints (404). With it, the decision (hop or ext_proc) authenticates each of their requests like
any other and forwards it untouched to that address, with the caller's tenant in ``x-ccr-tenant``
(control_plane.resources.batches, extproc.request_steps). Problems are reported with their line,
like the rest of the policy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located, join

_FIELDS = ("api",)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
UNIX_PREFIX = "unix:"


@dataclass(frozen=True, slots=True)
class BatchesSpec:
    host: str = ""  # an IP address or a DNS name; "" with a unix socket
    port: int = 0
    socket_path: str = ""  # a unix socket instead of host:port

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
    api_path = join(path, "api")
    text = check.string(fields["api"], api_path)
    if text is None:
        return None
    if text.startswith(UNIX_PREFIX):
        socket_path = text[len(UNIX_PREFIX) :]
        if not socket_path.startswith("/"):
            check.problem(fields["api"], api_path, f"a unix socket must be an absolute path (unix:/path), got {text!r}")
            return None
        return BatchesSpec(socket_path=socket_path)
    host, colon, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:9180
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        message = (
            f"must be host:port (like 127.0.0.1:9180) or unix:/path where `ccr-gateway batch-api` listens, got {text!r}"
        )
        check.problem(fields["api"], api_path, message)
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            check.problem(fields["api"], api_path, f"{host!r} is not an IP address or a host name")
            return None
    return BatchesSpec(host, int(port_text))
