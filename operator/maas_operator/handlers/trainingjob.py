"""TrainingJob: watches keep the indices and feed the work queue; a reconcile observes, plans and carries out."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from maas_operator import metrics
from maas_operator.api.trainingjob import KIND, NAME_RULES, PLURAL, TrainingJobSpec, TrainingJobStatus
from maas_operator.builders.meta import LABEL_MANAGED_BY, LABEL_TRAININGJOB, MANAGED_BY, Owner
from maas_operator.builders.trainingjob import head_service_name
from maas_operator.handlers import cache
from maas_operator.handlers.execute import carry_out, schedule_next
from maas_operator.handlers.runtime import TRAININGJOB_PODS, TRAININGJOBS, ObjectKey, Runtime
from maas_operator.kube.client import KubeError
from maas_operator.status.attempts import Timing
from maas_operator.status.plan import parse_time
from maas_operator.status.pods import NodeView, PodView, node_view, pod_view
from maas_operator.status.trainingjob import Observed, TrainingJobView, plan_trainingjob
from maas_operator.status.view import object_view
from maas_workloads import contract

RESOURCE = (contract.API_GROUP, contract.API_VERSION, PLURAL)
POD_LABELS: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_TRAININGJOB: kopf.PRESENT}
log = logging.getLogger(__name__)


@kopf.index(*RESOURCE, id=TRAININGJOBS)
async def trainingjobs_index(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): cache.custom_resource(body)}


@kopf.index("pods", labels=POD_LABELS, id=TRAININGJOB_PODS)
async def trainingjob_pods_index(
    body: kopf.Body, labels: Mapping[str, str], namespace: str | None, **_: Any
) -> dict[Any, Any]:
    return {(namespace or "", labels[LABEL_TRAININGJOB]): pod_view(dict(body))}


@kopf.on.event(*RESOURCE)
async def trainingjob_event(
    type: str | None, uid: str | None, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Reconcile the TrainingJob, and the ModelServices it provides a model for (its index entry is
    already updated: a succeeded run may change what they serve)."""
    runtime: Runtime = memo.runtime
    runtime.object_event((KIND, namespace or "", name), uid or "", type == "DELETED")
    runtime.dependents(namespace or "", name)


@kopf.on.event("pods", labels=POD_LABELS)
async def trainingjob_pod_event(labels: Mapping[str, str], namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.child_event((KIND, namespace or "", labels[LABEL_TRAININGJOB]))


def trainingjob_view(body: Mapping[str, Any], cached_status: dict[str, Any] | None) -> TrainingJobView:
    return object_view(body, cached_status, KIND, NAME_RULES, TrainingJobSpec, TrainingJobStatus)


async def fetch_progress(runtime: Runtime, owner: Owner) -> contract.ProgressReport | None:
    url = runtime.config.progress_url_template.format(
        service=head_service_name(owner.name),
        name=owner.name,
        namespace=owner.namespace,
        port=contract.PROGRESS_PORT,
        path=contract.PROGRESS_PATH,
    )
    try:
        async with runtime.http.get(url) as response:
            if response.status != 200:
                return None
            report = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return report if isinstance(report, dict) else None  # type: ignore[return-value]


async def fetch_nodes(runtime: Runtime, pods: list[PodView], now: datetime.datetime) -> dict[str, NodeView | None]:
    """The nodes of pods still terminating past their grace period (None: unreadable)."""
    nodes: dict[str, NodeView | None] = {}
    for pod in pods:
        deadline = parse_time(pod.deletion_timestamp) if pod.deleting else None
        if pod.node is None or pod.node in nodes or deadline is None or now < deadline:
            continue
        try:
            found = await runtime.kube.get("Node", None, pod.node)
        except KubeError as error:  # e.g. 403 without the chart's nodes rule: never force-delete blind
            log.warning("cannot read node %s of pod %s: %s", pod.node, pod.name, error)
            found = None
        nodes[pod.node] = node_view(found) if found is not None else None
    return nodes


def timing(runtime: Runtime) -> Timing:
    config = runtime.config
    return Timing(config.restart_backoff_seconds, config.restart_backoff_max_seconds, config.force_delete_after_seconds)


async def reconcile_trainingjob(runtime: Runtime, key: ObjectKey) -> None:
    body = runtime.body(key)
    if body is None:
        return  # deleted since it was queued
    state = runtime.state(body["metadata"]["uid"])
    started = time.perf_counter()
    result = "error"
    try:
        view = trainingjob_view(body, state.status)
        progress = None
        due = time.monotonic() - state.last_poll >= runtime.config.resync_seconds
        if view.status.phase == "Running" and due:
            state.last_poll = time.monotonic()
            progress = await fetch_progress(runtime, view.owner)
        now = datetime.datetime.now(datetime.UTC)
        pods = state.observe(runtime.watched.all(TRAININGJOB_PODS, (key[1], key[2])))
        observed = Observed(pods, progress, dict(state.refusals), await fetch_nodes(runtime, pods, now))
        plan = plan_trainingjob(view, observed, now, runtime.config.training_image, timing(runtime))
        state.generation = view.generation
        outcome = await carry_out(plan, view.owner, body, runtime, now)
        record_transitions(view.status, plan.status_after or plan.status, body["metadata"], now)
        schedule_next(runtime, key, plan, outcome, now)
        result = "ok"
    finally:
        metrics.RECONCILES.labels(kind=KIND, result=result).inc()
        metrics.RECONCILE_SECONDS.labels(kind=KIND, result=result).observe(time.perf_counter() - started)


def record_transitions(
    before: TrainingJobStatus, after: TrainingJobStatus, metadata: Mapping[str, Any], now: datetime.datetime
) -> None:
    for failure in (f for f in after.failures if f not in before.failures):
        metrics.TRAININGJOB_RESTARTS.labels(reason=failure.reason, charged=str(failure.charged).lower()).inc()
    if after.worker_restarts > before.worker_restarts:
        metrics.TRAININGJOB_WORKER_RESTARTS.inc(after.worker_restarts - before.worker_restarts)
    created = parse_time(metadata.get("creationTimestamp"))
    if after.attempt == 1 and before.attempt_running_time is None and after.attempt_running_time and created:
        metrics.TRAININGJOB_TIME_TO_RUNNING.observe(max(0.0, (now - created).total_seconds()))
    started = parse_time(after.start_time)
    if after.phase in ("Succeeded", "Failed") and before.phase != after.phase and started:
        metrics.TRAININGJOB_DURATION.labels(outcome=after.phase).observe(max(0.0, (now - started).total_seconds()))
