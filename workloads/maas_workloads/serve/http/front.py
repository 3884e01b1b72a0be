"""Request-level guard every application sits behind (an ASGI middleware).

For each HTTP request, before the application runs:
1. headers it relies on (`Authorization`, `Content-Length`, `Content-Encoding`) must not be
   repeated (400: which one counts would be a guess);
2. authentication: every path but the application's public ones needs the bearer token
   (401), checked before a byte of the body is read, so an unauthenticated client can make
   the server buffer nothing;
3. the body is read whole, within `max_request_bytes` (413, also after gzip/deflate decoding)
   and `body_timeout_seconds` (408), within the memory budget all requests share
   (`max_buffered_bytes`, 503: reserved by Content-Length before a byte is read, else as the
   chunks arrive, and held until the response), and decoded; the application then receives
   exactly one `http.request` message with the complete body. A slow or stalled upload therefore never
   reaches the application, so nothing it counts (in-flight requests, queues) includes it.

And for every response: `Connection: close` while the server drains (so pooled clients
reconnect, to another pod), and when the body was not read whole (the rest of it would
otherwise have to be read and thrown away); one access-log line per request (method, path,
status, duration, bytes, client — never a body or a header value).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Coroutine, MutableMapping
from typing import Any, Final

from maas_workloads.serve.http.auth import BearerAuth
from maas_workloads.serve.http.connections import Connections
from maas_workloads.serve.http.logs import AccessLog

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# zlib window bits: gzip framing, and zlib framing (what "deflate" means in HTTP).
_ENCODINGS: Final = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_GUARDED_HEADERS: Final = frozenset({b"authorization", b"content-length", b"content-encoding", b"transfer-encoding"})
_CLOSE: Final = (b"connection", b"close")


class HeaderError(ValueError):
    """A request header the server relies on appears more than once."""


def headers_of(scope: Scope, names: Collection[bytes]) -> dict[bytes, bytes]:
    """The values of the named (lower-case) headers; raises HeaderError when one is repeated."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names:
            if name in found:
                raise HeaderError(f"the {name.decode()} header appears more than once; send it once")
            found[name] = value
    return found


async def read_body(receive: Receive) -> bytes:
    """The whole request body from `receive` (behind Front, one message holds all of it)."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def model_lifespan(
    receive: Receive, send: Send, load: Callable[[], Coroutine[Any, Any, None]], close: Callable[[], Awaitable[None]]
) -> None:
    """The ASGI lifespan of a model server: `load` runs in the background from startup, so the
    port answers liveness (and a 503 readiness) while the model loads; shutdown cancels a load
    still running, then awaits `close` (after the server drained its requests)."""
    loading: asyncio.Task[None] | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            loading = asyncio.get_running_loop().create_task(load(), name="load-model")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if loading is not None:
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
            await close()
            await send({"type": "lifespan.shutdown.complete"})
            return


class _RefusedError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class _Exchange:
    """One request's side of the connection: adds `Connection: close` when due, notes status and size,
    and holds the request's share of the body budget."""

    __slots__ = ("_connections", "_send", "body_read", "reserved", "response_bytes", "status")

    def __init__(self, send: Send, connections: Connections) -> None:
        self._send = send
        self._connections = connections
        self.status: int | None = None
        self.response_bytes = 0
        self.body_read = False
        self.reserved = 0
        """Bytes of the connections' body budget this request holds (released when it ends)."""

    def reserve(self, size: int) -> None:
        """Hold `size` more bytes of the body budget; raises _RefusedError (503) when they do not fit."""
        if size <= 0:
            return
        connections = self._connections
        if not connections.reserve(size):
            connections.rejected.labels("buffered_bytes").inc()
            raise _RefusedError(
                503,
                f"the server holds {connections.buffered_bytes} bytes of request bodies, its limit is "
                f"{connections.settings.max_buffered_bytes}; retry",
                [(b"retry-after", b"1")],
            )
        self.reserved += size

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._connections.draining or not self.body_read:
                message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
        elif message["type"] == "http.response.body":
            self.response_bytes += len(message.get("body", b""))
        await self._send(message)

    async def refuse(self, refusal: _RefusedError) -> None:
        body = self._connections.error_body(refusal.status, refusal.message)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *refusal.headers]
        await self.send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


