"""ext_proc's xDS client: subscribes to the ccr.v1.Policy resource over ADS, ACKs or NACKs it.

The control plane only offers a policy whose clusters every Envoy has ACKed (make-before-break),
so installing it here is always safe. A policy this process cannot use (for instance a provider
API it does not know) is NACKed with the reason and the previous table stays in force. When the
control plane is unreachable the last table stays in force too, as Envoy keeps its last config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.rpc.status_pb2 import Status

from ccr.v1.contract import EXTPROC_GROUP, POLICY_RESOURCE_NAME
from ccr.v1.contract import POLICY_TYPE_URL as POLICY
from ccr.v1.policy_pb2 import Policy
from extproc.routing_table import PolicyCompileError, RoutingTable, compile_policy

log = logging.getLogger("ccr.extproc.policy")


class PolicySubscriber:
    def __init__(
        self,
        target: str,
        on_table: Callable[[RoutingTable], None],
        node_id: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target  # "host:port" or "unix:/path"
        self.credentials = credentials  # TLS (with this worker's client certificate); None: plaintext
        self.on_table = on_table
        self.node = Node(id=node_id or f"extproc-{socket.gethostname()}-{os.getpid()}", cluster=EXTPROC_GROUP)
        self.acked_version = ""
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._session()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "control plane %s unavailable (%s); retrying in %.1fs", self.target, exc.code().name, backoff
                )
            except Exception:
                log.exception("policy subscription failed; retrying in %.1fs", backoff)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        outbox: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()
        outbox.put_nowait(self._request(nonce="", version=self.acked_version))

        async def requests() -> AsyncIterator[DiscoveryRequest]:
            while True:
                yield await outbox.get()

        if self.credentials is not None:
            opened = grpc.aio.secure_channel(self.target, self.credentials)
        else:
            opened = grpc.aio.insecure_channel(self.target)
        async with opened as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(requests())
            self.connected.set()
            try:
                async for response in call:
                    if response.type_url != POLICY:
                        continue
                    outbox.put_nowait(self._apply(response.version_info, response.nonce, response.resources))
            finally:
                # A stream ended by the server (a restarted control plane) leaves grpc's task that
                # reads requests() waiting on the outbox; cancelling the call ends it, instead of
                # "Task was destroyed but it is pending" errors when it is garbage-collected.
                call.cancel()

    def _apply(self, version: str, nonce: str, resources: list) -> DiscoveryRequest:
        try:
            if len(resources) != 1:
                raise PolicyCompileError(f"expected exactly one policy resource, got {len(resources)}")
            policy = Policy()
            if not resources[0].Unpack(policy):
                raise PolicyCompileError(f"resource is a {resources[0].type_url}, not a ccr.v1.Policy")
            table = compile_policy(policy)
        except PolicyCompileError as exc:
            log.error("policy version %s rejected: %s", version, exc)
            return self._request(nonce=nonce, version=self.acked_version, error=str(exc))
        self.on_table(table)
        self.acked_version = version
        log.info("policy version %s installed (%d models)", policy.version, len(table.models))
        return self._request(nonce=nonce, version=version)

    def _request(self, nonce: str, version: str, error: str | None = None) -> DiscoveryRequest:
        request = DiscoveryRequest(
            node=self.node,
            type_url=POLICY,
            resource_names=[POLICY_RESOURCE_NAME],
            version_info=version,
            response_nonce=nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(Status(code=3, message=error))  # INVALID_ARGUMENT
        return request
