"""What the operator remembers of each custom resource between reconciles: the status it last
wrote, its writes the watch has not shown yet, and the writes the API server refused.

Lost on a restart, and nothing needs it then: the watch shows every earlier write by the time
the view is complete, and status carries the identity that matters.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from maas_operator.builders.modelservice import spec_hash
from maas_operator.kube.client import KubeError
from maas_operator.status.plan import ChildAction, ChildKey, Create, Refusal, action_fingerprint
from maas_operator.status.pods import PodView

EXPECTATION_SECONDS = 60.0
"""How long a write of ours is assumed to be in flight before the watch must have shown it."""


@dataclass
class ObjectState:
    """Per custom resource: our last status, writes not yet seen by the watch, refused writes."""

    status: dict[str, Any] | None = None
    """The status we last wrote: we are its only writer, so it is never staler than the watch."""
    previous_status: dict[str, Any] | None = None
    """The one we wrote before, until the watch shows `status` (its echo may still be on the way)."""
    generation: int | None = None
    """metadata.generation of the body the last reconcile planned from."""
    created: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    removed: dict[str, float] = field(default_factory=dict)
    """Pods we deleted with grace period 0, which the API server removes at once: hidden (while the
    watch still shows them terminating) so that no reconcile force-deletes them a second time."""
    written: dict[ChildKey, tuple[dict[str, Any] | None, float]] = field(default_factory=dict)
    """Children we applied (their body) or deleted (None), until the watch shows the write."""
    refusals: dict[ChildKey, Refusal] = field(default_factory=dict)
    confirmed: dict[ChildKey, tuple[str, float]] = field(default_factory=dict)
    """Unwatched children (a TrainingJob's Service and NetworkPolicy) whose create succeeded or found
    them existing: (the create's fingerprint, when). A plan repeats their create until the whole
    attempt exists; while another child is refused, this keeps those repeats from reaching the
    API server (as 409s) on every reconcile."""
    last_poll: float = 0.0
    """When the head's progress was last fetched (monotonic seconds)."""

    def expect_created(self, pod: PodView) -> None:
        """A pod we created: counted as existing until the watch shows it (at most EXPECTATION_SECONDS)."""
        self.created[pod.name] = (pod, time.monotonic())

    def expect_deleted(self, name: str, removed: bool = False) -> None:
        """A pod we deleted: counted as deleting (`removed`, grace period 0: as gone) until the watch
        shows it (at most EXPECTATION_SECONDS)."""
        self.deleted[name] = time.monotonic()
        if removed:
            self.removed[name] = self.deleted[name]
        self.created.pop(name, None)

    def observe(self, watched: Iterable[PodView]) -> list[PodView]:
        """The watched pods, corrected for our own creates and deletes the watch has not shown yet.

        A removed pod is hidden only while it is terminating: a pod of the next attempt may
        already have its name."""
        now = time.monotonic()
        pods = list(watched)
        self.removed = {
            name: since
            for name, since in self.removed.items()
            if any(pod.name == name and pod.deleting for pod in pods) and now - since < EXPECTATION_SECONDS
        }
        pods = [pod for pod in pods if not (pod.deleting and pod.name in self.removed)]
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

    def remember(self, key: ChildKey, body: dict[str, Any] | None) -> None:
        """A child we applied (`body`, as cache.py keeps it) or deleted (None), until the watch shows it."""
        self.written[key] = (body, time.monotonic())

    def observe_children(self, watched: Mapping[ChildKey, dict[str, Any]]) -> dict[ChildKey, dict[str, Any]]:
        """The watched children, corrected for our applies and deletes the watch has not shown yet."""
        now = time.monotonic()
        children = dict(watched)
        for key, (body, since) in list(self.written.items()):
            seen = watched.get(key)
            if body is None:
                caught_up = seen is None or bool((seen.get("metadata") or {}).get("deletionTimestamp"))
            else:
                caught_up = seen is not None and spec_hash(seen) == spec_hash(body)
            if caught_up or now - since >= EXPECTATION_SECONDS:
                del self.written[key]
            elif body is None:
                children.pop(key, None)
            else:
                children[key] = body
        return children

    # --- refused writes ------------------------------------------------------------------
    def backing_off(self, action: ChildAction, now: datetime.datetime) -> bool:
        """The same write was refused and its retry is not due yet."""
        refusal = self.refusals.get(action.key)
        return refusal is not None and refusal.fingerprint == action_fingerprint(action) and now < refusal.retry_at

    def refuse(self, action: ChildAction, error: KubeError, now: datetime.datetime) -> bool:
        """Record a failed write; True when it is news (not the same child failing in the same words).

        Retries of the same request count up whatever the API server answers (its message may
        change, e.g. a quota's usage), so that the backoff keeps growing.
        """
        kind, name = action.key
        before = self.refusals.get(action.key)
        fingerprint = action_fingerprint(action)
        retried = before is not None and before.fingerprint == fingerprint
        self.refusals[action.key] = Refusal(
            kind=kind,
            name=name,
            verb=action.verb,
            code=error.status,
            reason=error.reason,
            message=error.message,
            fingerprint=fingerprint,
            first=before.first if retried and before else now,
            last=now,
            attempts=before.attempts + 1 if retried and before else 1,
        )
        return before is None or before.message != error.message

    def keep_refusals(self, wanted: set[ChildKey]) -> None:
        """Forget refusals and confirmed creates of writes the last plan no longer wanted (the spec
        or the state moved on)."""
        self.refusals = {key: refusal for key, refusal in self.refusals.items() if key in wanted}
        self.confirmed = {key: entry for key, entry in self.confirmed.items() if key in wanted}

    # --- creates of children the operator does not watch ----------------------------------
    def confirm(self, action: Create) -> None:
        """The create of an unwatched child succeeded or found it existing (see `confirmed`)."""
        self.confirmed[action.key] = (action_fingerprint(action), time.monotonic())

    def exists(self, action: Create) -> bool:
        """The same create succeeded less than EXPECTATION_SECONDS ago: it would answer 409 (or, if
        someone deleted the child since, it is created again at most that much later)."""
        entry = self.confirmed.get(action.key)
        return (
            entry is not None
            and entry[0] == action_fingerprint(action)
            and time.monotonic() - entry[1] < EXPECTATION_SECONDS
        )
