"""Carry out a plan: status first, then Events, then the writes, then the after-status."""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from maas_operator import metrics
from maas_operator.builders.events import event
from maas_operator.builders.meta import Owner
from maas_operator.handlers.runtime import Runtime
from maas_operator.kube.client import KubeError
from maas_operator.status.plan import Apply, Create, Delete, DeleteOwner, Patch, Plan, rfc3339
from maas_operator.status.pods import pod_view

INSTANCE = os.environ.get("HOSTNAME", "maas-operator")
log = logging.getLogger(__name__)


async def carry_out(plan: Plan[Any], owner: Owner, body: Mapping[str, Any], runtime: Runtime) -> None:
    """Idempotent: an error part-way leaves a state the next reconcile continues from."""
    state = runtime.state(owner.uid)
    owner_key = (owner.kind, owner.namespace, owner.name)
    try:
        await _write_status(plan.status, owner, body, runtime)
        stamp = rfc3339(datetime.datetime.now(datetime.UTC))
        for notice in plan.events:
            manifest = event(owner, notice.type, notice.reason, notice.message, stamp, uuid.uuid4().hex[:16], INSTANCE)
            try:
                await runtime.kube.create(manifest)
            except KubeError as error:  # Events help humans; losing one must not stop the reconcile
                log.warning("could not post Event %s for %s: %s", notice.reason, owner.name, error)
        for action in plan.actions:
            if isinstance(action, Create):
                await runtime.kube.create(action.manifest)
                if action.manifest["kind"] == "Pod":
                    state.expect_created(pod_view(action.manifest))
                else:
                    runtime.remember_child(owner_key, action.manifest["kind"], action.manifest)
            elif isinstance(action, Apply):
                applied = await runtime.kube.apply(action.manifest)
                runtime.remember_child(owner_key, action.manifest["kind"], applied or action.manifest)
            elif isinstance(action, Patch):
                patched = await runtime.kube.patch(action.kind, owner.namespace, action.name, action.patch)
                if patched:
                    runtime.remember_child(owner_key, action.kind, patched)
            elif isinstance(action, Delete):
                await runtime.kube.delete(action.kind, owner.namespace, action.name)
                if action.kind == "Pod":
                    state.expect_deleted(action.name)
                else:
                    runtime.forget_child(owner_key, action.kind, action.name)
            elif isinstance(action, DeleteOwner):
                await runtime.kube.delete(owner.kind, owner.namespace, owner.name)
        if plan.status_after is not None:
            await _write_status(plan.status_after, owner, body, runtime)
    except KubeError as error:
        metrics.API_ERRORS.labels(status=str(error.status)).inc()
        raise


async def _write_status(status: BaseModel, owner: Owner, body: Mapping[str, Any], runtime: Runtime) -> None:
    wanted = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    current = dict(body.get("status") or {})
    await runtime.write_status(owner.kind, owner.namespace, owner.name, owner.uid, current, wanted)
