"""A level-triggered work queue, as Kubernetes controllers have, fair between kinds and priorities.

Watch events and the periodic resync only enqueue an object's key; a fixed number of workers
(`workers`, the concurrency the operator is configured with) reconcile the keys:

- one at a time per key: never two reconciles of one object at once. A key added while it is
  being reconciled runs once more right after, and repeated adds before it runs count once;
- fair between kinds: each kind (the lane a key belongs to) has its own queue, and the workers
  take from the lanes in turn, so a burst of one kind never starves the other;
- by priority: new objects (`NEW`) first, then keys added by watch events (`EVENT`: something
  changed, or a retry or deadline fell due), then keys added by the periodic resync (`RESYNC`),
  so new objects never wait behind follow-ups or re-evaluations of old ones (controller-runtime's
  priority queue gives its resync and initial-list items a low priority for the same reason).
  A key added again at a higher priority moves up. The highest priority any lane has is served
  first, the lanes taking turns at it;
- with backoff per key: a reconcile that raises is retried after 0.5 s, 1 s, 2 s, ... at most
  30 s. Until then the resync does not queue the key again (the retry does); a watch event does,
  because it is news the failed reconcile did not have;
- the resync (`resync`) queues only keys not reconciled for a whole period: in a burst, the
  objects the events keep reconciling are not re-evaluated besides.

Keys may be added before `start()`: they wait until the workers run.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
KeyT = TypeVar("KeyT", bound=Hashable)


class Priority(enum.IntEnum):
    """Why a key was queued; higher goes first within a lane."""

    RESYNC = 0
    """The periodic re-evaluation of every object."""
    EVENT = 1
    """A watch event, a due retry or a time-based decision the planner asked for."""
    NEW = 2
    """An object this process has not reconciled yet: in a burst, every new object gets its
    children before the follow-ups of the objects before it (their children's events)."""


@dataclass
class _Lane(Generic[KeyT]):
    """The queued keys of one kind, one FIFO per priority. A key moved up to EVENT stays in the
    RESYNC FIFO too, as a stale entry that is skipped when it comes up."""

    fifos: dict[Priority, collections.deque[KeyT]] = field(
        default_factory=lambda: {priority: collections.deque() for priority in Priority}
    )


class WorkQueue(Generic[KeyT]):
    """`reconcile(key)` for every added key, `workers` at a time; `lane(key)` names the key's kind.

    Raises nothing to its callers: a reconcile that raises is logged and retried with backoff.
    """

    def __init__(
        self,
        reconcile: Callable[[KeyT], Awaitable[None]],
        workers: int,
        lane: Callable[[KeyT], Hashable] = lambda key: None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._reconcile = reconcile
        self._workers = workers
        self._lane_of = lane
        self._lanes: dict[Hashable, _Lane[KeyT]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()
        """Lanes in the order they get their next turn."""
        self._queued: dict[KeyT, Priority] = {}
        self._ready = asyncio.Semaphore(0)
        """One permit per queued key."""
        self._running: set[KeyT] = set()
        self._dirty: dict[KeyT, Priority] = {}
        """Keys added while being reconciled: queued again, at this priority, once it ends."""
        self._failures: dict[KeyT, int] = {}
        self._backoff_until: dict[KeyT, float] = {}
        """Monotonic time before which the resync leaves a failed key to its retry."""
        self._done_at: dict[KeyT, float] = {}
        """Monotonic time each key's last reconcile ended."""
        self._timers: dict[KeyT, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing being reconciled."""
        return not self._queued and not self._running

    def start(self) -> None:
        """Start the workers (idempotent)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"reconciler-{n}") for n in range(self._workers)]

    async def stop(self) -> None:
        """Cancel the retry timers and every worker, a running reconcile included, and wait for them."""
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: KeyT, delay: float = 0.0, priority: Priority = Priority.EVENT) -> None:
        """Reconcile `key` soon (or after `delay` seconds, then at EVENT priority).

        Repeated adds before it runs count once; of two delayed adds the earlier wins. A RESYNC
        add of a key backing off after a failed reconcile is dropped: its retry is scheduled.
        """
        if delay > 0:
            self._add_later(key, delay)
            return
        if priority is Priority.RESYNC and time.monotonic() < self._backoff_until.get(key, 0.0):
            return
        if key in self._running:
            self._dirty[key] = max(priority, self._dirty.get(key, Priority.RESYNC))
            return
        queued = self._queued.get(key)
        if queued is not None and queued >= priority:
            return
        lane = self._lanes.get(self._lane_of(key))
        if lane is None:
            lane = self._lanes[self._lane_of(key)] = _Lane[KeyT]()
            self._turns.append(self._lane_of(key))
        fifo = lane.fifos[priority]
        fifo.append(key)
        self._queued[key] = priority
        if len(fifo) > 2 * len(self._queued) + 64:
            self._compact(fifo, priority)
        if queued is None:
            self._ready.release()

    def resync(self, keys: Iterable[KeyT], period: float) -> None:
        """Queue at RESYNC priority every key not reconciled in the last `period` seconds (an object
        that events keep reconciling needs no re-evaluation besides) and not backing off."""
        now = time.monotonic()
        for key in keys:
            if now - self._done_at.get(key, -period) >= period:
                self.add(key, priority=Priority.RESYNC)

    def _compact(self, fifo: collections.deque[KeyT], priority: Priority) -> None:
        """Drop stale entries (keys that moved up, or ran, since), which a long run of EVENT adds
        starving the RESYNC FIFO would otherwise pile up."""
        live: dict[KeyT, None] = {}  # ordered, each key once
        for key in fifo:
            if self._queued.get(key) == priority:
                live.setdefault(key)
        fifo.clear()
        fifo.extend(live)

    def _add_later(self, key: KeyT, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        if timer is not None and timer.when() <= loop.time() + delay:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: KeyT) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _take(self) -> KeyT:
        """The next key: the highest priority any lane has, from the lanes in turn."""
        for priority in sorted(Priority, reverse=True):
            for name in list(self._turns):
                fifo = self._lanes[name].fifos[priority]
                while fifo:
                    key = fifo.popleft()
                    if self._queued.get(key) == priority:  # else a stale entry of a key moved up
                        del self._queued[key]
                        self._turns.remove(name)
                        self._turns.append(name)  # its turn is over
                        return key
        raise AssertionError("a permit was released without a queued key")

    async def _work(self) -> None:
        while True:
            await self._ready.acquire()
            key = self._take()
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
                self._backoff_until[key] = time.monotonic() + delay
                log.exception("reconcile of %s failed (%d in a row); retrying in %.1fs", key, failures, delay)
                self._add_later(key, delay)
            else:
                self._failures.pop(key, None)
                self._backoff_until.pop(key, None)
                log.debug("reconciled %s in %.3fs", key, time.monotonic() - started)
            finally:
                self._running.discard(key)
                self._done_at[key] = time.monotonic()
                dirty = self._dirty.pop(key, None)
                if dirty is not None:
                    self.add(key, priority=dirty)

    def forget(self, key: KeyT) -> None:
        """Drop a deleted object's backoff and timer (a queued entry just finds nothing to do)."""
        self._failures.pop(key, None)
        self._backoff_until.pop(key, None)
        self._done_at.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
