"""A connection's transport with its writes gathered per event-loop turn."""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """The connection's transport, with the writes of one event-loop turn sent as one.

    uvicorn writes a response's head and its body separately: two system calls and two
    packets for every small response, the most common kind here. Gathered until the end of
    the turn, they are one; a streamed response still goes out turn by turn.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
