"""Connection-level guard: uvicorn's httptools protocol with limits enforced before the parser.

uvicorn with httptools parses fast but bounds nothing: a header of hundreds of MiB is
buffered whole, a connection that never finishes its headers stays open forever, and any
number of connections may be open. `GuardedProtocol` counts the bytes of every request line
and header block it feeds to httptools and times them, and `Connections` (uvicorn's
per-server state, extended) keeps the phase of every connection so that the cap on
connections and the drain can act on each by what it is doing:

- AWAITING: accepted, or a request's first bytes received, headers not complete. Bounded by
  `max_header_bytes` (431) and `header_timeout_seconds` (408, or a silent close when not a
  byte of the request arrived).
- BUSY: headers complete, the response not yet sent; the request-level guard
  (`front.Front`) bounds the body and its time.
- IDLE: between requests on a keep-alive connection; closed after
  `keep_alive_timeout_seconds`, or after `DRAIN_IDLE_SECONDS` once the server drains.
- REJECTED: an error response was written and the write side shut; what the client still
  sends is read and dropped (lingering close, as nginx and Apache do) until it closes, up to
  `LINGER_BYTES` or `LINGER_SECONDS`, so that a client still sending reads the response
  rather than a connection reset, and one that hangs up frees its slot at once.
- CLOSING: closed by the server, waiting for the transport to go.

Connections waiting in the phases that may give way at the cap are kept in insertion-ordered
dicts, so that finding the one to close is O(1) however many are open.

HTTPS (`Connections.tls` set) keeps all of this in front of the handshake: the connection is
ours from its TCP accept, so it counts against the cap, sits in AWAITING and has the header
deadline running while the event loop's TLS layer (uvloop's, the one `loop.start_tls` uses)
runs the handshake; the parser then sees the decrypted bytes under the same limits. A client
that opens TCP and never completes the handshake is closed by the header deadline, or evicted
as the connection waiting longest for its headers.

The hot path (a whole request in one read) arms no timer of its own and copies no bytes, and
a response's head and body leave in one write (`transport.CoalescingTransport`).
"""

from __future__ import annotations

import asyncio
import http
from typing import Any, Final

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from maas_workloads.serve.http.connections import (
    AWAITING,
    BUSY,
    CLOSING,
    IDLE,
    REJECTED,
    Connections,
    Phase,
)
from maas_workloads.serve.http.tls import start_handshake
from maas_workloads.serve.http.transport import CoalescingTransport

DRAIN_IDLE_SECONDS: Final = 1.0
"""While draining, a connection idle this long is closed. Closing an idle connection races
with a client that sends on it at that instant (RFC 9112 §9.6), which a non-idempotent POST
cannot survive; a client that sends back to back reuses its connection within milliseconds
and so gets `Connection: close` on its next response instead of a close under its feet."""
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 64 * 1024
"""After the server's own error response, what a client still sends is dropped for this long
or this many bytes at most, then the connection closes."""


