"""A fault-injecting TCP proxy for tests: put it between a client and a real server (RabbitMQ,
PostgreSQL, ...) and cut the line on demand.

    with TcpProxy("127.0.0.1", 5672) as proxy:      # listens on 127.0.0.1:<proxy.port>
        ... connect to proxy.port ...
        proxy.cut()                                 # close every connection, refuse new ones
        proxy.cut(blackhole=True)                   # or: accept and hold, forwarding nothing
        proxy.restore()                             # forward again

Runs its own event loop on a daemon thread, so it serves sync and async tests alike (and a test
that drives whole processes). Every call is thread-safe and returns once the proxy's state has
changed: after ``cut()`` no byte passes in either direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = port or _free_port(listen_host)
        self.connections_accepted = 0
        self._mode = "open"  # open | reset | blackhole
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def cut(self, *, blackhole: bool = False) -> None:
        """Close every open connection (RST) and refuse new ones; ``blackhole``: accept new ones
        but forward nothing, as a dead peer or a dropped route looks (clients must time out)."""
        self._call(self._cut("blackhole" if blackhole else "reset"))

    def restore(self) -> None:
        self._call(self._set_mode("open"))

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- on the proxy's loop -------------------------------------------------------------------

    def _call(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port, reuse_address=True)

    async def _stop(self) -> None:
        await self._cut("reset")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for _ in range(3):  # let the aborted transports run their connection_lost callbacks
            await asyncio.sleep(0)

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode

    async def _cut(self, mode: str) -> None:
        self._mode = mode
        for client, upstream in list(self._links):
            _abort(client)
            if upstream is not None:
                _abort(upstream)
        self._links.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self._mode == "reset":
            _abort(client_writer)
            return
        if self._mode == "blackhole":
            link = (client_writer, None)
            self._links.add(link)
            with contextlib.suppress(Exception):
                while await client_reader.read(65536):
                    pass  # swallowed
            self._links.discard(link)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_writer)
            return
        link = (client_writer, upstream_writer)
        self._links.add(link)
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer, link),
            self._pipe(upstream_reader, client_writer, link),
        )
        self._links.discard(link)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link) -> None:
        try:
            while link in self._links and (data := await reader.read(65536)):
                if link not in self._links:
                    break  # cut while reading: the data must not pass
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if link in self._links:
                self._links.discard(link)
                for side in link:
                    if side is not None:
                        _abort(side)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    with contextlib.suppress(Exception):
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: close with a reset, as a crashed peer or a firewall does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
