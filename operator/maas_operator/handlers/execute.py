"""Carry out a plan: status first, then Events, then the writes, then the after-status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf
from pydantic import BaseModel

from maas_operator import metrics
from maas_operator.builders.meta import Owner
from maas_operator.handlers.runtime import Runtime
from maas_operator.kube.client import KubeError
from maas_operator.status.plan import Apply, Create, Delete, DeleteOwner, Plan
from maas_operator.status.pods import pod_view

RETRY_DELAY_SECONDS = 2.0


async def carry_out(plan: Plan[Any], owner: Owner, body: Mapping[str, Any], runtime: Runtime) -> None:
    """Idempotent: an error part-way leaves a state the next reconcile continues from."""
    state = runtime.state(owner.uid)
    try:
        await _write_status(plan.status, owner, body, runtime)
        for event in plan.events:
            kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)
        for action in plan.actions:
            if isinstance(action, Create):
                await runtime.kube.create(action.manifest)
                if action.manifest["kind"] == "Pod":
                    state.expect_created(pod_view(action.manifest))
            elif isinstance(action, Apply):
                await runtime.kube.apply(action.manifest)
            elif isinstance(action, Delete):
                await runtime.kube.delete(action.kind, owner.namespace, action.name)
                if action.kind == "Pod":
                    state.expect_deleted(action.name)
            elif isinstance(action, DeleteOwner):
                await runtime.kube.delete(owner.kind, owner.namespace, owner.name)
        if plan.status_after is not None:
            await _write_status(plan.status_after, owner, body, runtime)
    except KubeError as error:
        metrics.API_ERRORS.labels(status=str(error.status)).inc()
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=RETRY_DELAY_SECONDS) from error


async def _write_status(status: BaseModel, owner: Owner, body: Mapping[str, Any], runtime: Runtime) -> None:
    wanted = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    current = dict(body.get("status") or {})
    await runtime.write_status(owner.kind, owner.namespace, owner.name, owner.uid, current, wanted)
