"""What the watchers rely on in Consul's HTTP API, checked against the double and a real Consul.

Runs against a real agent when CONSUL_HTTP_ADDR is set (see conftest.py), otherwise that half is
skipped. Waits are short (500ms): Consul adds up to wait/16 of jitter.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from control_plane.consul.catalog import CatalogWatcher, Endpoint
from control_plane.consul.kv import ConsulPolicySource
from tests.contract.conftest import Backend
from tests.unit.cp_helpers import EXAMPLE_POLICY

T = TypeVar("T")
WAIT = "500ms"
WAIT_S = 0.5


async def put(backend: Backend, key: str, value: bytes, **params: str) -> bool:
    status, _, result = await backend.json("PUT", f"/v1/kv/{backend.prefix}{key}", value, **params)
    assert status == 200
    return result is True


async def get(backend: Backend, key: str, **params: str) -> tuple[int, int, object]:
    return await backend.json("GET", f"/v1/kv/{backend.prefix}{key}", **params)


# --- KV ------------------------------------------------------------------------------------------


async def test_a_missing_key_is_404_with_an_index(backend: Backend):
    status, index, _ = await get(backend, "absent")
    assert status == 404
    assert index >= 1


async def test_entries_carry_indexes_flags_and_base64_values(backend: Backend):
    assert await put(backend, "a", b"hello", flags="42")
    status, index, entries = await get(backend, "a")
    assert status == 200
    (entry,) = entries  # type: ignore[misc]
    assert entry["Key"] == backend.prefix + "a"
    assert base64.b64decode(entry["Value"]) == b"hello"
    assert entry["Flags"] == 42 and entry["LockIndex"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"] <= index
    assert await put(backend, "a", b"again")
    _, _, (updated,) = await get(backend, "a")  # type: ignore[misc]
    assert updated["CreateIndex"] == entry["CreateIndex"] and updated["ModifyIndex"] > entry["ModifyIndex"]
    status, headers, raw = await backend.call("GET", f"/v1/kv/{backend.prefix}a", raw="")
    assert (status, raw) == (200, b"again") and int(headers["X-Consul-Index"]) >= 1


async def test_cas_zero_creates_only_and_cas_n_matches_the_modify_index(backend: Backend):
    assert await put(backend, "c", b"1", cas="0")
    assert not await put(backend, "c", b"2", cas="0")
    _, _, (entry,) = await get(backend, "c")  # type: ignore[misc]
    assert not await put(backend, "c", b"3", cas=str(entry["ModifyIndex"] - 1))
    assert await put(backend, "c", b"4", cas=str(entry["ModifyIndex"]))
    status, _, result = await backend.json("DELETE", f"/v1/kv/{backend.prefix}c", cas=str(entry["ModifyIndex"]))
    assert (status, result) == (200, False)  # stale
    _, _, (now,) = await get(backend, "c")  # type: ignore[misc]
    assert base64.b64decode(now["Value"]) == b"4"


async def test_recurse_reports_the_highest_modify_index_under_the_prefix(backend: Backend):
    assert await put(backend, "r/a", b"1")
    assert await put(backend, "r/b", b"2")
    assert await put(backend, "elsewhere", b"x")  # raises the KV index, not the prefix's
    status, index, entries = await get(backend, "r/", recurse="")
    assert status == 200
    assert [e["Key"] for e in entries] == [backend.prefix + "r/a", backend.prefix + "r/b"]  # type: ignore[union-attr]
    assert index == max(e["ModifyIndex"] for e in entries)  # type: ignore[union-attr]
    status, _, _ = await backend.json("DELETE", f"/v1/kv/{backend.prefix}r/b")
    assert status == 200
    _, after_delete, _ = await get(backend, "r/", recurse="")
    assert after_delete > index  # the tombstone keeps the prefix's index moving forward
    status, _, keys = await get(backend, "", keys="", separator="/")
    assert status == 200 and backend.prefix + "r/" in keys  # type: ignore[operator]


async def test_a_blocking_query_waits_for_the_wait_when_nothing_changes(backend: Backend):
    assert await put(backend, "b/x", b"1")
    _, index, _ = await get(backend, "b/", recurse="")
    started = time.monotonic()
    status, again, _ = await get(backend, "b/", recurse="", index=str(index), wait=WAIT)
    elapsed = time.monotonic() - started
    assert status == 200 and again == index
    assert WAIT_S * 0.9 <= elapsed <= WAIT_S * (1 + 1 / 16) + 0.5


async def test_a_blocking_query_returns_when_its_prefix_changes(backend: Backend):
    assert await put(backend, "w/x", b"1")
    _, index, _ = await get(backend, "w/", recurse="")

    async def write_later() -> None:
        await asyncio.sleep(0.1)
        assert await put(backend, "w/y", b"2")

    writer = asyncio.create_task(write_later())
    started = time.monotonic()
    _, woke, entries = await get(backend, "w/", recurse="", index=str(index), wait="5s")
    assert time.monotonic() - started < 2.0
    assert woke > index and len(entries) == 2  # type: ignore[arg-type]
    await writer


async def test_a_missing_key_can_be_blocked_on_until_it_appears(backend: Backend):
    _, index, _ = await get(backend, "later")

    async def write_later() -> None:
        await asyncio.sleep(0.1)
        assert await put(backend, "later", b"here")

    writer = asyncio.create_task(write_later())
    status, woke, _ = await get(backend, "later", index=str(index), wait="5s")
    assert status == 200 and woke > index
    await writer


async def test_a_blocking_query_on_a_prefix_ignores_writes_elsewhere(backend: Backend):
    assert await put(backend, "quiet/x", b"1")
    _, index, _ = await get(backend, "quiet/", recurse="")

    async def write_elsewhere() -> None:
        await asyncio.sleep(0.1)
        assert await put(backend, "noisy", b"2")

    writer = asyncio.create_task(write_elsewhere())
    started = time.monotonic()
    _, again, _ = await get(backend, "quiet/", recurse="", index=str(index), wait=WAIT)
    assert time.monotonic() - started >= WAIT_S * 0.9 and again == index
    await writer


async def test_malformed_wait_and_index_are_rejected(backend: Backend):
    status, _, _ = await backend.call("GET", f"/v1/kv/{backend.prefix}x", index="1", wait="soon")
    assert status == 400
    status, _, _ = await backend.call("GET", f"/v1/kv/{backend.prefix}x", index="abc")
    assert status == 400


async def test_a_transaction_writes_and_reads_kv(backend: Backend):
    ops = [
        {"KV": {"Verb": "set", "Key": backend.prefix + "t/a", "Value": base64.b64encode(b"A").decode()}},
        {"KV": {"Verb": "get", "Key": backend.prefix + "t/a"}},
    ]
    status, _, result = await backend.json("PUT", "/v1/txn", ops)
    assert status == 200
    assert base64.b64decode(result["Results"][1]["KV"]["Value"]) == b"A"  # type: ignore[index]
    failing = [{"KV": {"Verb": "cas", "Key": backend.prefix + "t/a", "Index": 1, "Value": ""}}]
    status, _, result = await backend.json("PUT", "/v1/txn", failing)
    assert status == 409 and result["Errors"][0]["OpIndex"] == 0  # type: ignore[index]


# --- services and health ----------------------------------------------------------------------------


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 3.0) -> T:
    """A real agent syncs its services and check states to the catalog a moment after the call."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


