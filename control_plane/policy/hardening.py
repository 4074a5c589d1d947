"""Edge hardening knobs in the policy (``listener.hardening``): Envoy's "configuring Envoy as an edge
proxy" best practices, with the gateway's own reasons where it departs from them.

```yaml
listener:
  hardening:                      # every field optional; these are the defaults
    max_connections: 50000        # downstream connections at once, more refused (read when `up` starts Envoy)
    max_request_headers_kb: 128   # Envoy's limit (431); the decision service answers above 60 KB first
    request_headers_timeout: 10   # seconds a client has to send its headers (408); 0: no limit
    stream_idle_timeout: 300      # seconds without a byte either way before a stream is cut
    request_timeout: 0            # seconds for a whole request; 0 (off): an SSE answer takes minutes
    use_remote_address: true      # the client's address is the peer, or xff_num_trusted_hops from XFF's right
    xff_num_trusted_hops: 0       # proxies in front that append to X-Forwarded-For
    reject_escaped_slashes: false # false: %2F/%5C unescaped (model ids hold '/'), true: 400
    headers_with_underscores: drop     # drop | reject (connection closed) | allow
    http2:
      max_concurrent_streams: 100
      initial_stream_window_size: 65536        # 64 KiB
      initial_connection_window_size: 1048576  # 1 MiB
    overload:                     # Envoy's overload manager (bootstrap: read when `up` starts Envoy)
      max_heap: 1GiB
      shrink_at: 0.9              # share of max_heap: give freed memory back to the system
      stop_accepting_at: 0.95     # share of max_heap: refuse new requests (503)
```

``overload: false`` turns the heap monitor off (the connection limit stays). Problems are reported
with their line, like the rest of the policy. control_plane.resources.hardening makes the listener's
half, ccr_gateway.envoy_bootstrap the overload manager.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from control_plane.policy.yaml_check import Checker, Located, join, kind_of

# Envoy's bounds (HttpConnectionManager.max_request_headers_kb, Http2ProtocolOptions).
MAX_HEADERS_KB = 8192
MAX_HTTP2_WINDOW = 2_147_483_647
MIN_HTTP2_WINDOW = 65_535
MAX_TRUSTED_HOPS = 16
MAX_TIMEOUT_SECONDS = 86_400
UNDERSCORE_ACTIONS = ("reject", "drop", "allow")
_FIELDS = (
    "max_connections",
    "max_request_headers_kb",
    "request_headers_timeout",
    "stream_idle_timeout",
    "request_timeout",
    "use_remote_address",
    "xff_num_trusted_hops",
    "reject_escaped_slashes",
    "headers_with_underscores",
    "http2",
    "overload",
)
_HTTP2_FIELDS = ("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size")
_OVERLOAD_FIELDS = ("max_heap", "shrink_at", "stop_accepting_at")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_MIN_HEAP = 64 << 20  # below this Envoy would refuse requests from the start


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """Envoy's edge recommendation: 100 streams a connection, 64 KiB per stream and 1 MiB per
    connection of data buffered for a slow reader (Envoy's own defaults are 256 MiB each)."""

    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 65_536
    initial_connection_window_size: int = 1_048_576


@dataclass(frozen=True, slots=True)
class OverloadSpec:
    """Envoy's overload manager: a fixed heap monitor and two actions, by share of ``max_heap_bytes``."""

    max_heap_bytes: int = 1 << 30
    shrink_at: float = 0.9
    stop_accepting_at: float = 0.95


@dataclass(frozen=True, slots=True)
class HardeningSpec:
    max_connections: int = 50_000
    # Above the decision service's own 60 KB (extproc.request_steps), which answers in the client's
    # API; Envoy's codec refusals carry no path, so their body is written to suit both SDKs.
    max_request_headers_kb: int = 128
    request_headers_timeout_s: int = 10
    stream_idle_timeout_s: int = 300
    # 0: no limit on a whole request. A streamed answer lasts as long as the model writes; the
    # provider routes' own timeouts (resilience) and stream_idle_timeout bound it instead.
    request_timeout_s: int = 0
    use_remote_address: bool = True
    xff_num_trusted_hops: int | None = None  # None: per_ip_limits.trusted_proxies, else 0
    reject_escaped_slashes: bool = False
    # "reject" would be safest, but Envoy's codec refusal passes ext_proc's response phase, which
    # holds it while the connection closes: the client gets no answer (measured on 1.40).
    headers_with_underscores: str = "drop"
    http2: Http2Limits = field(default_factory=Http2Limits)
    overload: OverloadSpec | None = field(default_factory=OverloadSpec)


def parse_hardening(check: Checker, at: Located, path: str = "listener.hardening") -> HardeningSpec:
    """``listener.hardening`` checked; the defaults for what is left out or wrong (recorded in ``check``)."""
    fields = check.mapping(at, path, _FIELDS)
    default = HardeningSpec()
    values: dict[str, object] = {}

    def integer(key: str, low: int, high: int, name: str | None = None) -> None:
        if key in fields:
            value = check.integer(fields[key], join(path, key), low, high)
            if value is not None:
                values[name or key] = value

    def boolean(key: str) -> None:
        if key in fields:
            value = fields[key].value
            if isinstance(value, bool):
                values[key] = value
            else:
                check.problem(fields[key], join(path, key), f"must be true or false, got {kind_of(value)}")

    integer("max_connections", 1, 10_000_000)
    integer("max_request_headers_kb", 1, MAX_HEADERS_KB)
    integer("request_headers_timeout", 0, MAX_TIMEOUT_SECONDS, "request_headers_timeout_s")
    integer("stream_idle_timeout", 0, MAX_TIMEOUT_SECONDS, "stream_idle_timeout_s")
    integer("request_timeout", 0, MAX_TIMEOUT_SECONDS, "request_timeout_s")
    boolean("use_remote_address")
    integer("xff_num_trusted_hops", 0, MAX_TRUSTED_HOPS)
    boolean("reject_escaped_slashes")
    if "headers_with_underscores" in fields:
        action = check.choice(
            fields["headers_with_underscores"], join(path, "headers_with_underscores"), UNDERSCORE_ACTIONS
        )
        if action is not None:
            values["headers_with_underscores"] = action
    if "xff_num_trusted_hops" in values and values.get("use_remote_address", default.use_remote_address) is False:
        message = "needs use_remote_address: true (without it Envoy trusts the whole X-Forwarded-For header)"
        check.problem(fields["xff_num_trusted_hops"], join(path, "xff_num_trusted_hops"), message)
    if "http2" in fields:
        values["http2"] = _http2(check, fields["http2"], join(path, "http2"))
    if "overload" in fields:
        values["overload"] = _overload(check, fields["overload"], join(path, "overload"))
    return HardeningSpec(**values)  # type: ignore[arg-type]


def _http2(check: Checker, at: Located, path: str) -> Http2Limits:
    fields = check.mapping(at, path, _HTTP2_FIELDS)
    values: dict[str, int] = {}
    bounds = {
        "max_concurrent_streams": (1, MAX_HTTP2_WINDOW),
        "initial_stream_window_size": (MIN_HTTP2_WINDOW, MAX_HTTP2_WINDOW),
        "initial_connection_window_size": (MIN_HTTP2_WINDOW, MAX_HTTP2_WINDOW),
    }
    for key, (low, high) in bounds.items():
        if key in fields and (value := check.integer(fields[key], join(path, key), low, high)) is not None:
            values[key] = value
    return Http2Limits(**values)


def _overload(check: Checker, at: Located, path: str) -> OverloadSpec | None:
    if at.value is False:
        return None
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be a mapping or false, got {kind_of(at.value)}")
        return OverloadSpec()
    fields = check.mapping(at, path, _OVERLOAD_FIELDS)
    values: dict[str, float | int] = {}
    if "max_heap" in fields:
        size = _size(check, fields["max_heap"], join(path, "max_heap"))
        if size is not None:
            values["max_heap_bytes"] = size
    for key in ("shrink_at", "stop_accepting_at"):
        if key in fields:
            share = _share(check, fields[key], join(path, key))
            if share is not None:
                values[key] = share
    spec = OverloadSpec(**values)  # type: ignore[arg-type]
    if spec.shrink_at >= spec.stop_accepting_at:
        where = fields.get("shrink_at") or fields.get("stop_accepting_at") or at
        message = f"shrink_at ({spec.shrink_at}) must be below stop_accepting_at ({spec.stop_accepting_at})"
        check.problem(where, path, message)
    return spec


def _size(check: Checker, at: Located, path: str) -> int | None:
    """Bytes, written as an integer or with a unit: 1GiB, 512MiB, 2GB."""
    value = at.value
    if isinstance(value, bool) or not isinstance(value, int | str):
        check.problem(at, path, f"must be a size such as 1GiB or 512MiB, got {kind_of(value)}")
        return None
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if match is None:
            check.problem(at, path, f"{value!r} is not a size such as 1GiB or 512MiB")
            return None
        size = int(float(match[1]) * _UNITS[match[2]])
    if size < _MIN_HEAP:
        check.problem(at, path, f"must be at least 64MiB, got {size} bytes")
        return None
    return size


def _share(check: Checker, at: Located, path: str) -> float | None:
    value = at.value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        shown = value if isinstance(value, int | float) and not isinstance(value, bool) else kind_of(value)
        check.problem(at, path, f"must be a share of max_heap above 0 and at most 1, got {shown}")
        return None
    return float(value)
