"""The latest snapshot per node group, and the watches that wake ADS streams when it changes.

Node groups are xDS `node.cluster` values: Envoy proxies (``ccr-gateway``) and ext_proc processes
(``ccr-extproc``) receive different snapshots. The cache knows nothing about gRPC; the ADS server
depends only on ``get``/``watch``/``cancel`` and ``record_ack``/``forget_node``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.xds.snapshot import Snapshot

CHANGED = object()  # put on a watch queue when the group's snapshot changed


@dataclass(frozen=True, slots=True)
class Ack:
    group: str
    node: str
    type_url: str
    version: str


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, set[asyncio.Queue[object]]] = {}
        self._ack_listeners: list[Callable[[Ack | None], None]] = []
        # group -> node -> type_url -> acked version
        self.acks: dict[str, dict[str, dict[str, str]]] = {}
        # group -> node -> type_url -> "<rejected version>: <Envoy's error>" (until ACKed again)
        self.nacks: dict[str, dict[str, dict[str, str]]] = {}
        # A node may briefly hold two streams (it reconnected before its old stream was reaped):
        # its ACKs are forgotten only when its last stream closes.
        self._streams: dict[tuple[str, str], int] = {}

    def get(self, group: str) -> Snapshot | None:
        return self._snapshots.get(group)

    def set(self, group: str, snapshot: Snapshot) -> None:
        if self._snapshots.get(group) == snapshot:
            return
        self._snapshots[group] = snapshot
        for queue in self._watches.get(group, ()):
            queue.put_nowait(CHANGED)

    def watch(self, group: str, queue: asyncio.Queue[object]) -> None:
        self._watches.setdefault(group, set()).add(queue)

    def cancel(self, group: str, queue: asyncio.Queue[object]) -> None:
        self._watches.get(group, set()).discard(queue)

    def on_ack(self, listener: Callable[[Ack | None], None]) -> None:
        self._ack_listeners.append(listener)

    def record_ack(self, ack: Ack) -> None:
        self.acks.setdefault(ack.group, {}).setdefault(ack.node, {})[ack.type_url] = ack.version
        self.nacks.get(ack.group, {}).get(ack.node, {}).pop(ack.type_url, None)  # that type is fine again
        for listener in self._ack_listeners:
            listener(ack)

    def record_nack(self, ack: Ack, message: str) -> None:
        """A node rejected ``ack.version`` of a type: kept (for `status` and the Admin API) until
        it ACKs that type again; the ACK listeners hear of it like of an ACK."""
        self.nacks.setdefault(ack.group, {}).setdefault(ack.node, {})[ack.type_url] = f"{ack.version}: {message}"
        for listener in self._ack_listeners:
            listener(ack)

    def connect_node(self, group: str, node: str) -> None:
        self._streams[(group, node)] = self._streams.get((group, node), 0) + 1
        self.acks.setdefault(group, {}).setdefault(node, {})

    def forget_node(self, group: str, node: str) -> None:
        """A stream closed: once it was the node's last, the node no longer holds back (or waits
        for) a rollout."""
        remaining = self._streams.get((group, node), 1) - 1
        if remaining > 0:
            self._streams[(group, node)] = remaining
            return
        self._streams.pop((group, node), None)
        self.acks.get(group, {}).pop(node, None)
        self.nacks.get(group, {}).pop(node, None)
        for listener in self._ack_listeners:
            listener(None)

    def nodes(self, group: str) -> dict[str, dict[str, str]]:
        return self.acks.get(group, {})