class _RefusedError(Exception):
    """Raised from a parser callback after refusing the request: stops the parser mid-read."""


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header limits, header and idle deadlines, a connection cap and drain."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(server_state, Connections), "GuardedProtocol needs a Connections server state"
        self.guard = server_state
        self.phase: Phase | None = None
        """None until the connection is made."""
        self.since = self.loop.time()
        """When the current phase began (for AWAITING: the accept, or the request's first byte)."""
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = False
        """The parser is inside a request line or headers (between message begin and headers complete)."""
        self._header_bytes = 0
        """Bytes fed to the parser while inside the current request's headers (an upper bound)."""
        self._max_header_bytes = server_state.settings.max_header_bytes
        self._dropped = 0
        self._lost = False
        self._tls: asyncio.BaseProtocol | None = None
        """The TLS layer while its handshake runs; None before, after, and for plain HTTP."""

    # --- connection events ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self._tls is not None:  # the second call, from the TLS layer: the handshake succeeded
            self._secured(transport)
            return
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._enter(AWAITING)
        self._arm_deadline(self.guard.settings.header_timeout_seconds)
        if self.guard.draining:
            self.begin_drain()
        if len(self.connections) > self.guard.settings.max_connections and not self.guard.make_room(self):
            self._refuse_at_cap()
        elif self.guard.tls is not None:
            # The header deadline armed above bounds the handshake too (the layer's own timeout is
            # set just past it); when it succeeds the TLS layer calls connection_made again.
            timeout = self.guard.settings.header_timeout_seconds + 1
            self._tls = start_handshake(transport, self, self.guard.tls.context, timeout, self._handshake_ended)

    def _secured(self, transport: asyncio.Transport) -> None:
        """The handshake succeeded: requests arrive, and responses leave, through `transport`."""
        self._tls = None
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self.flow = FlowControl(transport)
        self.scheme = "https"

    def _handshake_ended(self, waiter: asyncio.Future[None]) -> None:
        if self._tls is None:  # secured
            return
        # Failed (a bad client hello, plain HTTP, an alert, a reset) or closed under it (the
        # deadline, the cap, the drain). The TLS layer does not report a connection lost during
        # the handshake to its application: this is where it ends.
        if not waiter.cancelled() and waiter.exception() is not None and self.phase is AWAITING:
            self.guard.rejected.labels("tls_handshake").inc()
        self._tls = None
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # a failed handshake may be reported both by its waiter and by the TLS layer
            return
        self._lost = True
        self._cancel_deadline()
        self._enter(None)
        super().connection_lost(exc)
        self.guard.closed()

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is REJECTED or phase is CLOSING:
            self._drop(len(data))
            return
        self._unset_keepalive_if_required()
        # Where this read starts inside a request head, the parser gets at most what the limit
        # leaves plus one byte: an oversized head is refused having cost no more than the limit.
        budget = self._max_header_bytes - self._header_bytes
        if len(data) > budget and (self._in_headers or phase is not BUSY):
            if not self._feed(data[: budget + 1]):
                return
            if self._in_headers:
                self._reject_headers_too_large()
                return
            data = data[budget + 1 :]  # the head ended inside the budget: the rest is its body
        if not self._feed(data):
            return
        if self._in_headers:
            # Counted per read: a head that started inside this read counts from the read's start.
            self._header_bytes += len(data)
            if self._header_bytes > self._max_header_bytes:
                self._reject_headers_too_large()
                return
            if self.phase is IDLE:
                self._enter(AWAITING)  # the next request has begun: its headers are due
        if self.phase is AWAITING and self._deadline is None:
            self._arm_deadline(self.guard.settings.header_timeout_seconds)
        elif self.phase is IDLE:  # bytes that begin no request (blank lines) do not reset the idle time
            self._close_when_idle_for(self.timeout_keep_alive)

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when the connection's request was refused meanwhile."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSocket here: the request proceeds as plain HTTP
        except httptools.HttpParserError as error:
            if self.phase is not REJECTED and self.phase is not CLOSING:  # else a callback refused it
                self._reject(http.HTTPStatus.BAD_REQUEST, f"invalid HTTP request: {error}", "malformed")
            return False
        return True

    # --- parser callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)  # ": " and CRLF
        if size > self._max_header_bytes:
            self._reject_headers_too_large()
            raise _RefusedError  # stop parsing what follows
        self._cancel_deadline()
        self._enter(BUSY)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self.transport.is_closing() or pipelined:
            return
        if self._in_headers:
            # The next request's first bytes came while this one was served: its headers are due.
            self._unset_keepalive_if_required()
            self._enter(AWAITING)
            self._arm_deadline(self.guard.settings.header_timeout_seconds)
            return
        self._enter(IDLE)  # uvicorn armed the keep-alive timer (shortened by begin_drain)

    # --- drain and eviction ---------------------------------------------------------------
    def begin_drain(self) -> None:
        """Close this connection once it has been idle DRAIN_IDLE_SECONDS, counting from before the drain."""
        self.timeout_keep_alive = min(self.timeout_keep_alive, DRAIN_IDLE_SECONDS)  # type: ignore[assignment]
        if self.phase is IDLE or (self.phase is AWAITING and not self._in_headers):
            self._close_when_idle_for(DRAIN_IDLE_SECONDS)

    def evict(self) -> None:
        """Give way to a new connection at the cap (never called on a BUSY connection)."""
        self.guard.rejected.labels("connection_limit").inc()
        if self.phase is AWAITING and self._in_headers:
            self._respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "the server is at its connection limit; retry")
        self._close()

    def _refuse_at_cap(self) -> None:
        self.guard.rejected.labels("connection_limit").inc()
        if self.guard.tls is not None:  # no answer can be read before a handshake, which costs more than a close
            self._close()
            return
        limit = self.guard.settings.max_connections
        self._respond(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            f"the server has {limit} connections busy with requests, its limit; retry",
            retry_after=True,
        )
        self._close()

    # --- timers -----------------------------------------------------------------------------
    def _enter(self, phase: Phase | None) -> None:
        """Move to `phase` (None: closed), keeping the cap's per-phase order."""
        evictable = self.guard.evictable
        if self.phase in evictable:
            del evictable[self.phase][self]
        if phase in evictable:
            evictable[phase][self] = None
        self.phase = phase
        self.since = self.loop.time()

    def _close(self) -> None:
        self._enter(CLOSING)
        self.transport.close()

    def _arm_deadline(self, seconds: float) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, self._header_deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_deadline_passed(self) -> None:
        self._deadline = None
        if self.phase is not AWAITING or self.transport.is_closing():
            return
        self.guard.rejected.labels("header_timeout").inc()
        if self._in_headers:
            seconds = self.guard.settings.header_timeout_seconds
            self._reject(http.HTTPStatus.REQUEST_TIMEOUT, f"the request's headers took longer than {seconds:g} s", None)
        else:
            self.transport.close()  # not a byte of a request: nothing to answer

    def _close_when_idle_for(self, seconds: float) -> None:
        self._unset_keepalive_if_required()
        delay = max(0.0, self.since + seconds - self.loop.time())
        self.timeout_keep_alive_task = self.loop.call_later(delay, self.timeout_keep_alive_handler)

    # --- error responses ----------------------------------------------------------------------
    def _reject_headers_too_large(self) -> None:
        limit = self._max_header_bytes
        self._reject(
            http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request line and headers exceed {limit} bytes, this server's limit",
            "header_too_large",
        )

    def _reject(self, status: http.HTTPStatus, message: str, reason: str | None) -> None:
        """Answer `status` and close, reading and dropping what the client still sends for a while."""
        if reason is not None:
            self.guard.rejected.labels(reason).inc()
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        self._in_headers = False
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being served on this connection: no room for a second response.
            self._close()
            return
        self._respond(status, message)
        self._enter(REJECTED)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _drop(self, size: int) -> None:
        self._dropped += size
        if self._dropped > LINGER_BYTES:
            self.transport.close()

    def _respond(self, status: http.HTTPStatus, message: str, *, retry_after: bool = False) -> None:
        body = self.guard.error_body(status, message)
        head = [
            f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode(),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after:
            head.append(b"retry-after: 1\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        if self.guard.access_log is not None:
            self.guard.access_log.record(
                {
                    "method": None,  # the request line may be what was refused
                    "path": None,
                    "status": status.value,
                    "duration_ms": round((self.loop.time() - self.since) * 1000, 3),
                    "response_bytes": len(body),
                    "client": self.client[0] if self.client else None,
                    "error": message,
                }
            )
