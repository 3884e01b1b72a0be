"""Process level: serve one ASGI application behind the guards, and drain it on SIGTERM.

An application hands the layer a `Service` and the `HttpSettings`, and calls `run`:

    run(Service(app, begin_drain=state.begin_drain, public_paths={"/health"}), settings)

It then gets, by construction, everything in `protocol` (header size and deadline, idle
timeout, connection cap) and `front` (auth before work, bounded and complete bodies,
`Connection: close` while draining, access log), and this drain sequence:

1. First SIGTERM (or SIGINT) at t0: `Service.begin_drain` runs (the application turns its
   readiness to 503), every response from then on carries `Connection: close`, and every
   connection idle for `protocol.DRAIN_IDLE_SECONDS` is closed between requests.
2. t0 + `drain_delay_seconds`: the listening socket closes; requests on open connections
   are still answered (with `Connection: close`).
3. When no connection is left, or at t0 + `drain_seconds`: the remaining connections are
   closed, the application's lifespan shutdown runs (the batcher finishes its queue), and
   the process exits 0. A second signal exits at once.

With `HttpSettings.tls` the same server speaks HTTPS only, its certificate reloaded when the
files change (`tls`); the guards above apply from each connection's TCP accept, handshake included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

import orjson
import uvicorn
from prometheus_client import CollectorRegistry

from maas_workloads.serve.http.connections import Connections, ErrorBody
from maas_workloads.serve.http.front import ASGIApp, Front
from maas_workloads.serve.http.logs import AccessLog
from maas_workloads.serve.http.protocol import GuardedProtocol
from maas_workloads.serve.http.settings import HttpSettings, SettingsError
from maas_workloads.serve.http.tls import certificate_store

log = logging.getLogger(__name__)

RESERVED_FILES: Final = 128
"""File descriptors kept for everything but client connections (model files, logs, threads)."""


def oip_error_body(status: int, message: str) -> bytes:
    """`{"error": message}`, the Open Inference Protocol's error shape."""
    return orjson.dumps({"error": message})


@dataclass(frozen=True)
class Service:
    """What an application hands the shared HTTP layer."""

    app: ASGIApp
    begin_drain: Callable[[], None]
    """Called once, on the first SIGTERM: the application turns its readiness false."""
    public_paths: Collection[str] = field(default_factory=frozenset)
    """Paths served without the bearer token (the health probes)."""
    error_body: ErrorBody = oip_error_body
    """The body of the layer's own error responses (401, 408, 413, 431, ...), in the app's shape."""
    registry: CollectorRegistry | None = None
    """Where the layer's metrics (`maas_http_*`) go (the app's /metrics registry)."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain sequence above instead of its immediate shutdown."""

    def __init__(self, config: uvicorn.Config, service: Service, connections: Connections) -> None:
        super().__init__(config)
        self.server_state = connections  # what every GuardedProtocol receives
        self._service = service
        self._connections = connections
        self._settings = connections.settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._drain_started: float | None = None
        self._drain: asyncio.Task[None] | None = None
        self._reloads: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        if self._connections.tls is not None:
            self._reloads = self._loop.create_task(self._connections.tls.watch(), name="certificate-reloads")
        await super().startup(sockets)  # type: ignore[arg-type]

    def _log_started_message(self, listeners: Sequence[socket.SocketType]) -> None:
        # uvicorn's own line would say http:// for HTTPS too: TLS here is the guard's, not uvicorn's.
        port = listeners[0].getsockname()[1] if listeners else self.config.port
        scheme = "https" if self._connections.tls is not None else "http"
        log.info("listening", extra={"url": f"{scheme}://{self.config.host}:{port}"})

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Replaces uvicorn's handler, which would re-raise the signal after shutdown and so
        # turn a clean drain into death by SIGTERM instead of exit 0.
        if self._signalled or self._loop is None:
            self.should_exit = self.force_exit = True
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._connections.all_closed.set)  # stop waiting for them
            return
        self._signalled = True
        log.info("draining", extra={"signal": signal.Signals(sig).name, **_timings(self._settings)})
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain_started is not None:
            return
        loop = asyncio.get_running_loop()
        self._drain_started = loop.time()
        self._service.begin_drain()
        self._connections.begin_drain()
        self._drain = loop.create_task(self._stop_listening_after_delay(), name="drain")

    async def _stop_listening_after_delay(self) -> None:
        await asyncio.sleep(self._settings.drain_delay_seconds)
        self.should_exit = True  # uvicorn's main loop notices within 0.1 s and calls shutdown()

    async def shutdown(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        if self._drain_started is None:  # stopping without a signal (e.g. a failed startup)
            self._begin_drain()
        assert self._drain_started is not None
        for server in self.servers:
            server.close()
        deadline = self._drain_started + self._settings.drain_seconds
        while self._connections.connections and not self.force_exit and loop.time() < deadline:
            self._connections.all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connections.all_closed.wait(), deadline - loop.time())
        left = len(self._connections.connections)
        if left:
            log.warning("closing connections still open", extra={"connections": left, "forced": self.force_exit})
        for connection in list(self._connections.connections):
            connection.transport.close()
        for task in list(self._connections.tasks):
            task.cancel()
        if self._reloads is not None:
            self._reloads.cancel()
        if not self.force_exit:
            await self.lifespan.shutdown()
        log.info("drained", extra={"seconds": round(loop.time() - self._drain_started, 3)})


def _timings(settings: HttpSettings) -> dict[str, float]:
    return {"delay_seconds": settings.drain_delay_seconds, "drain_seconds": settings.drain_seconds}


def ensure_file_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to the hard one; SettingsError when the cap cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit above the kernel's nr_open
            pass
    needed = max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SettingsError(
            f"--max-connections {max_connections} needs about {needed} file descriptors, but the process may "
            f"open {soft} (ulimit -n): lower --max-connections (MAAS_MAX_CONNECTIONS) or raise the limit"
        )


def build(service: Service, settings: HttpSettings) -> DrainingServer:
    """The server for `service`, not started (`run` starts it; tests may drive it themselves).

    Raises SettingsError when `settings.tls` names a certificate and key that cannot be loaded.
    """
    access_log = AccessLog() if settings.access_log else None
    tls = certificate_store(settings, service.registry)
    connections = Connections(settings, service.error_body, access_log, service.registry, tls)
    front = Front(service.app, connections, public_paths=service.public_paths, access_log=access_log)
    config = uvicorn.Config(
        front,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GuardedProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,  # type: ignore[arg-type]
    )
    return DrainingServer(config, service, connections)


def run(service: Service, settings: HttpSettings) -> bool:
    """Serve until a signal has drained the server (see the module docstring).

    Returns whether the server started (bound its port and completed the lifespan startup).
    Raises SettingsError when `max_connections` cannot fit the process's file limit, or the
    TLS certificate and key cannot be loaded.
    """
    ensure_file_limit(settings.max_connections)
    server = build(service, settings)
    server.run()
    return server.started
