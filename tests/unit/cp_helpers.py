"""Small shared helpers for the control plane unit tests: policies, an in-process ADS server and a
hand-driven ADS client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.rpc.status_pb2 import Status

from control_plane.policy import GatewayPolicy, ModelSpec, ProviderSpec
from control_plane.xds.ads import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "gateway.yaml"

# How long "nothing arrives" is waited for; long enough for an in-process round trip many times over.
SILENCE = 0.3
TIMEOUT = 5.0


def provider(
    name: str,
    *,
    api: str = "openai",
    host: str = "127.0.0.1",
    port: int = 9100,
    scheme: str = "http",
    base_path: str = "",
    models: Iterable[str] | None = None,
    api_key_env: str = "",
) -> ProviderSpec:
    """A valid provider spec; its one model is named after it unless told otherwise."""
    names = list(models) if models is not None else [f"model-{name}"]
    return ProviderSpec(
        name=name,
        api=api,
        scheme=scheme,
        host=host,
        port=port,
        base_path=base_path,
        api_key_env=api_key_env,
        models=tuple(ModelSpec(name=m, id=m) for m in names),
    )


def policy(*providers: ProviderSpec) -> GatewayPolicy:
    return GatewayPolicy(providers=tuple(providers))


@contextlib.asynccontextmanager
async def ads_server(cache: SnapshotCache) -> AsyncIterator[str]:
    """An ADS server on 127.0.0.1 (a free port) serving ``cache``; yields its "host:port"."""
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscoveryService(cache), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@dataclass
class AdsClient:
    """One ADS stream driven by hand: ``send`` queues a request, ``recv`` waits for a response."""

    target: str
    node: Node
    _outbox: asyncio.Queue[DiscoveryRequest | None] = field(default_factory=asyncio.Queue)
    _channel: grpc.aio.Channel | None = None
    _call: grpc.aio.StreamStreamCall | None = None
    _pending: asyncio.Task[DiscoveryResponse] | None = None

    async def __aenter__(self) -> AdsClient:
        self._channel = grpc.aio.insecure_channel(self.target)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.StreamAggregatedResources(self._requests())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._outbox.put_nowait(None)
        if self._pending is not None:
            self._pending.cancel()
        assert self._call is not None and self._channel is not None
        self._call.cancel()
        await self._channel.close()

    async def _requests(self) -> AsyncIterator[DiscoveryRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def send(
        self,
        type_url: str,
        *,
        names: Iterable[str] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = DiscoveryRequest(
            node=self.node, type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if error is not None:
            request.error_detail.CopyFrom(Status(code=3, message=error))
        self._outbox.put_nowait(request)

    def ack(self, response: DiscoveryResponse, names: Iterable[str] = ()) -> None:
        self.send(response.type_url, names=names, version=response.version_info, nonce=response.nonce)

    async def recv(self, timeout: float = TIMEOUT) -> DiscoveryResponse:
        assert self._call is not None
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._call.read())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no response within {timeout}s")
        task, self._pending = self._pending, None
        response = task.result()
        assert response is not grpc.aio.EOF, "the server closed the stream"
        return response

    async def expect_silence(self, seconds: float = SILENCE) -> None:
        """Nothing arrives for ``seconds`` (a response still on its way is kept for ``recv``)."""
        with contextlib.suppress(TimeoutError):
            response = await self.recv(timeout=seconds)
            raise AssertionError(f"unexpected response: {response.type_url} v{response.version_info}")


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds (server-side effects of a request land asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def names_in(response: DiscoveryResponse, message_type: type) -> list[str]:
    out = []
    for packed in response.resources:
        message = message_type()
        assert packed.Unpack(message)
        out.append(message.name if hasattr(message, "name") else message.cluster_name)
    return out
