"""What every connection of one server shares: its phase, the cap on open connections, the drain.

`Connections` (uvicorn's per-server state, extended) keeps the connections waiting in the
phases that may give way at the cap in insertion-ordered dicts, so that finding the one to
close is O(1) however many are open; `protocol.GuardedProtocol` moves each connection between
the phases (described there).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.server import ServerState

from maas_workloads.serve.http.logs import AccessLog
from maas_workloads.serve.http.settings import HttpSettings
from maas_workloads.serve.http.tls import CertificateStore

ErrorBody = Callable[[int, str], bytes]
"""(HTTP status, message) -> the JSON body of an error response, in the application's error shape."""


class Phase(enum.Enum):
    AWAITING = "awaiting"
    BUSY = "busy"
    IDLE = "idle"
    REJECTED = "rejected"
    CLOSING = "closing"


# Plain names for the hot path (a module global is cheaper to reach than an enum's attribute).
AWAITING, BUSY, IDLE, REJECTED, CLOSING = Phase.AWAITING, Phase.BUSY, Phase.IDLE, Phase.REJECTED, Phase.CLOSING
# Which connection gives way when a new one arrives at the cap: one already answered with an
# error, then the one waiting longest for its headers, then the one idle longest.
_EVICTION_ORDER: Final = (REJECTED, AWAITING, IDLE)


@runtime_checkable
class Guarded(Protocol):
    """A connection `Connections` can drain and evict (`protocol.GuardedProtocol`)."""

    def begin_drain(self) -> None: ...

    def evict(self) -> None: ...


class Connections(ServerState):
    """uvicorn's server state (open connections, running tasks) plus the guard's shared state.

    One per server; every `protocol.GuardedProtocol` gets it as its `server_state`.
    """

    def __init__(
        self,
        settings: HttpSettings,
        error_body: ErrorBody,
        access_log: AccessLog | None,
        registry: CollectorRegistry | None,
        tls: CertificateStore | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.error_body = error_body
        self.access_log = access_log
        self.tls = tls
        """The certificate every new connection's handshake uses; None: plain HTTP."""
        self.draining = False
        self.evictable: dict[Phase | None, dict[Guarded, None]] = {phase: {} for phase in _EVICTION_ORDER}
        """Per phase that may give way at the cap, its connections in the order they entered it."""
        self.all_closed = asyncio.Event()
        """Set once the server drains and its last connection has closed."""
        self.buffered_bytes = 0
        """Bytes reserved for request bodies being read or served (`reserve`, `release`)."""
        registry = registry if registry is not None else CollectorRegistry()
        gauge = Gauge("maas_http_connections", "Open HTTP connections.", registry=registry)
        gauge.set_function(lambda: len(self.connections))
        buffered = Gauge(
            "maas_http_buffered_request_bytes",
            "Bytes reserved for request bodies held in memory, all connections together.",
            registry=registry,
        )
        buffered.set_function(lambda: self.buffered_bytes)
        self.rejected = Counter(
            "maas_http_rejected",
            "Requests or connections refused before the application saw them, by reason.",
            ["reason"],
            registry=registry,
        )

    def reserve(self, size: int) -> bool:
        """Reserve `size` bytes of the request-body budget (`max_buffered_bytes`); False when they do not fit."""
        if self.buffered_bytes + size > self.settings.max_buffered_bytes:
            return False
        self.buffered_bytes += size
        return True

    def release(self, size: int) -> None:
        """Give back what `reserve` granted, once the request's body is no longer held."""
        self.buffered_bytes -= size

    def begin_drain(self) -> None:
        """From now on idle connections close after DRAIN_IDLE_SECONDS; see `front.Front` for responses."""
        self.draining = True
        for connection in list(self.connections):
            if isinstance(connection, Guarded):
                connection.begin_drain()

    def closed(self) -> None:
        """A connection closed: note when none is left while draining."""
        if self.draining and not self.connections:
            self.all_closed.set()

    def make_room(self, newcomer: Guarded) -> bool:
        """At the cap, close one connection that is not serving a request; False when all are.

        Connections busy with a request are never cut: the newcomer is refused instead (503).
        """
        for phase in _EVICTION_ORDER:
            for connection in self.evictable[phase]:
                if connection is not newcomer:
                    connection.evict()
                    return True
        return False
