"""Distributed tracing in the policy: where spans go and how many requests are traced.

```yaml
tracing:
  otlp: http://127.0.0.1:4317   # an OpenTelemetry collector's OTLP/gRPC port (https:// for TLS)
  sample: 5%                    # requests traced from their first byte: 0 to 100% (or 0 to 1)
  service_name: ccr-gateway     # Envoy's spans; the decision service's are <service_name>-extproc
```

Envoy traces the request (its OpenTelemetry tracer: the listener's span and each upstream
attempt's) and decides which requests are sampled, continuing a client's ``traceparent``; the
decision service continues the same trace (control_plane.resources.tracing, extproc's tracer). A
request that fails is exported by the decision service whatever the sampling said (its own spans).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ccr.v1 import policy_pb2
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

_FIELDS = ("otlp", "sample", "service_name")
DEFAULT_SAMPLE = 0.01
DEFAULT_SERVICE = "ccr-gateway"
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class TracingSpec:
    host: str
    port: int
    tls: bool = False
    sample: float = DEFAULT_SAMPLE  # 0..1
    service_name: str = DEFAULT_SERVICE

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def to_proto(self) -> policy_pb2.Tracing:
        return policy_pb2.Tracing(otlp=self.endpoint, sample=self.sample, service_name=self.service_name)


def parse_tracing(check: Checker, at: Located) -> TracingSpec | None:
    """The top-level ``tracing:``; None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, "tracing", _FIELDS, required=("otlp",))
    target = _otlp(check, fields["otlp"]) if "otlp" in fields else None
    sample = _sample(check, fields["sample"]) if "sample" in fields else DEFAULT_SAMPLE
    service = DEFAULT_SERVICE
    if "service_name" in fields:
        written = check.string(fields["service_name"], "tracing.service_name")
        if written is not None and not _SERVICE.match(written):
            check.problem(fields["service_name"], "tracing.service_name", "must be letters, digits, '.', '_' or '-'")
        service = written or service
    if target is None or sample is None or len(check.problems) > before:
        return None
    host, port, tls = target
    return TracingSpec(host, port, tls, sample, service)


def _otlp(check: Checker, at: Located) -> tuple[str, int, bool] | None:
    """``host:port``, ``http://host:port`` or ``https://host:port`` (no path: OTLP/gRPC has none)."""
    text = check.string(at, join("tracing", "otlp"))
    if text is None:
        return None
    written = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(written)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        check.problem(at, "tracing.otlp", f"must be host:port or http(s)://host:port, got {text!r}")
        return None
    if parts.path not in ("", "/") or parts.query or parts.username:
        check.problem(at, "tracing.otlp", "must name only the collector's host and port (OTLP/gRPC)")
        return None
    return parts.hostname, port, parts.scheme == "https"


def _sample(check: Checker, at: Located) -> float | None:
    value = at.value
    share: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        share = float(value)
    elif isinstance(value, str) and (match := _PERCENT.match(value)):
        share = float(match[1]) / 100
    if share is None or not 0 <= share <= 1:
        shown = repr(value) if isinstance(value, str) else str(value) if share is not None else kind_of(value)
        check.problem(at, "tracing.sample", f"must be a share from 0 to 1 or a percentage like 5%, got {shown}")
        return None
    return share
