"""A provider's resilience settings as the policy states them (control_plane.resources.resilience
turns them into Envoy cluster fields; the table there says where each one goes)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Http2(enum.Enum):
    AUTO = "auto"  # https: ALPN offers h2 and http/1.1; http: HTTP/1.1
    ALWAYS = "true"  # https: ALPN h2 only; http: h2c with prior knowledge (vLLM, gRPC-ish pools)
    NEVER = "false"  # HTTP/1.1 only


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Concurrent retries as a share of active requests (overrides max_retries when set)."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 3  # 502/503/504 and connect failures, resets, timeouts
    interval_ms: int = 10_000
    base_ejection_time_ms: int = 30_000
    max_ejection_percent: int = 100


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active HTTP checks, for self-hosted pools (vLLM, Ollama); SaaS APIs have no health path."""

    path: str = "/health"
    interval_ms: int = 10_000
    timeout_ms: int = 2_000
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    expected_statuses: tuple[int, ...] = (200,)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    sni: str = ""  # empty: the base_url's host
    ca_file: str = ""  # empty: the system CA bundle
    insecure_skip_verify: bool = False
    # The gateway's certificate for a provider that asks for one (mTLS upstream); "": none.
    client_cert: str = ""
    client_key: str = ""


@dataclass(frozen=True, slots=True)
class Resilience:
    """Defaults fit a SaaS LLM API: calls are long-lived (seconds to minutes), so concurrency limits
    are high; a provider failing five times in a row (three gateway failures) is ejected for 30 s."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    retry_budget: RetryBudget | None = field(default_factory=RetryBudget)
    outlier_detection: OutlierDetection | None = field(default_factory=OutlierDetection)
    health_check: HealthCheck | None = None
    connect_timeout_ms: int = 5_000
    idle_timeout_ms: int = 60_000
    # Per request, on this provider's route: a non-streamed completion of a big model can take
    # minutes; a stream may pause while the model thinks.
    request_timeout_ms: int = 600_000
    stream_idle_timeout_ms: int = 300_000
    http2: Http2 = Http2.AUTO
    tls: TlsSettings = field(default_factory=TlsSettings)


DEFAULT = Resilience()
