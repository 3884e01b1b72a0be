"""Carry out a plan: the status first (identity before children), then the writes, each child's
concurrently with the others', then the after-status. Events go to the EventRecorder, which
posts them in the background: they never delay a write.

A child's writes run in the plan's order (e.g. a Deployment's apply before the apply that hands
its replica count over); different children are independent. A write that fails because of
the child does not stop the others: a 4xx refusal (other than 409 on create and 404 on delete,
which count as success, and the transient 401, 408, 409 and 429), or a 5xx failure (the API
server could not store it, e.g. `failed to allocate a serviceIP: range is full`). It is
recorded as a Refusal on the object's state, announced by one Warning Event per distinct
answer, retried with a per-child backoff that no resync shortens, and reported by the next plan
(the planners read refusals as observations: never Ready while a write fails).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from maas_operator import metrics
from maas_operator.builders.meta import Owner
from maas_operator.handlers import cache
from maas_operator.handlers.runtime import ObjectKey, Runtime
from maas_operator.handlers.state import ObjectState
from maas_operator.kube.client import KubeError
from maas_operator.status.plan import Apply, ChildAction, ChildKey, Create, DeleteOwner, Event, Plan
from maas_operator.status.pods import pod_view

TRANSIENT_CLIENT_ERRORS = frozenset({401, 408, 409, 429})
"""4xx answers that say "not now" (auth refresh, timeout, conflict, throttling): retried, not reported."""
WRITES_IN_FLIGHT = 16
"""Writes one reconcile makes at once (a TrainingJob with many workers creates its pods in waves)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    new_refusals: bool
    """A write was refused in a new way: reconcile again now, so that status says so."""
    retry_at: datetime.datetime | None
    """When the earliest refused write may be retried."""


@dataclass(frozen=True)
class _Written:
    """How one child's writes went."""

    succeeded: bool
    news: Event | None = None
    """The Warning Event announcing a new refusal."""


def schedule_next(runtime: Runtime, key: ObjectKey, plan: Plan[Any], outcome: Outcome, now: datetime.datetime) -> None:
    """Reconcile again: at once after a new refusal (so that status says so), when a refused
    write may be retried, and when the plan's next time-based decision is due."""
    if outcome.new_refusals:
        runtime.queue.add(key)
    elif outcome.retry_at is not None:
        runtime.queue.add(key, max(0.0, (outcome.retry_at - now).total_seconds()))
    if plan.requeue_after is not None:
        runtime.queue.add(key, plan.requeue_after)


def child_failure(error: KubeError) -> bool:
    """The API server refused the write, or failed it, for a reason retrying at once will not fix
    (the spec, a quota, a policy, an exhausted resource such as Service IPs)."""
    return error.status >= 500 or (400 <= error.status < 500 and error.status not in TRANSIENT_CLIENT_ERRORS)


async def carry_out(
    plan: Plan[Any], owner: Owner, body: Mapping[str, Any], runtime: Runtime, now: datetime.datetime
) -> Outcome:
    """Idempotent: an error part-way leaves a state the next reconcile continues from.

    Raises KubeError for a failed status write or a transient error (the queue retries with
    backoff); the other children's writes are finished and recorded first.
    """
    state = runtime.state(owner.uid)
    try:
        if not plan.actions:
            await _write_status(plan.status_after or plan.status, owner, body, runtime)
            runtime.events.post(owner, plan.events + plan.events_after, now)
            state.keep_refusals(set())
            return Outcome(False, None)
        await _write_status(plan.status, owner, body, runtime)
        runtime.events.post(owner, plan.events, now)
        children: dict[ChildKey, list[ChildAction]] = {}
        for action in plan.actions:
            if not isinstance(action, DeleteOwner):
                children.setdefault(action.key, []).append(action)
        slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
        results = await asyncio.gather(
            *(_write_child(actions, owner, state, runtime, now, slots) for actions in children.values()),
            return_exceptions=True,
        )
        written = [result for result in results if isinstance(result, _Written)]
        runtime.events.post(owner, [w.news for w in written if w.news is not None], now)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise errors[0]
        if any(isinstance(action, DeleteOwner) for action in plan.actions):
            await runtime.kube.delete(owner.kind, owner.namespace, owner.name)
        state.keep_refusals(set(children))
        if all(w.succeeded for w in written):
            if plan.status_after is not None:
                await _write_status(plan.status_after, owner, body, runtime)
            runtime.events.post(owner, plan.events_after, now)
        retry_at = min((r.retry_at for r in state.refusals.values()), default=None)
        return Outcome(any(w.news is not None for w in written), retry_at)
    except KubeError as error:
        metrics.API_ERRORS.labels(status=str(error.status)).inc()
        raise


async def _write_child(
    actions: list[ChildAction],
    owner: Owner,
    state: ObjectState,
    runtime: Runtime,
    now: datetime.datetime,
    slots: asyncio.Semaphore,
) -> _Written:
    """One child's writes, in order, up to the first that fails or is not due again yet."""
    for action in actions:
        if state.backing_off(action, now):
            return _Written(False)
        try:
            async with slots:
                await _write(action, owner, state, runtime)
        except KubeError as error:
            if not child_failure(error):
                raise
            metrics.API_ERRORS.labels(status=str(error.status)).inc()
            news = _refusal_event(action, error) if state.refuse(action, error, now) else None
            return _Written(False, news)
        state.refusals.pop(action.key, None)
    return _Written(True)


async def _write(action: ChildAction, owner: Owner, state: ObjectState, runtime: Runtime) -> None:
    if isinstance(action, Create):
        if action.manifest["kind"] == "Pod":
            await runtime.kube.create(action.manifest)
            state.expect_created(pod_view(action.manifest))
        elif not state.exists(action):
            await runtime.kube.create(action.manifest)
            state.confirm(action)
    elif isinstance(action, Apply):
        applied = await runtime.kube.apply(action.manifest, action.field_manager)
        kind = str(action.manifest["kind"])
        state.remember(action.key, cache.child(kind, applied or action.manifest))
    else:
        await runtime.kube.delete(action.kind, owner.namespace, action.name, action.grace_period_seconds)
        if action.kind == "Pod":
            state.expect_deleted(action.name, removed=action.grace_period_seconds == 0)
        else:
            state.remember(action.key, None)


def _refusal_event(action: ChildAction, error: KubeError) -> Event:
    kind, name = action.key
    verb = {"create": "create", "apply": "write", "delete": "delete"}[action.verb]
    code = f"{error.status} {error.reason}".strip()
    return Event("Warning", "ChildRejected", f"cannot {verb} {kind.lower()} {name} ({code}): {error.message}")


async def _write_status(status: BaseModel, owner: Owner, body: Mapping[str, Any], runtime: Runtime) -> None:
    wanted = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    current = dict(body.get("status") or {})
    await runtime.write_status(owner.kind, owner.namespace, owner.name, owner.uid, current, wanted)