async def register(backend: Backend, service_id: str, port: int, **extra: object) -> None:
    body = {"ID": service_id, "Name": backend.service, "Address": "10.0.0.1", "Port": port, **extra}
    status, _, _ = await backend.call("PUT", "/v1/agent/service/register", body)
    assert status == 200
    backend.registered.append(service_id)

    async def listed() -> bool:
        _, entries = await health(backend)
        return any(e["Service"]["ID"] == service_id for e in entries)

    assert await eventually(listed)


async def check_status(backend: Backend, service_id: str) -> str:
    _, entries = await health(backend)
    checks = [c for e in entries for c in e["Checks"] if c["ServiceID"] == service_id]
    return checks[0]["Status"] if checks else ""


async def health(backend: Backend, **params: str) -> tuple[int, list[dict]]:
    status, index, entries = await backend.json("GET", f"/v1/health/service/{backend.service}", **params)
    assert status == 200
    return index, entries  # type: ignore[return-value]


async def test_a_ttl_check_starts_critical_and_follows_pass_warn_fail(backend: Backend):
    sid = backend.service + "-1"
    await register(backend, sid, 8001, Check={"TTL": "30s"}, Weights={"Passing": 3, "Warning": 1}, Meta={"zone": "a"})
    _, entries = await health(backend)
    (entry,) = entries
    assert entry["Service"]["ID"] == sid and entry["Service"]["Port"] == 8001
    assert entry["Service"]["Weights"] == {"Passing": 3, "Warning": 1}
    assert entry["Service"]["Meta"] == {"zone": "a"}
    assert entry["Node"]["Datacenter"] and entry["Node"]["Node"]
    service_check = next(c for c in entry["Checks"] if c["ServiceID"] == sid)
    assert service_check["CheckID"] == f"service:{sid}" and service_check["Status"] == "critical"
    assert any(c["CheckID"] == "serfHealth" for c in entry["Checks"])
    for verb, expected in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
        status, _, _ = await backend.call("PUT", f"/v1/agent/check/{verb}/service:{sid}", note="contract")
        assert status == 200

        async def reached(expected: str = expected) -> bool:
            return await check_status(backend, sid) == expected

        assert await eventually(reached)


