"""State-of-the-World ADS over grpc.aio, depending only on the snapshot cache.

Per stream and per type we remember what we sent (version, nonce, resource names). Rules, from
the xDS protocol and go-control-plane's hard lessons:

- A request whose ``response_nonce`` is not the last nonce we sent for its type is stale: ignored.
- ACK: the request echoes our nonce and carries no ``error_detail``: recorded in the cache.
- NACK: ``error_detail`` set: logged and counted; the same version is NOT sent again (that is the
  endless NACK loop of go-control-plane #962); we wait for the next snapshot.
- A response goes out when the type's version differs from what we sent, when the requested names
  changed, or, for endpoints, after any cluster response: Envoy warms a changed cluster only on a
  fresh EDS response, even when the endpoints themselves did not change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import count

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from prometheus_client import Counter

from control_plane.xds.cache import CHANGED, Ack, SnapshotCache
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, NAMED_TYPES, TYPE_ORDER, Resources

log = logging.getLogger("ccr.control_plane.xds.ads")

XDS_RESPONSES = Counter("ccr_xds_responses_total", "xDS responses sent", ["group", "type"])
XDS_NACKS = Counter("ccr_xds_nacks_total", "xDS responses rejected (NACK) by a node", ["group", "type"])

_nonces = count(1)


@dataclass
class _TypeState:
    subscribed: bool = False
    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""
    resend: bool = False  # endpoints after a cluster update


@dataclass
class _Stream:
    group: str = ""
    node: str = ""
    types: dict[str, _TypeState] = field(default_factory=dict)


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        stream = _Stream()
        reader = asyncio.create_task(self._read(request_iterator, queue))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    break
                if isinstance(item, DiscoveryRequest):
                    if not stream.group:
                        stream.group = item.node.cluster or "ccr-gateway"
                        stream.node = item.node.id or f"anonymous-{id(stream)}"
                        self.cache.connect_node(stream.group, stream.node)
                        self.cache.watch(stream.group, queue)
                        log.info("node %s (%s) connected", stream.node, stream.group)
                    self._handle_request(stream, item)
                elif item is not CHANGED:
                    continue
                for response in self._responses(stream):
                    yield response
        finally:
            reader.cancel()
            if stream.group:
                self.cache.cancel(stream.group, queue)
                self.cache.forget_node(stream.group, stream.node)
                log.info("node %s (%s) disconnected", stream.node, stream.group)

    async def _read(self, requests: AsyncIterator[DiscoveryRequest], queue: asyncio.Queue[object]) -> None:
        try:
            async for request in requests:
                queue.put_nowait(request)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception as exc:  # the stream broke: end the responder loop
            queue.put_nowait(exc)
            return
        queue.put_nowait(EOFError())

    def _handle_request(self, stream: _Stream, request: DiscoveryRequest) -> None:
        state = stream.types.setdefault(request.type_url, _TypeState())
        if request.response_nonce and request.response_nonce != state.nonce:
            return  # stale: answers an older response of ours
        state.subscribed = True
        state.names = frozenset(request.resource_names)
        if not request.response_nonce:
            # A first request, or a new subscription after a reconnect: always answer it.
            state.sent_version = None
            return
        if request.HasField("error_detail"):
            XDS_NACKS.labels(stream.group, _short(request.type_url)).inc()
            log.error(
                "node %s rejected %s version %s: %s",
                stream.node,
                _short(request.type_url),
                state.sent_version,
                request.error_detail.message,
            )
            nack = Ack(stream.group, stream.node, request.type_url, state.sent_version or request.version_info)
            self.cache.record_nack(nack, request.error_detail.message[:500])
            return
        self.cache.record_ack(Ack(stream.group, stream.node, request.type_url, request.version_info))

    def _responses(self, stream: _Stream) -> list[DiscoveryResponse]:
        snapshot = self.cache.get(stream.group)
        if snapshot is None:
            return []
        out = []
        for type_url in TYPE_ORDER:
            state = stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            resources = snapshot.get(type_url)
            names = state.names if type_url in NAMED_TYPES else frozenset()
            if state.sent_version == resources.version and state.sent_names == names and not state.resend:
                continue
            out.append(self._response(stream, type_url, state, resources, names))
            if type_url == CLUSTER and ENDPOINT in stream.types:
                stream.types[ENDPOINT].resend = True
        return out

    def _response(
        self, stream: _Stream, type_url: str, state: _TypeState, resources: Resources, names: frozenset[str]
    ) -> DiscoveryResponse:
        selected = [message for name, message in resources.by_name.items() if not names or name in names]
        response = DiscoveryResponse(version_info=resources.version, type_url=type_url, nonce=str(next(_nonces)))
        for message in selected:
            packed = AnyProto()
            packed.Pack(message)
            response.resources.append(packed)
        state.sent_version = resources.version
        state.sent_names = names
        state.nonce = response.nonce
        state.resend = False
        XDS_RESPONSES.labels(stream.group, _short(type_url)).inc()
        log.debug("-> %s %s v%s (%d resources)", stream.node, _short(type_url), resources.version, len(selected))
        return response


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
