"""listener.per_ip_limits through real Envoy: a gateway of its own whose per-IP bucket holds 5
requests and refills one a second, so the 6th quick request from an address is refused, by Envoy,
before any decision: the provider, the decision service's counters and its logs never see it.

Each test speaks from its own loopback address (127.0.0.x, as the connection's source), which is
also what shows that every address has a bucket of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port

ANTHROPIC = json.dumps(
    {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()
OPENAI = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
BURST = 5
REFUSALS = "ccr_per_ip.http_local_rate_limit.rate_limited"


@pytest.fixture(scope="module")
def limited(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    policy = base_policy(free_port(), fake)
    # One token a second: five quick requests empty the bucket and the sixth finds it still empty.
    policy["listener"]["per_ip_limits"] = {"per_second": 1, "burst": BURST}
    gateway = Gateway.start(workdir, policy, name="edge-limits", workers=1)
    yield gateway
    gateway.stop()


def _send(
    gateway: Gateway, source: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = HTTPConnection("127.0.0.1", gateway.listener_port, timeout=10, source_address=(source, 0))
    try:
        sent = {"content-type": "application/json", **(headers or {})} if body is not None else headers or {}
        connection.request("POST" if body is not None else "GET", path, body, sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _decisions(gateway: Gateway) -> float:
    """Every request the decision service answered or routed."""
    return gateway.extproc_metric("ccr_routed_requests_total") + gateway.extproc_metric("ccr_rejected_requests_total")


def _empty_the_bucket(gateway: Gateway, source: str, path: str, body: bytes) -> None:
    statuses = [_send(gateway, source, path, body)[0] for _ in range(BURST)]
    assert statuses == [200] * BURST


def test_the_sixth_quick_request_is_refused_by_envoy_in_the_anthropic_format(limited, fake):
    before = _decisions(limited)
    _empty_the_bucket(limited, "127.0.0.2", "/v1/messages", ANTHROPIC)
    seen, decided, refused = len(fake.requests()), _decisions(limited), limited.envoy_stat(REFUSALS)
    assert decided == before + BURST  # the counters do count what gets through
    status, headers, raw = _send(limited, "127.0.0.2", "/v1/messages", ANTHROPIC)
    assert status == 429, raw
    body = json.loads(raw)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "per-IP limit" in body["error"]["message"]
    assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
    assert headers["x-ratelimit-limit"] == str(BURST) and headers["x-ratelimit-remaining"] == "0"
    assert headers["request-id"] == headers["x-request-id"]  # the edge's headers reach this reply too
    assert limited.envoy_stat(REFUSALS) == refused + 1
    # Nothing behind Envoy saw it: no provider request, no decision.
    assert len(fake.requests()) == seen and _decisions(limited) == decided


def test_an_openai_client_gets_openais_own_429(limited, fake):
    _empty_the_bucket(limited, "127.0.0.3", "/v1/chat/completions", OPENAI)
    seen = len(fake.requests())
    status, headers, raw = _send(limited, "127.0.0.3", "/v1/chat/completions", OPENAI)
    assert status == 429 and headers["retry-after"] == "1"
    error = json.loads(raw)["error"]
    assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
    assert "per-IP limit" in error["message"]
    assert len(fake.requests()) == seen


def test_claiming_other_addresses_in_x_forwarded_for_does_not_escape_the_limit(limited, fake):
    statuses = [
        _send(limited, "127.0.0.4", "/v1/messages", ANTHROPIC, {"x-forwarded-for": f"203.0.113.{i}"})[0]
        for i in range(BURST + 1)
    ]
    assert statuses == [200] * BURST + [429]
    # The provider learns nothing new of the client's address.
    forwarded = fake.requests()[-1]["headers"]
    assert forwarded.get("x-forwarded-for") == f"203.0.113.{BURST - 1}"  # the client's own, passed as before
    assert "x-envoy-external-address" not in forwarded
    # Another address is not affected by this one's empty bucket.
    assert _send(limited, "127.0.0.5", "/v1/messages", ANTHROPIC)[0] == 200


def test_health_is_never_limited(limited):
    answers = [_send(limited, "127.0.0.6", "/health")[0] for _ in range(3 * BURST)]
    assert answers == [200] * (3 * BURST)
