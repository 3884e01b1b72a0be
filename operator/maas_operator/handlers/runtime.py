"""State the handlers share for the operator's lifetime: API client, the watched view, caches.

Nothing here survives a restart, and nothing needs to: after a restart the watch streams
re-list every object and its children, and status carries the identity that matters.

The watched view is a set of kopf indices (`@kopf.index`), which kopf guarantees to be fully
populated from the initial listings before it invokes any event handler (kopf docs, "Indexing:
Guarantees"). The work queue's workers start on the first event handler call, so no reconcile
ever plans from a partial view: a restarted operator never takes a pod that was simply not
listed yet for a lost one.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from maas_operator import metrics
from maas_operator.config import OperatorConfig
from maas_operator.handlers.events import EventRecorder
from maas_operator.handlers.memory import Releaser
from maas_operator.handlers.queue import Priority, WorkQueue
from maas_operator.handlers.state import ObjectState
from maas_operator.kube.client import KubeClient
from maas_operator.kube.patch import merge_patch

# The kopf indices (handler ids) the handlers declare; values are per key (namespace, name).
TRAININGJOBS = "maas-trainingjobs"
"""TrainingJob bodies by (namespace, name)."""
MODELSERVICES = "maas-modelservices"
"""ModelService bodies by (namespace, name)."""
TRAININGJOB_PODS = "maas-trainingjob-pods"
"""PodViews of TrainingJob pods by (namespace, owner name)."""
MODELSERVICES_BY_TRAININGJOB = "maas-modelservices-by-trainingjob"
"""Names of the ModelServices whose model (or canary) a TrainingJob provides, by (namespace, TrainingJob name)."""


CHILD_EVENT_DELAY_SECONDS = 0.2
"""A child's watch event reconciles its owner this much later, so that the events of one owner's
children, which come in bursts (a reconcile creates several children at once, the kubelet starts
an attempt's pods together), reconcile it once instead of once each: in a burst of 200 + 200
objects, a third fewer reconciles and status patches (benchmarks/operator_scale.py)."""


def modelservice_children_index(plural: str) -> str:
    """The index of a ModelService child kind: bodies by (namespace, owner name)."""
    return f"maas-modelservice-{plural}"


ObjectKey = tuple[str, str, str]
"""(kind, namespace, name) of a custom resource."""
Reconciler = Callable[["Runtime", ObjectKey], Awaitable[None]]


class Watched:
    """Read access to the kopf indices: every value indexed under a key, or one of them."""

    def __init__(self, indices: Mapping[str, Any]) -> None:
        self._indices = indices

    def all(self, index: str, key: tuple[str, str]) -> list[Any]:
        found = self._indices[index]
        return list(found[key]) if key in found else []

    def one(self, index: str, key: tuple[str, str]) -> Any | None:
        values = self.all(index, key)
        return values[0] if values else None

    def keys(self, index: str) -> list[tuple[str, str]]:
        return list(self._indices[index])


@dataclass
class Runtime:
    """The operator's shared state: API clients, the watched view, the work queue, the Event
    recorder and what it remembers per object (state.py). Create it with `start()`."""

    config: OperatorConfig
    kube: KubeClient
    http: aiohttp.ClientSession
    reconcilers: dict[str, Reconciler]
    watched: Watched
    queue: WorkQueue[ObjectKey] = field(init=False)
    events: EventRecorder = field(init=False)
    objects: dict[str, ObjectState] = field(default_factory=lambda: collections.defaultdict(ObjectState))
    phases: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(kind, phase) of every object by uid."""
    phase_counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    leading: bool = True
    """Reconciles run: always without leader election; with it, while this replica leads (leadership.py)."""
    listed: bool = field(default=False, init=False)
    """Every index is populated (an event handler ran)."""

    def __post_init__(self) -> None:
        self.queue = self._new_queue()
        self.events = EventRecorder(self.kube)

    def _new_queue(self) -> WorkQueue[ObjectKey]:
        """`config.workers` reconciles at once, one lane per kind (fair between kinds)."""
        return WorkQueue(self._dispatch, self.config.workers, lane=lambda key: key[0])

    @classmethod
    async def start(
        cls,
        config: OperatorConfig,
        reconcilers: dict[str, Reconciler],
        indices: Mapping[str, Any],
        may_write: Callable[[], bool] | None = None,
    ) -> Runtime:
        """`indices`: kopf's indices by id (passed to startup handlers, populated once kopf has listed).
        `may_write`: with leader election, whether this replica leads now; reconciles then wait for
        `start_leading()`, and every write is refused (NotLeaderError) while it returns False."""
        timeout = aiohttp.ClientTimeout(total=config.progress_timeout_seconds)
        return cls(
            config=config,
            kube=await KubeClient.connect(may_write),
            http=aiohttp.ClientSession(timeout=timeout),
            reconcilers=reconcilers,
            watched=Watched(indices),
            leading=may_write is None,
        )

    async def stop(self) -> None:
        """Cancel the reconciles, post the queued Events (briefly), close the clients."""
        await self.queue.stop()
        await self.events.stop()
        await self.http.close()
        await self.kube.close()

    def synced(self) -> None:
        """Called by every event handler: kopf runs them only once every index is populated."""
        self.listed = True
        self.events.start()
        if self.leading:
            self.queue.start()

    # --- leadership (handlers/leadership.py) ---------------------------------------------
    def start_leading(self) -> None:
        """A new term: forget what earlier terms remembered (another replica may have written
        since: cached status and expected writes are stale), then reconcile every object, each
        as new to this process."""
        self.objects.clear()
        self._clear_phases()
        self.leading = True
        for key in self.keys():
            self.queue.add(key, priority=Priority.NEW)
        if self.listed:
            self.queue.start()

    async def stop_leading(self) -> None:
        """Cancel every reconcile and wait until none runs; the watches go on. Keys queued from now
        on wait in a fresh queue for the next term (which reconciles everything anyway)."""
        self.leading = False
        stopped, self.queue = self.queue, self._new_queue()
        await stopped.stop()
        self._clear_phases()

    # --------------------------------------------------------------------------------------

    async def _dispatch(self, key: ObjectKey) -> None:
        await self.reconcilers[key[0]](self, key)

    def body(self, key: ObjectKey) -> dict[str, Any] | None:
        """The custom resource as last watched (cache.py's kept fields), or None once deleted."""
        kind, namespace, name = key
        index = TRAININGJOBS if kind == "TrainingJob" else MODELSERVICES
        body: dict[str, Any] | None = self.watched.one(index, (namespace, name))
        return body

    def keys(self) -> list[ObjectKey]:
        """Every watched custom resource (safe from other threads: the key lists are copied in one step)."""
        return [
            (kind, namespace, name)
            for kind, index in (("TrainingJob", TRAININGJOBS), ("ModelService", MODELSERVICES))
            for namespace, name in self.watched.keys(index)
        ]

    async def resync_forever(self) -> None:
        """Re-evaluate every object not reconciled for a resync period (deadlines, stalls, progress,
        TTLs, missed events): within 1.5 periods of its last reconcile, after whatever a watch event
        queued, and never before a failed reconcile's retry is due."""
        period = self.config.resync_seconds
        memory = Releaser()
        while True:
            await asyncio.sleep(period / 2)
            keys = self.keys()
            memory.after_work(self.queue.idle, len(keys))  # before this tick's resync makes it busy
            self.queue.resync(keys, period)

    def object_event(self, key: ObjectKey, uid: str, deleted: bool) -> None:
        """A watch event of a custom resource (its body already in the index): reconcile it, first
        if this process has not yet, and not at all when the event only echoes a status write of
        ours, which tells the planner nothing new."""
        self.synced()
        if deleted:
            self.queue.forget(key)
            self.objects.pop(uid, None)
            self._count_phase(self.phases.pop(uid, None), None)
            return
        body = self.body(key)
        state = self.objects.get(uid)
        if body is None or state is None or state.status is None:
            self.queue.add(key, priority=Priority.NEW)
            return
        if state.generation == body["metadata"].get("generation"):
            status = body.get("status")
            if status == state.status:
                state.previous_status = None  # the last write's echo: no earlier one follows
                return
            if state.previous_status is not None and status == state.previous_status:
                return
        self.queue.add(key)

    def child_event(self, owner: ObjectKey) -> None:
        """A watch event of a child: reconcile its owner, if it still exists, after
        CHILD_EVENT_DELAY_SECONDS (once for the events of its other children until then)."""
        self.synced()
        if self.body(owner) is not None:
            self.queue.add(owner, CHILD_EVENT_DELAY_SECONDS)

    def dependents(self, namespace: str, training_job: str) -> None:
        """Queue every ModelService in `namespace` whose model (or canary) `training_job` provides."""
        self.synced()
        for name in self.watched.all(MODELSERVICES_BY_TRAININGJOB, (namespace, training_job)):
            self.queue.add(("ModelService", namespace, name))

    def snapshot(self) -> list[dict[str, Any]]:
        """Every custom resource as watched, with the status we last wrote (never staler); any thread.

        Copies are taken without awaiting, so a concurrent change on the event loop makes an
        object missing from this snapshot at worst, never a crash.
        """
        objects = dict(self.objects)
        found = []
        for key in self.keys():
            try:
                body = self.body(key)
            except (KeyError, RuntimeError):  # changed on the loop while we read
                continue
            if body is None:
                continue
            state = objects.get(body["metadata"].get("uid", ""))
            found.append({**body, "status": state.status} if state is not None and state.status is not None else body)
        return found

    def state(self, uid: str) -> ObjectState:
        """What this process remembers of the object `uid` (created empty on first use)."""
        return self.objects[uid]

    async def write_status(
        self, kind: str, namespace: str, name: str, uid: str, current: dict[str, Any], wanted: dict[str, Any]
    ) -> bool:
        """Patch only what changed; True when a write was needed."""
        state = self.state(uid)
        patch = merge_patch(state.status if state.status is not None else current, wanted)
        if patch:
            await self.kube.patch_status(kind, namespace, name, patch)
            state.previous_status = state.status
        state.status = wanted
        phase = (kind, wanted.get("phase") or "Pending")
        before = self.phases.get(uid)
        if before != phase:
            self.phases[uid] = phase
            self._count_phase(before, phase)
        return bool(patch)

    def _clear_phases(self) -> None:
        self.phases.clear()
        self.phase_counts.clear()
        metrics.OBJECTS_BY_PHASE.clear()

    def _count_phase(self, before: tuple[str, str] | None, after: tuple[str, str] | None) -> None:
        """Move one object between the counts of maas_objects{kind,phase} (a label set at 0 is removed)."""
        for moved, change in ((before, -1), (after, 1)):
            if moved is None:
                continue
            self.phase_counts[moved] += change
            if self.phase_counts[moved] > 0:
                metrics.OBJECTS_BY_PHASE.labels(kind=moved[0], phase=moved[1]).set(self.phase_counts[moved])
            else:
                del self.phase_counts[moved]
                metrics.OBJECTS_BY_PHASE.remove(*moved)
