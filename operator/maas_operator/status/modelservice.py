"""The ModelService state machine: (spec, observed children, TrainingJobs, now) -> status and writes.

Pure: no I/O, no clocks. Which model the stable Deployment serves is decided here, in this
order: a failing rollout is rolled back, a healthy canary is promoted (a failing one removed),
and a new model from the spec (or a retrained TrainingJob) starts a rollout. Then the
children are brought to match, and the conditions are read off the Deployment and its pods.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from maas_operator.api import conditions
from maas_operator.api.common import ConditionStatus, LocalObjectReference
from maas_operator.api.modelservice import (
    CanaryStatus,
    FailedModel,
    ModelServiceSpec,
    ModelServiceStatus,
    ModelSource,
    Phase,
    ReplicasStatus,
    ServedModel,
    TrainingJobSource,
)
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import MOUNT_ROOT as TRAINING_MOUNT_ROOT
from maas_operator.status import kstatus
from maas_operator.status.plan import Action, Apply, Create, Delete, Patch, Plan, parse_time
from maas_operator.status.pods import pod_view
from maas_operator.status.view import ObjectView, StatusPlanner

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MODEL_RESOLVED = "ModelResolved"
ROLLED_BACK = "RolledBack"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, MODEL_RESOLVED, ROLLED_BACK)


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


# --- Reading the model source -------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    model: ServedModel | None
    reason: str
    message: str


def same_artifact(a: ServedModel | None, b: ServedModel | None) -> bool:
    return a is not None and b is not None and a.uri == b.uri and a.sha256 == b.sha256


def describe(model: ServedModel | None) -> str:
    if model is None:
        return "no model"
    short = f" (sha256 {model.sha256[:12]})" if model.sha256 else ""
    return f"{model.uri}{short}"


def _training_output_uri(job: Mapping[str, Any], uri: str) -> str:
    """A TrainingJob's file:// URI on its output claim, as a pvc:// URI the server pods can mount."""
    claim = (((job.get("spec") or {}).get("output") or {}).get("pvc") or {}).get("claimName")
    prefix = f"file://{TRAINING_MOUNT_ROOT}/{claim}/"
    if claim and uri.startswith(prefix):
        return f"pvc://{claim}/{uri.removeprefix(prefix)}"
    return uri


def _training_output_secret(job: Mapping[str, Any]) -> LocalObjectReference | None:
    name = (((job.get("spec") or {}).get("output") or {}).get("secretRef") or {}).get("name")
    return LocalObjectReference(name=name) if name else None


def resolve(source: ModelSource, training_jobs: Mapping[str, dict[str, Any] | None]) -> Resolution:
    if source.uri is not None:
        return Resolution(
            ServedModel(uri=source.uri, sha256=source.sha256, secret_ref=source.secret_ref),
            "UriSet",
            f"serving {source.uri}",
        )
    assert source.training_job_ref is not None
    name = source.training_job_ref.name
    job = training_jobs.get(name)
    if job is None:
        return Resolution(
            None,
            "TrainingJobNotFound",
            f"TrainingJob {name} does not exist in this namespace: create it, or fix model.trainingJobRef.name",
        )
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        failed: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
        detail = f" ({failed.get('reason')}: {failed.get('message')})" if failed else ""
        return Resolution(
            None,
            "TrainingJobFailed",
            f"TrainingJob {name} failed{detail}; fix it and re-create it to serve its model",
        )
    produced = status.get("model") or {}
    if phase != "Succeeded" or not produced.get("uri"):
        progress = ((status.get("progress") or {}).get("summary")) or ""
        return Resolution(
            None,
            "TrainingJobNotSucceeded",
            f"TrainingJob {name} is {phase}{f' ({progress})' if progress else ''}; "
            "its model is served once it has succeeded",
        )
    sha256 = produced.get("sha256")
    if source.sha256 and sha256 != source.sha256:
        return Resolution(
            None,
            "ChecksumMismatch",
            f"TrainingJob {name} produced a model with sha256 {sha256}, but model.sha256 pins {source.sha256}",
        )
    metadata = job.get("metadata") or {}
    model = ServedModel(
        uri=_training_output_uri(job, produced["uri"]),
        sha256=sha256,
        training_job=TrainingJobSource(name=name, uid=metadata.get("uid")),
        secret_ref=source.secret_ref or _training_output_secret(job),
    )
    return Resolution(model, "TrainingJobSucceeded", f"serving the model of TrainingJob {name}")


