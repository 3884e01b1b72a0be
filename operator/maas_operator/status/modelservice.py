"""The ModelService state machine: (spec, observed children, TrainingJobs, refusals, now) -> status and writes.

Pure: no I/O, no clocks. Which model the stable Deployment serves is decided here, in this
order: a failing rollout is rolled back, a healthy canary is promoted (a failing one removed),
and a new model from the spec (or a retrained TrainingJob) starts a rollout. Then the
children are brought to match with server-side applies (which create them and remove what the
spec no longer asks for), and the conditions are read off the Deployment and its pods.
"""

from __future__ import annotations

import datetime
from typing import Any

from maas_operator.api import conditions
from maas_operator.api.common import ConditionStatus
from maas_operator.api.modelservice import (
    CanaryStatus,
    FailedModel,
    ModelServiceStatus,
    ServedModel,
)
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import REPLICAS_FIELD_MANAGER
from maas_operator.status.model_source import Resolution, describe, resolve, same_artifact
from maas_operator.status.modelservice_conditions import (
    CHILD_REJECTED,
    CONDITION_TYPES,
    DEGRADED,
    MODEL_RESOLVED,
    PROGRESSING,
    READY,
    ROLLED_BACK,
    Children,
    ModelServiceView,
    Observed,
    ServicePlanner,
)
from maas_operator.status.plan import (
    Apply,
    Delete,
    Plan,
    parse_time,
)
from maas_operator.status.rollout import (
    rollout_health,
)

__all__ = [
    "CHILD_REJECTED",
    "CONDITION_TYPES",
    "DEGRADED",
    "MODEL_RESOLVED",
    "PROGRESSING",
    "READY",
    "ROLLED_BACK",
    "Children",
    "ModelServiceView",
    "Observed",
    "plan_modelservice",
]


def plan_modelservice(
    service: ModelServiceView, observed: Observed, now: datetime.datetime, default_image: str
) -> Plan[ModelServiceStatus]:
    return _Planner(service, observed, now, default_image).plan()


class _Planner(ServicePlanner):
    """Decides which model serves and writes the children; the conditions are ServicePlanner's."""

    # --- the state machine --------------------------------------------------------------
    def plan(self) -> Plan[ModelServiceStatus]:
        if self.service.spec is None:
            self.reject_spec(self.service.spec_error or "the spec is invalid")
            return self.result()
        self.update(url=build.service_url(self.owner, self.spec))
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
        autoscaler = (
            build.horizontal_pod_autoscaler(self.owner, autoscaling, llm_service=spec.is_llm) if autoscaling else None
        )
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
