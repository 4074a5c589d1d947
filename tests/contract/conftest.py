"""The backend the contract tests talk to: the Consul double, and a real Consul agent when
CONSUL_HTTP_ADDR is set (CONSUL_HTTP_TOKEN is sent when set). Every case runs against both, so the
double cannot drift from what it stands in for without a test saying so."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.consul_double import running_double


@dataclass
class Backend:
    kind: str  # "double" | "real"
    url: str
    token: str | None
    prefix: str  # a KV prefix of this test's own
    service: str  # a service name of this test's own
    session: aiohttp.ClientSession
    registered: list[str] = field(default_factory=list)

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, dict[str, str], bytes]:
        headers = {"X-Consul-Token": self.token} if self.token else {}
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        async with self.session.request(method, self.url + path, params=params, data=data, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()

    async def json(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, int, Any]:
        """(status, X-Consul-Index or 0, decoded body or None)."""
        status, headers, raw = await self.call(method, path, body, **params)
        return status, int(headers.get("X-Consul-Index", 0)), json.loads(raw) if raw.strip() else None


@pytest.fixture(params=["double", "real"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    unique = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession() as session:
        if request.param == "real":
            address = os.environ.get("CONSUL_HTTP_ADDR")
            if not address:
                pytest.skip("CONSUL_HTTP_ADDR not set: contract tests need a real Consul agent")
            url = address if "://" in address else f"http://{address}"
            found = Backend(
                "real",
                url.rstrip("/"),
                os.environ.get("CONSUL_HTTP_TOKEN"),
                f"ccr-contract-{unique}/",
                f"ccr-contract-{unique}",
                session,
            )
            try:
                yield found
            finally:
                await found.call("DELETE", f"/v1/kv/{found.prefix}", recurse="")
                for service_id in found.registered:
                    await found.call("PUT", f"/v1/agent/service/deregister/{service_id}")
        else:
            async with running_double() as double:
                yield Backend("double", double.url, None, f"ccr-contract-{unique}/", f"ccr-contract-{unique}", session)
