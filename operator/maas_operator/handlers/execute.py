"""Carry out a plan: status first, then the decision Events, then the writes, then the
after-status and the Events that announce what the writes did.

A write the API server refuses (a 4xx other than 409 on create / 404 on delete, and other than
the transient 401, 408, 409 and 429) does not stop the others: it is recorded as a Refusal on
the object's state, announced by one Warning Event per distinct refusal, retried with a
per-child backoff, and reported by the next plan (the planners read refusals as observations).
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from maas_operator import metrics
from maas_operator.builders.events import event
from maas_operator.builders.meta import Owner
from maas_operator.handlers.runtime import ObjectKey, ObjectState, Runtime
from maas_operator.kube.client import KubeError
from maas_operator.status.plan import Apply, ChildAction, Create, DeleteOwner, Event, Plan, rfc3339
from maas_operator.status.pods import pod_view

INSTANCE = os.environ.get("HOSTNAME", "maas-operator")
TRANSIENT_CLIENT_ERRORS = frozenset({401, 408, 409, 429})
"""4xx answers that say "not now" (auth refresh, timeout, conflict, throttling): retried, not reported."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    new_refusals: bool
    """A write was refused in a new way: reconcile again now, so that status says so."""
    retry_at: datetime.datetime | None
    """When the earliest refused write may be retried."""


def schedule_next(runtime: Runtime, key: ObjectKey, plan: Plan[Any], outcome: Outcome, now: datetime.datetime) -> None:
    """Reconcile again: at once after a new refusal (so that status says so), when a refused
    write may be retried, and when the plan's next time-based decision is due."""
    if outcome.new_refusals:
        runtime.queue.add(key)
    elif outcome.retry_at is not None:
        runtime.queue.add(key, max(0.0, (outcome.retry_at - now).total_seconds()))
    if plan.requeue_after is not None:
        runtime.queue.add(key, plan.requeue_after)


def refused(error: KubeError) -> bool:
    """The API server will refuse this write again until something changes (the spec, a quota, a policy)."""
    return 400 <= error.status < 500 and error.status not in TRANSIENT_CLIENT_ERRORS


async def carry_out(
    plan: Plan[Any], owner: Owner, body: Mapping[str, Any], runtime: Runtime, now: datetime.datetime
) -> Outcome:
    """Idempotent: an error part-way leaves a state the next reconcile continues from.

    Raises KubeError for a failed status write or a transient error (the queue retries with backoff).
    """
    state = runtime.state(owner.uid)
    try:
        if not plan.actions:
            await _write_status(plan.status_after or plan.status, owner, body, runtime)
            await _post(plan.events + plan.events_after, owner, runtime, now)
            state.keep_refusals(set())
            return Outcome(False, None)
        await _write_status(plan.status, owner, body, runtime)
        await _post(plan.events, owner, runtime, now)
        new_refusals = False
        succeeded = True
        for action in plan.actions:
            if isinstance(action, DeleteOwner):
                await runtime.kube.delete(owner.kind, owner.namespace, owner.name)
                continue
            if state.backing_off(action, now):
                succeeded = False
                continue
            try:
                await _write(action, owner, state, runtime)
            except KubeError as error:
                if not refused(error):
                    raise
                metrics.API_ERRORS.labels(status=str(error.status)).inc()
                succeeded = False
                if state.refuse(action, error, now):
                    new_refusals = True
                    await _post([_refusal_event(action, error)], owner, runtime, now)
            else:
                state.refusals.pop(action.key, None)
        state.keep_refusals({action.key for action in plan.actions if not isinstance(action, DeleteOwner)})
        if succeeded:
            if plan.status_after is not None:
                await _write_status(plan.status_after, owner, body, runtime)
            await _post(plan.events_after, owner, runtime, now)
        retry_at = min((r.retry_at for r in state.refusals.values()), default=None)
        return Outcome(new_refusals, retry_at)
    except KubeError as error:
        metrics.API_ERRORS.labels(status=str(error.status)).inc()
        raise


async def _write(action: ChildAction, owner: Owner, state: ObjectState, runtime: Runtime) -> None:
    if isinstance(action, Create):
        await runtime.kube.create(action.manifest)
        if action.manifest["kind"] == "Pod":  # a repeated create of anything else is a harmless 409
            state.expect_created(pod_view(action.manifest))
    elif isinstance(action, Apply):
        applied = await runtime.kube.apply(action.manifest, action.field_manager)
        state.remember(action.key, applied or action.manifest)
    else:
        await runtime.kube.delete(action.kind, owner.namespace, action.name, action.grace_period_seconds)
        if action.kind == "Pod":
            state.expect_deleted(action.name)
        else:
            state.remember(action.key, None)


def _refusal_event(action: ChildAction, error: KubeError) -> Event:
    kind, name = action.key
    verb = {"create": "create", "apply": "write", "delete": "delete"}[action.verb]
    code = f"{error.status} {error.reason}".strip()
    return Event("Warning", "ChildRejected", f"cannot {verb} {kind.lower()} {name} ({code}): {error.message}")


async def _post(events: list[Event], owner: Owner, runtime: Runtime, now: datetime.datetime) -> None:
    stamp = rfc3339(now)
    for notice in events:
        manifest = event(owner, notice.type, notice.reason, notice.message, stamp, uuid.uuid4().hex[:16], INSTANCE)
        try:
            await runtime.kube.create(manifest)
        except KubeError as error:  # Events help humans; losing one must not stop the reconcile
            log.warning("could not post Event %s for %s: %s", notice.reason, owner.name, error)


async def _write_status(status: BaseModel, owner: Owner, body: Mapping[str, Any], runtime: Runtime) -> None:
    wanted = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    current = dict(body.get("status") or {})
    await runtime.write_status(owner.kind, owner.namespace, owner.name, owner.uid, current, wanted)
