"""How a ModelService's Deployments and pods are doing: read off their status, summarised as
the health of one rollout (progressing, complete or failed) with the reason a user can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from maas_operator.api.modelservice import ServedModel
from maas_operator.builders import modelservice as build
from maas_operator.status.model_source import describe
from maas_operator.status.pods import pod_view


@dataclass(frozen=True)
class ServingPod:
    name: str
    track: str
    model_uri: str | None
    model_sha256: str | None
    ready: bool
    restarts: int
    stuck_reason: str | None
    """Why the container cannot start or keeps crashing (CrashLoopBackOff, ImagePullBackOff, ...)."""
    message: str
    deleting: bool
    unschedulable: str | None = None
    """The scheduler's explanation while the pod cannot be placed."""

    def serves(self, model: ServedModel) -> bool:
        return self.model_uri == model.uri and self.model_sha256 == model.sha256


def serving_pod(pod: dict[str, Any]) -> ServingPod:
    view = pod_view(pod)
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    message = " ".join(part for part in (view.waiting_message, view.message) if part)
    return ServingPod(
        name=view.name,
        track=labels.get(build.LABEL_TRACK, ""),
        model_uri=annotations.get(build.ANNOTATION_MODEL_URI),
        model_sha256=annotations.get(build.ANNOTATION_MODEL_SHA256),
        ready=view.ready,
        restarts=view.restarts,
        stuck_reason=view.waiting_reason if view.stuck else None,
        message=message,
        deleting=view.deleting,
        unschedulable=view.unschedulable,
    )


@dataclass(frozen=True)
class DeploymentView:
    replicas: int
    """Desired pods (spec.replicas, which the HPA sets when autoscaling)."""
    current: int
    updated: int
    ready: int
    available: int
    observed: bool
    """The controller has seen the latest spec (observedGeneration >= generation)."""
    model: tuple[str | None, str | None]
    deadline_message: str | None
    """The Deployment's ProgressDeadlineExceeded message, if it has given up."""
    replica_failure: str | None = None
    """The Deployment's ReplicaFailure message: its ReplicaSet cannot create pods (quota, webhook, ...)."""

    def serves(self, model: ServedModel) -> bool:
        return self.model == (model.uri, model.sha256)

    @property
    def replaced_old_pods(self) -> bool:
        return self.observed and self.updated >= self.replicas and self.current == self.updated

    @property
    def rolled_out(self) -> bool:
        return self.replaced_old_pods and self.available >= self.updated


def deployment_view(deployment: dict[str, Any]) -> DeploymentView:
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    progressing: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    deadline = progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded"
    failure: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "ReplicaFailure" and c.get("status") == "True"),
        {},
    )
    generation = metadata.get("generation")
    observed_generation = status.get("observedGeneration")
    return DeploymentView(
        replicas=int(spec.get("replicas", 1)),
        current=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        observed=observed_generation is not None and (generation is None or observed_generation >= generation),
        model=(annotations.get(build.ANNOTATION_MODEL_URI), annotations.get(build.ANNOTATION_MODEL_SHA256)),
        deadline_message=(progressing.get("message") or "the rollout made no progress") if deadline else None,
        replica_failure=(failure.get("message") or failure.get("reason") or "FailedCreate") if failure else None,
    )


@dataclass(frozen=True)
class Health:
    state: Literal["progressing", "complete", "failed"]
    reason: str
    message: str
    stuck: ServingPod | None = None
    """A pod of this model that cannot start or keeps crashing."""
    blocked: tuple[str, str] | None = None
    """(reason, message) while pods cannot be created (FailedCreate) or scheduled (Unschedulable):
    not a failure yet (quota may free, nodes may be added), but worth saying long before the deadline."""


def blocked_pods(deployment: DeploymentView, pods: list[ServingPod], model: ServedModel) -> tuple[str, str] | None:
    """Why pods of `model` cannot be created or placed, in the controller's or scheduler's words."""
    if deployment.replica_failure is not None:
        return "FailedCreate", f"the Deployment cannot create pods: {deployment.replica_failure}"
    pending = next((p for p in pods if p.serves(model) and p.unschedulable and not p.deleting), None)
    if pending is not None:
        return "Unschedulable", f"pod {pending.name} cannot be scheduled: {pending.unschedulable}"
    return None


def rollout_health(
    deployment: DeploymentView | None, pods: list[ServingPod], model: ServedModel, completed: bool = False
) -> Health:
    """How the rollout of `model` in one Deployment is going.

    `completed`: this rollout already finished once; losing pods later is a degradation
    for the Deployment to heal, not a rollout to judge (or roll back).
    """
    if deployment is None:
        return Health("progressing", "Creating", "creating the Deployment")
    if not deployment.serves(model):
        return Health("progressing", "RollingOut", f"waiting for the Deployment to start rolling out {describe(model)}")
    stuck = next((p for p in pods if p.serves(model) and p.stuck_reason and not p.deleting), None)
    blocked = blocked_pods(deployment, pods, model)
    counts = f"{deployment.updated}/{deployment.replicas} pods run the new model, {deployment.available} available"
    if not (deployment.rolled_out or (completed and deployment.replaced_old_pods)):
        if stuck is not None:
            return Health("failed", stuck.stuck_reason or "PodFailing", pod_problem(stuck), stuck)
        if deployment.deadline_message is not None and deployment.observed:
            return Health("failed", "ProgressDeadlineExceeded", f"{deployment.deadline_message} ({counts})")
        if blocked is not None:
            return Health("progressing", blocked[0], f"{blocked[1]} ({counts})", blocked=blocked)
        return Health("progressing", "RollingOut", counts)
    served = f"{deployment.available}/{deployment.replicas} pods available, serving {describe(model)}"
    return Health("complete", "RolloutComplete", served, stuck, blocked)


def pod_problem(pod: ServingPod) -> str:
    detail = f": {pod.message}" if pod.message else ""
    return f"pod {pod.name} is in {pod.stuck_reason}{detail}"
