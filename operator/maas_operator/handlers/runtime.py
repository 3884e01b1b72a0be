"""State the handlers share for the operator's lifetime: API client, caches, locks.

Nothing here survives a restart, and nothing needs to: after a restart the watch streams
re-list every object and its children, and status carries the identity that matters.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from maas_operator import metrics
from maas_operator.config import OperatorConfig
from maas_operator.handlers.queue import WorkQueue
from maas_operator.kube.client import KubeClient
from maas_operator.kube.patch import merge_patch
from maas_operator.status.pods import PodView

EXPECTATION_SECONDS = 60.0
"""How long a write of ours is assumed to be in flight before the watch must have shown it."""


@dataclass
class ObjectState:
    """Per custom resource: one reconcile at a time, our last status, writes not yet seen."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    status: dict[str, Any] | None = None
    """The status we last wrote: we are its only writer, so it is never staler than the watch."""
    created: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    last_poll: float = 0.0
    """When the head's progress was last fetched (monotonic seconds)."""

    def expect_created(self, pod: PodView) -> None:
        self.created[pod.name] = (pod, time.monotonic())

    def expect_deleted(self, name: str) -> None:
        self.deleted[name] = time.monotonic()
        self.created.pop(name, None)

    def observe(self, watched: Iterable[PodView]) -> list[PodView]:
        """The watched pods, corrected for our own creates and deletes the watch has not shown yet."""
        now = time.monotonic()
        pods = list(watched)
        names = {pod.name for pod in pods}
        self.created = {
            name: entry
            for name, entry in self.created.items()
            if name not in names and now - entry[1] < EXPECTATION_SECONDS
        }
        self.deleted = {
            name: since for name, since in self.deleted.items() if name in names and now - since < EXPECTATION_SECONDS
        }
        corrected = [dataclasses.replace(pod, deleting=True) if pod.name in self.deleted else pod for pod in pods]
        return corrected + [pod for pod, _ in self.created.values()]


ObjectKey = tuple[str, str, str]
"""(kind, namespace, name) of a custom resource."""
ChildKey = tuple[str, str]
"""(kind, name) of a child object, in its owner's namespace."""
Reconciler = Callable[["Runtime", ObjectKey], Awaitable[None]]


@dataclass
class Runtime:
    config: OperatorConfig
    kube: KubeClient
    http: aiohttp.ClientSession
    reconcilers: dict[str, Reconciler]
    queue: WorkQueue = field(init=False)
    bodies: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    """The latest watched body of every custom resource."""
    pods: dict[ObjectKey, dict[str, PodView]] = field(default_factory=lambda: collections.defaultdict(dict))
    """The watched pods of every TrainingJob, by owner."""
    children: dict[ObjectKey, dict[ChildKey, dict[str, Any]]] = field(
        default_factory=lambda: collections.defaultdict(dict)
    )
    """The watched children of every ModelService (Deployments, Service, HPA, PDB, pods), by owner."""
    objects: dict[str, ObjectState] = field(default_factory=lambda: collections.defaultdict(ObjectState))
    phases: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._dispatch)

    @classmethod
    async def start(cls, config: OperatorConfig, reconcilers: dict[str, Reconciler]) -> Runtime:
        timeout = aiohttp.ClientTimeout(total=config.progress_timeout_seconds)
        runtime = cls(
            config=config,
            kube=await KubeClient.connect(),
            http=aiohttp.ClientSession(timeout=timeout),
            reconcilers=reconcilers,
        )
        runtime.queue.start()
        return runtime

    async def stop(self) -> None:
        await self.queue.stop()
        await self.http.close()
        await self.kube.close()

    async def _dispatch(self, key: Any) -> None:
        await self.reconcilers[key[0]](self, key)

    async def resync_forever(self) -> None:
        """Re-evaluate every object periodically: deadlines, stalls, TTLs and missed events."""
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for key in list(self.bodies):
                self.queue.add(key)

    def object_event(self, key: ObjectKey, body: dict[str, Any], deleted: bool) -> None:
        if deleted:
            self.bodies.pop(key, None)
            self.forget(body["metadata"].get("uid", ""))
            return
        self.bodies[key] = body
        self.queue.add(key)

    def pod_event(self, owner: ObjectKey, pod: PodView, deleted: bool) -> None:
        if deleted:
            self.pods[owner].pop(pod.name, None)
        else:
            self.pods[owner][pod.name] = pod
        if owner in self.bodies:
            self.queue.add(owner)

    def child_event(self, owner: ObjectKey, kind: str, body: dict[str, Any], deleted: bool) -> None:
        if deleted:
            self.forget_child(owner, kind, body["metadata"]["name"])
        else:
            self.remember_child(owner, kind, body)
        if owner in self.bodies:
            self.queue.add(owner)

    def remember_child(self, owner: ObjectKey, kind: str, body: dict[str, Any]) -> None:
        """Also called with what we just wrote, so the next reconcile does not wait for the watch."""
        self.children[owner][(kind, body["metadata"]["name"])] = body

    def forget_child(self, owner: ObjectKey, kind: str, name: str) -> None:
        self.children[owner].pop((kind, name), None)

    def dependents(self, kind: str, namespace: str, refers_to: Callable[[dict[str, Any]], bool]) -> None:
        """Queue every object of `kind` in `namespace` whose body satisfies `refers_to`."""
        for key, body in list(self.bodies.items()):
            if key[0] == kind and key[1] == namespace and refers_to(body):
                self.queue.add(key)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every custom resource as watched, with the status we last wrote (never staler); any thread."""
        objects = dict(self.objects)
        return [
            {**body, "status": state.status}
            if (state := objects.get(body["metadata"].get("uid", ""))) is not None and state.status is not None
            else body
            for body in dict(self.bodies).values()
        ]

    def state(self, uid: str) -> ObjectState:
        return self.objects[uid]

    def forget(self, uid: str) -> None:
        self.objects.pop(uid, None)
        if self.phases.pop(uid, None) is not None:
            self._publish_phases()

    async def write_status(
        self, kind: str, namespace: str, name: str, uid: str, current: dict[str, Any], wanted: dict[str, Any]
    ) -> bool:
        """Patch only what changed; True when a write was needed."""
        state = self.state(uid)
        patch = merge_patch(state.status if state.status is not None else current, wanted)
        if patch:
            await self.kube.patch_status(kind, namespace, name, patch)
        state.status = wanted
        phase = wanted.get("phase") or "Pending"
        if self.phases.get(uid) != (kind, phase):
            self.phases[uid] = (kind, phase)
            self._publish_phases()
        return bool(patch)

    def _publish_phases(self) -> None:
        counts = collections.Counter(self.phases.values())
        metrics.OBJECTS_BY_PHASE.clear()
        for (kind, phase), count in counts.items():
            metrics.OBJECTS_BY_PHASE.labels(kind=kind, phase=phase).set(count)