class _Replay:
    """`receive` for the application: the whole body once, then the connection's own events."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        if self._body is None:
            return await self._receive()  # waits for the disconnect, as ASGI applications expect
        body, self._body = self._body, None
        return {"type": "http.request", "body": body, "more_body": False}


class Front:
    """The request-level guard around `app`; see the module docstring for what it enforces.

    `public_paths` are served without the bearer token (health probes). Error responses use
    the shape `connections.error_body` gives, the application's own.
    """

    def __init__(
        self,
        app: ASGIApp,
        connections: Connections,
        *,
        public_paths: Collection[str],
        access_log: AccessLog | None,
    ) -> None:
        self._app = app
        self._connections = connections
        settings = connections.settings
        self._auth = BearerAuth(settings.auth_token) if settings.auth_token else None
        self._public_paths = frozenset(public_paths)
        self._max_bytes = settings.max_request_bytes
        self._body_timeout = settings.body_timeout_seconds
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = _Exchange(send, self._connections)
        try:
            try:
                headers = headers_of(scope, _GUARDED_HEADERS)
            except HeaderError as error:
                raise _RefusedError(400, str(error)) from None
            exchange.body_read = _no_body(headers)
            if (
                self._auth is not None
                and scope["path"] not in self._public_paths
                and not self._auth.allows(headers.get(b"authorization"))
            ):
                raise _RefusedError(
                    401,
                    "missing or wrong bearer token in the Authorization header",
                    [(b"www-authenticate", b'Bearer realm="maas"')],
                )
            body = await self._read_body(receive, headers, started, exchange)
            if body is None:
                return  # the client went away; there is no one to answer
            exchange.body_read = True
            if b"content-encoding" in headers:
                raw = len(body)
                body = self._decode(body, headers[b"content-encoding"].decode("latin-1"))
                exchange.reserve(len(body) - raw)  # both are held until the decoded one is passed on
                scope = {**scope, "headers": [item for item in scope["headers"] if item[0] != b"content-encoding"]}
            await self._app(scope, _Replay(body, receive), exchange.send)
        except _RefusedError as refusal:
            await exchange.refuse(refusal)
        finally:
            self._connections.release(exchange.reserved)
            if self._access_log is not None and exchange.status is not None:
                client = scope.get("client")
                self._access_log.record(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": exchange.status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "response_bytes": exchange.response_bytes,
                        "client": client[0] if client else None,
                    }
                )

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan (and anything else) goes straight through; the access log flushes meanwhile."""
        if scope["type"] != "lifespan" or self._access_log is None:
            await self._app(scope, receive, send)
            return
        flusher = asyncio.get_running_loop().create_task(self._access_log.run(), name="access-log")
        try:
            await self._app(scope, receive, send)
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    async def _read_body(
        self, receive: Receive, headers: dict[bytes, bytes], started: float, exchange: _Exchange
    ) -> bytes | None:
        """The whole body, its memory reserved first: by its Content-Length before a byte is read, else
        (chunked) as it arrives; raises _RefusedError (413, 408, or 503 past the budget)."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self._max_bytes:
                raise _RefusedError(
                    413, f"the body has {int(declared)} bytes; this server takes at most {self._max_bytes}"
                )
            exchange.reserve(int(declared))
        message = await receive()  # the common case: the whole body came with the headers
        if message["type"] == "http.disconnect":
            return None
        body: bytes = message.get("body", b"")
        exchange.reserve(len(body) - exchange.reserved)  # nothing more when Content-Length reserved it
        if not message.get("more_body", False):
            return body
        chunks, size = [body], len(body)
        remaining = self._body_timeout - (time.perf_counter() - started)
        try:
            async with asyncio.timeout(remaining):
                while message.get("more_body", False):
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise _RefusedError(413, f"the body has more than {self._max_bytes} bytes, this server's limit")
                    exchange.reserve(size - exchange.reserved)
                    chunks.append(chunk)
        except TimeoutError:
            self._connections.rejected.labels("body_timeout").inc()
            raise _RefusedError(408, f"the request's body took longer than {self._body_timeout:g} s") from None
        return b"".join(chunks)

    def _decode(self, body: bytes, encoding: str) -> bytes:
        """The body without its Content-Encoding (Triton's clients can gzip or deflate requests)."""
        name = encoding.strip().lower()
        if name in ("", "identity"):
            return body
        bits = _ENCODINGS.get(name)
        if bits is None:
            raise _RefusedError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
        decompressor = zlib.decompressobj(bits)
        try:
            # Bounded, so that a small compressed body cannot expand past the limit.
            data = decompressor.decompress(body, self._max_bytes + 1)
        except zlib.error as error:
            raise _RefusedError(400, f"the body is not valid {encoding} data: {error}") from None
        if len(data) > self._max_bytes or decompressor.unconsumed_tail:
            raise _RefusedError(413, f"the body decompresses to more than {self._max_bytes} bytes, this server's limit")
        return data


def _no_body(headers: dict[bytes, bytes]) -> bool:
    """Whether the request declares no body at all (so answering early leaves nothing unread)."""
    return b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"
