"""The ModelService state machine: (spec, observed children, TrainingJobs, refusals, now) -> status and writes.

Pure: no I/O, no clocks. Which model the stable Deployment serves is decided here, in this
order: a failing rollout is rolled back, a healthy canary is promoted (a failing one removed),
and a new model from the spec (or a retrained TrainingJob) starts a rollout. Then the
children are brought to match with server-side applies (which create them and remove what the
spec no longer asks for), and the conditions are read off the Deployment and its pods.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maas_operator.api import conditions
from maas_operator.api.common import ConditionStatus
from maas_operator.api.modelservice import (
    CanaryStatus,
    FailedModel,
    ModelServiceSpec,
    ModelServiceStatus,
    Phase,
    ReplicasStatus,
    ServedModel,
)
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import REPLICAS_FIELD_MANAGER, Owner
from maas_operator.status.model_source import Resolution, describe, resolve, same_artifact
from maas_operator.status.plan import (
    Action,
    Apply,
    ChildKey,
    Delete,
    Event,
    Plan,
    Refusal,
    describe_refusals,
    parse_time,
)
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


def plan_modelservice(
    service: ModelServiceView, observed: Observed, now: datetime.datetime, default_image: str
) -> Plan[ModelServiceStatus]:
    return _Planner(service, observed, now, default_image).plan()


class _Planner(StatusPlanner[ModelServiceStatus]):
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
        return Plan(
            self.status, list(self.actions), self.events, self.status_after, self.events_after, self.requeue_after
        )

    def announce(self, reason: str, message: str) -> None:
        """An Event about writes of this plan: posted only once they all succeeded."""
        self.events_after.append(Event("Normal", reason, message))

    # --- the state machine --------------------------------------------------------------
    def plan(self) -> Plan[ModelServiceStatus]:
        if self.service.spec is None:
            self.reject_spec(self.service.spec_error or "the spec is invalid")
            return self.result()
        self.update(url=build.service_url(self.owner))
        stable = resolve(self.spec.model, self.training_jobs, self.status.model)
        canary_spec = self.spec.rollout.canary
        canary_model = self.status.canary.model if self.status.canary else None
        candidate = resolve(canary_spec.model, self.training_jobs, canary_model) if canary_spec else None
        self.record_resolution(stable, candidate)
        self.roll_back_failed_rollout()
        self.run_canary(candidate.model if candidate else None)
        self.follow_spec(stable.model)
        self.sync_children()
        self.summarize(stable)
        self.record_generation()
        return self.result()

    def reject_spec(self, error: str) -> None:
        """Nothing new is deployed; whatever already serves keeps serving."""
        if self.condition(READY, "False", "InvalidSpec", error):
            self.event("InvalidSpec", error, warning=True)
        self.update(phase="Failed")

    def record_resolution(self, stable: Resolution, candidate: Resolution | None) -> None:
        status: ConditionStatus
        if stable.model is None:
            status, reason, message = "False", stable.reason, stable.message
        elif candidate is not None and candidate.model is None:
            status, reason, message = "False", candidate.reason, f"canary: {candidate.message}"
        else:
            status, reason, message = "True", stable.reason, stable.message
        if self.condition(MODEL_RESOLVED, status, reason, message) and status == "False":
            self.event(reason, message, warning=True)
        if conditions.find(self.status.conditions, ROLLED_BACK) is None:
            self.condition(ROLLED_BACK, "False", "NoRollback", "no rollout has been rolled back")

    def roll_back_failed_rollout(self) -> None:
        model = self.status.model
        if model is None or self.stable is None:
            return
        health = rollout_health(self.stable, self.track_pods("stable"), model, self.rollout_completed())
        previous = self.status.previous_model
        if health.state != "failed" or not self.spec.rollout.auto_rollback or previous is None:
            return
        message = f"rolled back from {describe(model)} to {describe(previous)}: {health.message}"
        self.update(
            model=previous,
            previous_model=None,
            failed_model=FailedModel(**model.model_dump(), reason=health.reason),
        )
        self.condition(ROLLED_BACK, "True", health.reason, message)
        self.event("RolledBack", message, warning=True)

    def run_canary(self, candidate: ServedModel | None) -> None:
        canary_spec = self.spec.rollout.canary
        if canary_spec is None or candidate is None:
            self.update(canary=None)
            return
        known = (
            self.status.canary if self.status.canary and same_artifact(self.status.canary.model, candidate) else None
        )
        base = CanaryStatus(model=candidate, phase="Progressing", weight=canary_spec.weight)
        if known is not None and known.phase in ("Promoted", "Failed"):
            self.update(canary=known.model_copy(update={"weight": canary_spec.weight, "model": candidate}))
            return
        if same_artifact(candidate, self.status.model):
            self.update(canary=base.model_copy(update={"phase": "Promoted", "message": "it is the stable model"}))
            return
        if self.status.model is None:
            message = "waits until a stable model serves"
            self.update(canary=base.model_copy(update={"message": message}))
            return

        stable_replicas = self.stable.replicas if self.stable else self.spec.fixed_replicas
        replicas = build.canary_replicas(max(1, stable_replicas), canary_spec.weight)
        pods = self.track_pods("canary")
        health = rollout_health(self.canary, pods, candidate)
        restarts = sum(pod.restarts for pod in pods if pod.serves(candidate))
        ready = self.canary.ready if self.canary else 0
        stable_ready = self.stable.ready if self.stable else 0
        traffic = round(100 * ready / (ready + stable_ready)) if ready + stable_ready else 0
        status = base.model_copy(
            update={"replicas": replicas, "ready": ready, "traffic_percent": traffic, "restarts": restarts}
        )
        if health.state == "failed" or (health.stuck is not None):
            reason = health.stuck.stuck_reason if health.stuck else health.reason
            message = f"canary {describe(candidate)} failed and was removed: {health.message}"
            self.update(canary=status.model_copy(update={"phase": "Failed", "reason": reason, "message": message}))
            self.event("CanaryFailed", message, warning=True)
            return

        self.canary_target = (candidate, replicas)
        if known is None:
            self.announce(
                "CanaryStarted", f"canary {describe(candidate)} with {replicas} pod(s), {canary_spec.weight}% weight"
            )
        restarted = known is not None and restarts > known.restarts
        if health.state != "complete" or restarted:
            message = "canary pods restarted; the promotion clock starts again" if restarted else health.message
            self.update(canary=status.model_copy(update={"message": message}))
            return
        since = (known.ready_since if known else None) or self.stamp
        status = status.model_copy(update={"phase": "Ready", "ready_since": since})
        promote_after = canary_spec.auto_promote_after_seconds
        if promote_after is None:
            message = "ready; promote it by making it spec.model"
            self.update(canary=status.model_copy(update={"message": message}))
            return
        ready_since = parse_time(since) or self.now
        remaining = promote_after - (self.now - ready_since).total_seconds()
        if remaining > 0:
            message = f"ready; promoted in {int(remaining) + 1}s unless it restarts"
            self.update(canary=status.model_copy(update={"message": message}))
            self.requeue_after = remaining
            return
        message = (
            f"promoted {describe(candidate)} to the stable Deployment after {promote_after}s ready; "
            "make it spec.model and remove rollout.canary to keep it when the canary is gone"
        )
        self.update(
            model=candidate,
            previous_model=self.status.model,
            failed_model=None,
            canary=status.model_copy(update={"phase": "Promoted", "message": message}),
        )
        self.canary_target = None
        self.event("CanaryPromoted", message)

    def follow_spec(self, wanted: ServedModel | None) -> None:
        """Roll out the model the spec resolves to, unless it has already failed or a canary replaced it."""
        canary = self.status.canary
        if canary is not None and canary.phase == "Promoted":
            wanted = canary.model
        if wanted is None:
            return
        current = self.status.model
        if same_artifact(wanted, current):
            self.update(model=wanted)  # the same artifact; its source details may be newer
            return
        if self.status.failed_model is not None and same_artifact(wanted, self.status.failed_model):
            return
        self.update(model=wanted, previous_model=current, failed_model=None)
        if conditions.is_true(self.status.conditions, ROLLED_BACK):
            self.condition(ROLLED_BACK, "False", "NewModel", f"rolling out {describe(wanted)}")
        if current is None:
            self.announce("Deploying", f"deploying {describe(wanted)}")
        else:
            self.announce("RolloutStarted", f"rolling out {describe(wanted)}, replacing {describe(current)}")

    # --- children -------------------------------------------------------------------------
    def sync_children(self) -> None:
        """Server-side apply every child that differs from what the spec asks for (creating the
        missing ones); our field manager then owns exactly the fields we set, so a field the spec
        no longer asks for is removed from the child."""
        model = self.status.model
        if model is None:
            return  # nothing to serve yet: no children
        spec = self.spec
        autoscaling = spec.autoscaling
        stable = build.deployment(
            self.owner, spec, model, "stable", self.default_image, None if autoscaling else spec.fixed_replicas
        )
        observed = self.children.deployment
        if autoscaling and observed is None:
            # The first count is ours, co-owned by the hand-over manager, so that our later
            # applies, which leave replicas to the HPA, never make the API server reset it.
            self.actions.append(Apply({**stable, "spec": {"replicas": autoscaling.min_replicas, **stable["spec"]}}))
            self.hand_over_replicas(autoscaling.min_replicas)
        elif (
            autoscaling and observed is not None and self.children.autoscaler is None and "replicas" in observed["spec"]
        ):
            # Turning autoscaling on: hand the current count over before the apply that drops it.
            self.hand_over_replicas(int(observed["spec"]["replicas"]))
            self.sync(observed, stable)
        else:
            self.sync(observed, stable)
        self.sync(self.children.service, build.service(self.owner, spec))
        autoscaler = build.horizontal_pod_autoscaler(self.owner, autoscaling) if autoscaling else None
        self.sync_optional(self.children.autoscaler, autoscaler, "autoscaling/v2", "HorizontalPodAutoscaler")
        budget = build.pod_disruption_budget(self.owner, spec)
        self.sync_optional(self.children.disruption_budget, budget, "policy/v1", "PodDisruptionBudget")
        canary = None
        if self.canary_target is not None:
            candidate, replicas = self.canary_target
            canary = build.deployment(self.owner, spec, candidate, "canary", self.default_image, replicas)
        self.sync_optional(self.children.canary, canary, "apps/v1", "Deployment")

    def hand_over_replicas(self, replicas: int) -> None:
        self.actions.append(Apply(build.replica_count(self.owner, "stable", replicas), REPLICAS_FIELD_MANAGER))

    def sync(self, observed: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
        if observed is None or build.spec_hash(observed) != build.spec_hash(wanted):
            self.actions.append(Apply(wanted))

    def sync_optional(
        self, observed: dict[str, Any] | None, wanted: dict[str, Any] | None, api_version: str, kind: str
    ) -> None:
        if wanted is not None:
            self.sync(observed, wanted)
        elif observed is not None and not (observed.get("metadata") or {}).get("deletionTimestamp"):
            self.actions.append(Delete(api_version, kind, observed["metadata"]["name"]))

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
