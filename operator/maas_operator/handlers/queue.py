"""A level-triggered work queue, as Kubernetes controllers have.

Watch events and the periodic resync only enqueue an object's key; workers reconcile keys
one at a time per key (never two reconciles of one object at once), coalesce repeated
enqueues, and retry failures with exponential backoff. kopf delivers the events; it keeps
no per-object bookkeeping of its own, so it never writes annotations or finalizers.

Keys may be added before `start()`: they wait until the workers run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


class WorkQueue:
    def __init__(self, reconcile: Callable[[Hashable], Awaitable[None]], workers: int = 4) -> None:
        self._reconcile = reconcile
        self._workers = workers
        self._ready: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"reconciler-{n}") for n in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Reconcile `key` soon (or after `delay` seconds); repeated adds before it runs count once,
        and of two delayed adds the earlier wins."""
        if delay > 0:
            loop = asyncio.get_running_loop()
            timer = self._timers.get(key)
            if timer is not None and timer.when() <= loop.time() + delay:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_later(delay, self._fire, key)
            return
        if key in self._running:
            self._dirty.add(key)  # runs again as soon as the current reconcile ends
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def depth(self) -> int:
        return self._ready.qsize()

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._running.add(key)
            started = time.monotonic()
            try:
                await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_START_SECONDS * 2 ** (failures - 1))
                log.exception("reconcile of %s failed (%d in a row); retrying in %.1fs", key, failures, delay)
                self.add(key, delay)
            else:
                self._failures.pop(key, None)
                log.debug("reconciled %s in %.3fs", key, time.monotonic() - started)
            finally:
                self._running.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
