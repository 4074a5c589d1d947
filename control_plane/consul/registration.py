"""The gateway's own processes in Consul's catalog: registered with a TTL check while they run,
deregistered when they stop. A no-op when no Consul address is configured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable

from control_plane.consul.catalog import ServiceRegistration
from control_plane.consul.client import TRANSIENT_ERRORS

log = logging.getLogger("ccr.registration")


@contextlib.asynccontextmanager
async def registered(
    consul_address: str, name: str, listen: str, healthy: Callable[[], bool], token: str | None = None
) -> AsyncIterator[None]:
    """Keep ``name`` registered (its TTL check passing while ``healthy()``) for the block's duration.

    A Consul that cannot be reached does not stop the service: it is logged, and the gateway works
    without being in the catalog."""
    if not consul_address:
        yield
        return
    service_id = f"{name}-{socket.gethostname()}-{os.getpid()}"
    port_or_socket: int | str = listen if listen.startswith("unix:") else int(listen.rpartition(":")[2])
    registration = ServiceRegistration(consul_address, name, service_id, port_or_socket, ttl="10s", token=token)
    try:
        await registration.register()
    except TRANSIENT_ERRORS as exc:
        log.warning("cannot register %s in Consul at %s: %s", service_id, consul_address, exc)
        await registration.close()
        yield
        return
    log.info("registered %s in Consul", service_id)
    heartbeat = asyncio.create_task(registration.heartbeat(healthy))
    try:
        yield
    finally:
        heartbeat.cancel()
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await registration.deregister()
            log.info("deregistered %s from Consul", service_id)
        await registration.close()