# --- Reading the children -----------------------------------------------------------------


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
    )


@dataclass(frozen=True)
class Health:
    state: Literal["progressing", "complete", "failed"]
    reason: str
    message: str
    stuck: ServingPod | None = None
    """A pod of this model that cannot start or keeps crashing."""


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
    counts = f"{deployment.updated}/{deployment.replicas} pods run the new model, {deployment.available} available"
    if not (deployment.rolled_out or (completed and deployment.replaced_old_pods)):
        if stuck is not None:
            return Health("failed", stuck.stuck_reason or "PodFailing", _pod_problem(stuck), stuck)
        if deployment.deadline_message is not None and deployment.observed:
            return Health("failed", "ProgressDeadlineExceeded", f"{deployment.deadline_message} ({counts})")
        return Health("progressing", "RollingOut", counts)
    served = f"{deployment.available}/{deployment.replicas} pods available, serving {describe(model)}"
    return Health("complete", "RolloutComplete", served, stuck)


def _pod_problem(pod: ServingPod) -> str:
    detail = f": {pod.message}" if pod.message else ""
    return f"pod {pod.name} is in {pod.stuck_reason}{detail}"


# --- The planner ----------------------------------------------------------------------------


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
        self.actions: list[Action] = []
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
        status = kstatus.judged(self.status, self.stamp, self.generation)
        return Plan(status, list(self.actions), self.events, requeue_after=self.requeue_after)

    # --- the state machine --------------------------------------------------------------
    def plan(self) -> Plan[ModelServiceStatus]:
        if self.service.spec is None:
            self.reject_spec(self.service.spec_error or "the spec is invalid")
            return self.result()
        self.update(url=build.service_url(self.owner))
        stable = resolve(self.spec.model, self.training_jobs)
        canary_spec = self.spec.rollout.canary
        candidate = resolve(canary_spec.model, self.training_jobs) if canary_spec else None
        self.record_resolution(stable, candidate)
        self.roll_back_failed_rollout()
        self.run_canary(candidate.model if candidate else None)
        self.follow_spec(stable.model)
        self.sync_children()
        self.summarize(stable)
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
            self.event(
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
            self.event("Deploying", f"deploying {describe(wanted)}")
        else:
            self.event("RolloutStarted", f"rolling out {describe(wanted)}, replacing {describe(current)}")

    # --- children -------------------------------------------------------------------------
    def sync_children(self) -> None:
        model = self.status.model
        if model is None:
            return  # nothing to serve yet: no children
        spec = self.spec
        autoscaling = spec.autoscaling
        stable = build.deployment(
            self.owner, spec, model, "stable", self.default_image, None if autoscaling else spec.fixed_replicas
        )
        observed = self.children.deployment
        if autoscaling and observed is not None and self.children.autoscaler is None and "replicas" in observed["spec"]:
            # Hand the count over to the HPA: without this, the apply below (which leaves
            # replicas out) would make the API server reset a count only we owned to 1.
            handover = {"spec": {"replicas": observed["spec"]["replicas"]}}
            self.actions.append(Patch("apps/v1", "Deployment", observed["metadata"]["name"], handover))
        self.sync(observed, stable, autoscaling.min_replicas if autoscaling else None)
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

    def sync(
        self, observed: dict[str, Any] | None, wanted: dict[str, Any], initial_replicas: int | None = None
    ) -> None:
        if observed is None:
            manifest = wanted
            if initial_replicas is not None:  # the HPA owns the count from here on
                manifest = {**wanted, "spec": {"replicas": initial_replicas, **wanted["spec"]}}
            self.actions.append(Create(manifest))
        elif build.spec_hash(observed) != build.spec_hash(wanted):
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
        self.update(phase=self.phase(health, degraded is not None))

    def degradation(self, health: Health, deployment: DeploymentView | None) -> tuple[str, str] | None:
        if health.state == "failed":
            return health.reason, f"the rollout of {describe(self.status.model)} failed: {health.message}"
        if health.stuck is not None:
            return health.stuck.stuck_reason or "PodFailing", _pod_problem(health.stuck)
        if health.state == "complete" and deployment is not None and deployment.available < deployment.replicas:
            return "InsufficientReplicas", f"{deployment.available} of {deployment.replicas} pods are available"
        return None

    def phase(self, health: Health, degraded: bool) -> Phase:
        if degraded:
            return "Degraded"
        if health.state == "complete":
            return "Ready"
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
