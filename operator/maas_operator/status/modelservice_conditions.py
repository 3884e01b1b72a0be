"""The ModelService planner's shared state and helpers, and its conditions: Ready, Progressing
and Degraded read off the Deployment and its pods (or the API server's refusals), the phase that
summarises them, and which generation is in effect. The base of status/modelservice.py. Pure.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maas_operator.api import conditions
from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus, Phase, ReplicasStatus, ServedModel
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_operator.status import kstatus
from maas_operator.status.model_source import Resolution, describe, same_artifact
from maas_operator.status.plan import Action, ChildKey, Event, Plan, Refusal, describe_refusals
from maas_operator.status.rollout import (
    DeploymentView,
    Health,
    ServingPod,
    deployment_view,
    pod_problem,
    rollout_health,
    serving_pod,
)
from maas_operator.status.view import ObjectView, StatusPlanner

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MODEL_RESOLVED = "ModelResolved"
ROLLED_BACK = "RolledBack"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, MODEL_RESOLVED, ROLLED_BACK)
CHILD_REJECTED = "ChildRejected"
"""Reason of Ready, Progressing and Degraded while the API server refuses a write of a child."""


ModelServiceView = ObjectView[ModelServiceSpec, ModelServiceStatus]


@dataclass(frozen=True)
class Children:
    """The watched children of one ModelService (None: absent)."""

    deployment: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    autoscaler: dict[str, Any] | None = None
    disruption_budget: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Observed:
    children: Children = field(default_factory=Children)
    training_jobs: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    """Referenced TrainingJobs by name; None for one that does not exist."""
    refusals: Mapping[ChildKey, Refusal] = field(default_factory=dict)
    """Writes of children the API server refused, still wanted (see status/plan.py)."""


class ServicePlanner(StatusPlanner[ModelServiceStatus]):
    """State and helpers of the ModelService planner, and how its conditions are summarised."""

    def __init__(
        self, service: ModelServiceView, observed: Observed, now: datetime.datetime, default_image: str
    ) -> None:
        super().__init__(service.status, service.generation, now)
        self.service = service
        self.children = observed.children
        self.training_jobs = observed.training_jobs
        self.default_image = default_image
        self.refusals = observed.refusals
        self.actions: list[Action] = []
        self.events_after: list[Event] = []
        self.status_after: ModelServiceStatus | None = None
        self.requeue_after: float | None = None
        self.pods = [serving_pod(pod) for pod in observed.children.pods]
        stable = observed.children.deployment
        canary = observed.children.canary
        self.stable = deployment_view(stable) if stable is not None else None
        self.canary = deployment_view(canary) if canary is not None else None
        self.canary_target: tuple[ServedModel, int] | None = None
        """The canary to run (model, pods); None removes the canary Deployment."""

    # --- small helpers ------------------------------------------------------------------
    @property
    def spec(self) -> ModelServiceSpec:
        assert self.service.spec is not None
        return self.service.spec

    @property
    def owner(self) -> Owner:
        return self.service.owner

    def track_pods(self, track: build.Track) -> list[ServingPod]:
        return [pod for pod in self.pods if pod.track == track]

    def result(self) -> Plan[ModelServiceStatus]:
        """The plan, every status in it judged for kstatus (Reconciling, Stalled)."""
        status = kstatus.judged(self.status, self.stamp, self.generation)
        after = kstatus.judged(self.status_after, self.stamp, self.generation) if self.status_after else None
        return Plan(status, list(self.actions), self.events, after, self.events_after, self.requeue_after)

    def announce(self, reason: str, message: str) -> None:
        """An Event about writes of this plan: posted only once they all succeeded."""
        self.events_after.append(Event("Normal", reason, message))

    # --- conditions -----------------------------------------------------------------------
    def summarize(self, stable: Resolution) -> None:
        model = self.status.model
        deployment = self.stable
        desired = deployment.replicas if deployment else self.initial_replicas()
        self.update(
            replicas=ReplicasStatus(
                desired=desired,
                ready=deployment.ready if deployment else 0,
                updated=deployment.updated if deployment else 0,
                available=deployment.available if deployment else 0,
            )
        )
        if self.refusals:
            self.report_refusals(deployment)
            return
        if model is None:
            self.condition(READY, "False", stable.reason, f"nothing to serve yet: {stable.message}")
            self.condition(PROGRESSING, "False", "NoModel", "waiting for a model to serve")
            self.condition(DEGRADED, "False", "NoModel", "nothing runs yet")
            self.update(phase="Pending")
            return

        health = rollout_health(deployment, self.track_pods("stable"), model, self.rollout_completed())
        if health.state == "complete" and desired == 0:
            self.condition(READY, "False", "ScaledToZero", "replicas is 0: no pod serves")
        elif health.state == "complete" and deployment is not None and deployment.available > 0:
            self.condition(READY, "True", "Available", health.message)
        else:
            self.condition(READY, "False", health.reason, f"{describe(model)} is not served yet: {health.message}")

        if health.state == "progressing":
            self.condition(PROGRESSING, "True", health.reason, health.message)
        elif health.state == "failed":
            if self.condition(PROGRESSING, "False", health.reason, health.message):
                self.event("RolloutFailed", f"{describe(model)}: {health.message}", warning=True)
        elif self.condition(PROGRESSING, "False", "RolloutComplete", health.message):
            self.event("RolloutComplete", health.message)

        degraded = self.degradation(health, deployment)
        if degraded is None:
            self.condition(DEGRADED, "False", "Healthy", "every pod runs as expected")
        elif self.condition(DEGRADED, "True", degraded[0], degraded[1]):
            self.event(degraded[0], degraded[1], warning=True)
        self.update(phase=self.phase(degraded is not None))

    def report_refusals(self, deployment: DeploymentView | None) -> None:
        """The latest spec is not in effect: say which write was refused, and what still serves."""
        message = (
            f"generation {self.service.generation} is not in effect: the API server refused "
            f"{describe_refusals(list(self.refusals.values()))}"
        )
        if deployment is not None and deployment.available > 0:
            message += f"; the previous configuration keeps serving ({deployment.available} pod(s) available)"
        self.condition(READY, "False", CHILD_REJECTED, message)
        self.condition(PROGRESSING, "False", CHILD_REJECTED, message)
        self.condition(DEGRADED, "True", CHILD_REJECTED, message)  # the executor posted the Warning Event
        self.update(phase="Degraded")

    def record_generation(self) -> None:
        """observedGeneration is the generation in effect: advanced only once its writes all succeeded."""
        if self.service.spec is None:
            return
        previous = self.service.status.observed_generation
        if not self.refusals and self.actions:
            self.status_after = self.status
        if self.refusals or self.actions:
            self.update(observed_generation=previous)

    def degradation(self, health: Health, deployment: DeploymentView | None) -> tuple[str, str] | None:
        if health.state == "failed":
            return health.reason, f"the rollout of {describe(self.status.model)} failed: {health.message}"
        if health.stuck is not None:
            return health.stuck.stuck_reason or "PodFailing", pod_problem(health.stuck)
        if health.blocked is not None:
            return health.blocked
        if health.state == "complete" and deployment is not None and deployment.available < deployment.replicas:
            return "InsufficientReplicas", f"{deployment.available} of {deployment.replicas} pods are available"
        return None

    def phase(self, degraded: bool) -> Phase:
        """A summary of the conditions: never Ready unless the Ready condition is True."""
        if degraded:
            return "Degraded"
        ready = conditions.find(self.status.conditions, READY)
        if ready is not None and ready.status == "True":
            return "Ready"
        if ready is not None and ready.reason == "ScaledToZero":
            return "ScaledToZero"
        return "Progressing"

    def rollout_completed(self) -> bool:
        """The model the stable Deployment serves finished rolling out in an earlier reconcile."""
        before = conditions.find(self.service.status.conditions, PROGRESSING)
        return (
            before is not None
            and before.reason == "RolloutComplete"
            and same_artifact(self.service.status.model, self.status.model)
        )

    def initial_replicas(self) -> int:
        autoscaling = self.spec.autoscaling
        return autoscaling.min_replicas if autoscaling else self.spec.fixed_replicas
