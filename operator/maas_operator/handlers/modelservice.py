"""ModelService: watches keep the indices and feed the work queue; a reconcile observes, plans and carries out."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import Any

import kopf

from maas_operator import metrics
from maas_operator.api.modelservice import KIND, NAME_RULES, PLURAL, ModelServiceSpec, ModelServiceStatus
from maas_operator.builders.meta import LABEL_MANAGED_BY, LABEL_MODELSERVICE, MANAGED_BY, Owner
from maas_operator.builders.modelservice import deployment_name
from maas_operator.handlers import cache
from maas_operator.handlers.execute import carry_out, schedule_next
from maas_operator.handlers.runtime import (
    MODELSERVICES,
    MODELSERVICES_BY_TRAININGJOB,
    TRAININGJOBS,
    ObjectKey,
    Runtime,
    modelservice_children_index,
)
from maas_operator.status.modelservice import Children, ModelServiceView, Observed, plan_modelservice
from maas_operator.status.plan import ChildKey
from maas_operator.status.view import object_view
from maas_workloads import contract

RESOURCE = (contract.API_GROUP, contract.API_VERSION, PLURAL)
CHILD_LABELS: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODELSERVICE: kopf.PRESENT}
CHILD_RESOURCES = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "Pod": ("", "v1", "pods"),
}


@kopf.index(*RESOURCE, id=MODELSERVICES)
async def modelservices_index(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): cache.custom_resource(body)}


@kopf.index(*RESOURCE, id=MODELSERVICES_BY_TRAININGJOB)
async def modelservices_by_trainingjob_index(
    body: kopf.Body, name: str, namespace: str | None, **_: Any
) -> dict[Any, Any]:
    return {(namespace or "", job): name for job in referenced_trainingjobs(body.get("spec") or {})}


@kopf.on.event(*RESOURCE)
async def modelservice_event(
    type: str | None, uid: str | None, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    memo.runtime.object_event((KIND, namespace or "", name), uid or "", type == "DELETED")


def _register_child_watch(kind: str, group: str, version: str, plural: str) -> None:
    async def index_child(
        body: kopf.Body, labels: Mapping[str, str], namespace: str | None, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace or "", labels[LABEL_MODELSERVICE]): cache.child(kind, body)}

    async def child_event(labels: Mapping[str, str], namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        memo.runtime.child_event((KIND, namespace or "", labels[LABEL_MODELSERVICE]))

    kopf.index(group, version, plural, labels=CHILD_LABELS, id=modelservice_children_index(plural))(index_child)
    kopf.on.event(group, version, plural, labels=CHILD_LABELS, id=f"modelservice-{plural}")(child_event)


for _kind, (_group, _version, _plural) in CHILD_RESOURCES.items():
    _register_child_watch(_kind, _group, _version, _plural)


def referenced_trainingjobs(spec: Mapping[str, Any]) -> set[str]:
    """Names in model.trainingJobRef and rollout.canary.model.trainingJobRef (raw: may be invalid)."""
    sources = [spec.get("model") or {}, ((spec.get("rollout") or {}).get("canary") or {}).get("model") or {}]
    return {
        str(ref["name"])
        for source in sources
        if isinstance(ref := source.get("trainingJobRef"), dict) and "name" in ref
    }


def modelservice_view(body: Mapping[str, Any], cached_status: dict[str, Any] | None) -> ModelServiceView:
    return object_view(body, cached_status, KIND, NAME_RULES, ModelServiceSpec, ModelServiceStatus)


def observe(runtime: Runtime, owner: Owner, spec: Mapping[str, Any]) -> Observed:
    watched: dict[ChildKey, dict[str, Any]] = {
        (kind, child["metadata"]["name"]): child
        for kind, (_, _, plural) in CHILD_RESOURCES.items()
        for child in runtime.watched.all(modelservice_children_index(plural), (owner.namespace, owner.name))
    }
    state = runtime.state(owner.uid)
    children = state.observe_children(watched)
    training_jobs = {
        name: runtime.watched.one(TRAININGJOBS, (owner.namespace, name)) for name in referenced_trainingjobs(spec)
    }
    return Observed(
        Children(
            deployment=children.get(("Deployment", deployment_name(owner, "stable"))),
            canary=children.get(("Deployment", deployment_name(owner, "canary"))),
            service=children.get(("Service", owner.name)),
            autoscaler=children.get(("HorizontalPodAutoscaler", owner.name)),
            disruption_budget=children.get(("PodDisruptionBudget", owner.name)),
            pods=[body for (kind, _), body in children.items() if kind == "Pod"],
        ),
        training_jobs,
        dict(state.refusals),
    )


async def reconcile_modelservice(runtime: Runtime, key: ObjectKey) -> None:
    body = runtime.body(key)
    if body is None:
        return  # deleted since it was queued
    state = runtime.state(body["metadata"]["uid"])
    started = time.perf_counter()
    result = "error"
    try:
        view = modelservice_view(body, state.status)
        observed = observe(runtime, view.owner, body.get("spec") or {})
        now = datetime.datetime.now(datetime.UTC)
        plan = plan_modelservice(view, observed, now, runtime.config.serving_image)
        state.generation = view.generation
        outcome = await carry_out(plan, view.owner, body, runtime, now)
        record_transitions(view.status, plan.status)
        schedule_next(runtime, key, plan, outcome, now)
        result = "ok"
    finally:
        metrics.RECONCILES.labels(kind=KIND, result=result).inc()
        metrics.RECONCILE_SECONDS.labels(kind=KIND, result=result).observe(time.perf_counter() - started)


def record_transitions(before: ModelServiceStatus, after: ModelServiceStatus) -> None:
    if after.failed_model is not None and after.failed_model != before.failed_model:
        metrics.MODELSERVICE_ROLLBACKS.labels(target="stable", reason=after.failed_model.reason).inc()
    canary = after.canary
    if canary is not None and canary.phase == "Failed" and (before.canary is None or before.canary.phase != "Failed"):
        metrics.MODELSERVICE_ROLLBACKS.labels(target="canary", reason=canary.reason or "Unknown").inc()
    if after.model is None or (
        before.model is not None and after.model.uri == before.model.uri and after.model.sha256 == before.model.sha256
    ):
        return
    if after.failed_model is not None and after.failed_model != before.failed_model:
        reason = "Rollback"
    elif (
        canary is not None
        and canary.phase == "Promoted"
        and (before.canary is None or before.canary.phase != "Promoted")
    ):
        reason = "CanaryPromoted"
    else:
        reason = "NewModel"
    metrics.MODELSERVICE_ROLLOUTS.labels(reason=reason).inc()
