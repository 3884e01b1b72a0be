"""A Kubernetes Service in miniature, for rollout tests: a TCP proxy in its own thread.

Like kube-proxy, it picks an endpoint (round robin) only when a client opens a connection,
and the connection stays with that endpoint for its life (conntrack), even after the
endpoint is removed: a pooled client keeps talking to a terminating pod until one side
closes. Closes pass through as they happen: a server's FIN reaches the client as a FIN, a
reset as a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

Endpoint = tuple[str, int]


class Service:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self._endpoints = list(endpoints)
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: dict[Endpoint, int] = {endpoint: 0 for endpoint in endpoints}
        """Client connections opened to each endpoint so far."""
        self._thread = threading.Thread(target=self._run, name="service", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def remove(self, endpoint: Endpoint) -> None:
        """The endpoints controller drops `endpoint`: new connections go elsewhere, open ones stay."""
        self._loop.call_soon_threadsafe(self._endpoints.remove, endpoint)

    def watch_readiness(self, endpoint: Endpoint, ready: Callable[[], bool], period: float) -> None:
        """Remove `endpoint` once `ready()` (called in a thread every `period` s) says False."""

        def watch() -> None:
            while ready():
                threading.Event().wait(period)
            self.remove(endpoint)

        threading.Thread(target=watch, name="readiness", daemon=True).start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        self._server.close()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, sock=self._listener))
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        endpoint = self._endpoints[self._turn % len(self._endpoints)]
        self._turn += 1
        self.connections[endpoint] += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*endpoint)
        except OSError:
            client_writer.transport.abort()  # the client sees a reset, as with a dead endpoint
            return
        await asyncio.gather(
            _pump(client_reader, server_writer),
            _pump(server_reader, client_writer),
        )
        for writer in (client_writer, server_writer):
            writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
    except OSError:  # a reset on one side is passed on as a reset
        writer.transport.abort()
