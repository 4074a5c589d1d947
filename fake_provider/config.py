"""Settings of the fake provider, and the faults one request gets.

Global defaults come from the command line (``FakeConfig``) and can be changed at runtime through
``POST /_fake/config``; any request can override them with ``x-fake-*`` headers, so a test can drive
a single upstream request through a gateway without touching shared state.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDictProxy

STATUS_HEADER = "x-fake-status"
LATENCY_HEADER = "x-fake-latency-ms"
CHUNKS_HEADER = "x-fake-chunks"
CHUNK_DELAY_HEADER = "x-fake-chunk-delay-ms"
HANG_HEADER = "x-fake-hang"
MIDSTREAM_HEADER = "x-fake-midstream-error"
TOOL_CALL_HEADER = "x-fake-tool-call"
CACHED_TOKENS_HEADER = "x-fake-cached-tokens"

_TRUTHY = frozenset(("1", "true", "yes", "on"))


class Midstream(enum.Enum):
    ERROR = "error"  # the API's own in-stream error event, then a clean end of the response
    ABORT = "abort"  # the connection is cut mid-body, as when an upstream crashes


@dataclass(slots=True)
class FakeConfig:
    """Process-wide defaults. Mutable on purpose: the control endpoint edits the live instance."""

    latency_ms: float = 0.0
    chunks: int = 8
    chunk_delay_ms: float = 0.0
    # 0 = answer normally. With a status set, fail_count > 0 fails only that many more requests
    # (then the status clears itself); fail_count == 0 fails every request until changed.
    status: int = 0
    fail_count: int = 0
    retry_after_s: int = 1
    cached_tokens: int = 0
    record_requests: bool = True
    # Vertex AI's bearer tokens accepted (fake_provider.vertex_api), comma-separated ("" accepts any
    # token, but one must be sent); FAKE_VERTEX_TOKEN by default.
    vertex_token: str = field(default_factory=lambda: os.environ.get("FAKE_VERTEX_TOKEN", ""))
    # Bedrock's SigV4 check (fake_provider.sigv4): "<access key id>,<secret>,<session token>,<region>"
    # ("" accepts any request, signed or not); FAKE_AWS_CREDENTIALS by default.
    aws_credentials: str = field(default_factory=lambda: os.environ.get("FAKE_AWS_CREDENTIALS", ""))
    # Seconds the fake's clock runs ahead of the signer's: over 900, SigV4 says "Signature expired".
    aws_clock_offset_s: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update from the control endpoint; ValueError names what is wrong."""
        known = {field.name: field for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        converted = {}
        for name, value in changes.items():
            kind = known[name].type  # a string, since this module uses postponed annotations
            if kind == "str":
                if not isinstance(value, str):
                    raise ValueError(f"{name} must be a string")
                converted[name] = value
                continue
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
                converted[name] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            converted[name] = int(value) if kind == "int" else float(value)
        for name, value in converted.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> FakeConfig:
        return dataclasses.replace(self)


@dataclass(frozen=True, slots=True)
class Faults:
    """How one request is to be (mis)handled, config defaults with header overrides applied."""

    status: int
    latency_ms: float
    chunks: int
    chunk_delay_ms: float
    hang: bool
    midstream: Midstream | None
    force_tool_call: bool
    cached_tokens: int
    retry_after_s: int


def take_faults(config: FakeConfig, headers: CIMultiDictProxy[str]) -> Faults:
    """Resolve the faults for a request; counts it against ``config.fail_count`` when it fails
    because of the configured status. Raises ValueError for an unparsable ``x-fake-*`` header."""
    status = _int_header(headers, STATUS_HEADER, 0)
    if not status and config.status:
        status = config.status
        if config.fail_count > 0:
            config.fail_count -= 1
            if config.fail_count == 0:
                config.status = 0
    midstream_value = headers.get(MIDSTREAM_HEADER)
    midstream = None
    if midstream_value:
        midstream = Midstream.ABORT if midstream_value.lower() == "abort" else Midstream.ERROR
    return Faults(
        status=status,
        latency_ms=_float_header(headers, LATENCY_HEADER, config.latency_ms),
        chunks=max(1, _int_header(headers, CHUNKS_HEADER, config.chunks)),
        chunk_delay_ms=_float_header(headers, CHUNK_DELAY_HEADER, config.chunk_delay_ms),
        hang=headers.get(HANG_HEADER, "").lower() in _TRUTHY,
        midstream=midstream,
        force_tool_call=headers.get(TOOL_CALL_HEADER, "").lower() in _TRUTHY,
        cached_tokens=_int_header(headers, CACHED_TOKENS_HEADER, config.cached_tokens),
        retry_after_s=config.retry_after_s,
    )


def _int_header(headers: CIMultiDictProxy[str], name: str, default: int) -> int:
    value = headers.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _float_header(headers: CIMultiDictProxy[str], name: str, default: float) -> float:
    value = headers.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