async def test_passing_filters_and_a_health_blocking_query_wakes_on_a_status_change(backend: Backend):
    sid = backend.service + "-2"
    await register(backend, sid, 8002, Check={"TTL": "30s"})
    index, passing = await health(backend, passing="")
    assert passing == []

    async def pass_later() -> None:
        await asyncio.sleep(0.1)
        await backend.call("PUT", f"/v1/agent/check/pass/service:{sid}")

    task = asyncio.create_task(pass_later())
    started = time.monotonic()
    woke, _ = await health(backend, index=str(index), wait="5s")
    assert time.monotonic() - started < 2.0 and woke > index
    await task

    async def passing_ids() -> list[str]:
        return [e["Service"]["ID"] for e in (await health(backend, passing=""))[1]]

    assert await eventually(passing_ids) == [sid]
    status, _, _ = await backend.call("PUT", f"/v1/agent/service/deregister/{sid}")
    assert status == 200

    async def gone() -> bool:
        return (await health(backend))[1] == []

    assert await eventually(gone)


async def test_the_agent_names_its_datacenter_and_services(backend: Backend):
    status, _, info = await backend.json("GET", "/v1/agent/self")
    assert status == 200 and info["Config"]["Datacenter"]  # type: ignore[index]
    await register(backend, backend.service + "-3", 8003)
    status, _, services = await backend.json("GET", "/v1/agent/services")
    assert services[backend.service + "-3"]["Service"] == backend.service  # type: ignore[index]
    status, index, catalog = await backend.json("GET", "/v1/catalog/services")
    assert status == 200 and index >= 1 and backend.service in catalog  # type: ignore[operator]


# --- the watchers, end to end ------------------------------------------------------------------------


async def test_the_policy_source_follows_an_edit(backend: Backend):
    text = EXAMPLE_POLICY.read_text()
    assert await put(backend, "policy", text.encode())
    source = ConsulPolicySource(backend.url, backend.prefix, backend.token)
    policies: asyncio.Queue = asyncio.Queue()
    task = asyncio.create_task(source.watch(policies.put_nowait, policies.put_nowait))
    assert (await asyncio.wait_for(policies.get(), 5)).listener_port == 8080
    assert await put(backend, "policy", text.replace("port: 8080", "port: 8082").encode())
    assert (await asyncio.wait_for(policies.get(), 5)).listener_port == 8082
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    _, _, (status,) = await get(backend, "status")  # type: ignore[misc]
    assert b'"accepted": true' in base64.b64decode(status["Value"])


async def test_the_catalog_watcher_follows_a_check(backend: Backend):
    sid = backend.service + "-4"
    await register(backend, sid, 8004, Check={"TTL": "30s"})
    watcher = CatalogWatcher(backend.url, backend.service, token=backend.token)
    updates: asyncio.Queue[list[Endpoint]] = asyncio.Queue()
    task = asyncio.create_task(watcher.watch(updates.put_nowait))
    (first,) = await asyncio.wait_for(updates.get(), 5)
    assert (first.port, first.health, first.priority) == (8004, "UNHEALTHY", 0)
    await backend.call("PUT", f"/v1/agent/check/pass/service:{sid}")
    (second,) = await asyncio.wait_for(updates.get(), 5)
    assert second.health == "HEALTHY"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
