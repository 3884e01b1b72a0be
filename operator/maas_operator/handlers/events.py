"""Events are posted in the background, never in the path of a reconcile's writes.

Like client-go's event broadcaster: `post` only queues and returns; a few senders create the
Events. Each object's Events go through one sender, in the order they were posted. A full
backlog drops what does not fit, with a warning in the log (client-go drops too): Events help
humans, status is the record, and losing one must never slow a burst down.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import uuid
import zlib
from collections.abc import Iterable

from maas_operator import metrics
from maas_operator.builders.events import event
from maas_operator.builders.meta import Owner
from maas_operator.kube.client import KubeClient, KubeError, NotLeaderError
from maas_operator.status.plan import Event, rfc3339

INSTANCE = os.environ.get("HOSTNAME", "maas-operator")
"""The reporting instance: the operator pod's name."""
SENDERS = 8
"""Events created at once: ~800 a second against an API server answering in 10 ms."""
BACKLOG = 10_000
"""Events waiting at most (client-go's broadcaster keeps 1,000 and drops the rest); ~300 bytes each."""
STOP_SECONDS = 5.0
"""At shut-down, how long the queued Events may take to post."""
log = logging.getLogger(__name__)

Queued = tuple[Owner, Event, str]
"""(the object it is about, the Event, when it happened as RFC 3339)."""


class EventRecorder:
    """`senders` tasks post the Events `post` queues, at most `backlog` waiting (see the module docstring)."""

    def __init__(self, kube: KubeClient, senders: int = SENDERS, backlog: int = BACKLOG) -> None:
        self._kube = kube
        self._queues: list[asyncio.Queue[Queued]] = [asyncio.Queue(max(1, backlog // senders)) for _ in range(senders)]
        self._tasks: list[asyncio.Task[None]] = []
        self._sending = 0
        """Events taken from the queues whose create has not been answered yet."""

    def start(self) -> None:
        """Start the senders (idempotent)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._send(queue), name=f"events-{n}") for n, queue in enumerate(self._queues)
            ]

    async def stop(self) -> None:
        """Post what is queued (for at most STOP_SECONDS), then stop."""
        try:
            await asyncio.wait_for(asyncio.gather(*(queue.join() for queue in self._queues)), STOP_SECONDS)
        except TimeoutError:
            unposted = self._sending + sum(queue.qsize() for queue in self._queues)
            log.warning("%d Event(s) not posted at shut-down", unposted)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def post(self, owner: Owner, events: Iterable[Event], now: datetime.datetime) -> None:
        """Queue Events about `owner`, stamped `now`; returns at once."""
        queue = self._queues[zlib.crc32(owner.uid.encode()) % len(self._queues)]
        stamp = rfc3339(now)
        for notice in events:
            try:
                queue.put_nowait((owner, notice, stamp))
            except asyncio.QueueFull:
                metrics.EVENTS_DROPPED.inc()
                log.warning("Event backlog full: dropped %s %s for %s", notice.type, notice.reason, owner.name)

    async def _send(self, queue: asyncio.Queue[Queued]) -> None:
        while True:
            owner, notice, stamp = await queue.get()
            self._sending += 1
            try:
                name = uuid.uuid4().hex[:16]
                await self._kube.create(event(owner, notice.type, notice.reason, notice.message, stamp, name, INSTANCE))
            except NotLeaderError:  # leadership lost since it was queued: the new leader reports anew
                log.debug("not posting Event %s for %s: not the leader", notice.reason, owner.name)
            except KubeError as error:  # Events help humans; losing one must not stop anything
                metrics.API_ERRORS.labels(status=str(error.status)).inc()
                log.warning("could not post Event %s for %s: %s", notice.reason, owner.name, error)
            except Exception:
                log.exception("could not post Event %s for %s", notice.reason, owner.name)
            finally:
                self._sending -= 1
                queue.task_done()
