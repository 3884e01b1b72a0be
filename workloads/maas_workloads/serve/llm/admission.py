"""Sequence slots: at most `capacity` sequences in the engine, a bounded FIFO queue for the rest."""

from __future__ import annotations

import asyncio
from collections import deque

from maas_workloads.serve.llm.errors import OpenAIError


class Slots:
    """A fair counting semaphore over sequences, with a bounded waiting queue.

    A request needing `n` sequences waits until `n` slots are free and every earlier request
    got its own (FIFO, so a large `n` is never starved by small ones). When `max_waiting`
    requests already wait, `acquire` raises OpenAIError 429 at once, as vLLM's production
    stack router does for a full queue; `Retry-After: 1` tells clients when to come back.
    """

    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, n: int) -> None:
        if n > self.capacity:
            raise OpenAIError(
                400, f"n={n} sequences exceed this server's {self.capacity} concurrent sequences", param="n"
            )
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return
        if len(self._waiters) >= self.max_waiting:
            raise OpenAIError(
                429,
                f"the waiting queue is full ({self.max_waiting} requests wait for {self.capacity} sequence slots)",
                code="queue_full",
                headers={"retry-after": "1"},
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as the waiter was cancelled: give the slots back
            else:
                self._waiters.remove(entry)
                self._wake()  # the ones behind it may fit now
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            count, future = self._waiters.popleft()
            self.used += count
            future.set_result(None)
