"""Every ModelService decision, on inputs built by hand: resolution, rollouts, rollbacks, canaries."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from maas_operator.api import conditions
from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus, ServedModel
from maas_operator.builders.meta import REPLICAS_FIELD_MANAGER, Owner
from maas_operator.status.modelservice import (
    DEGRADED,
    MODEL_RESOLVED,
    PROGRESSING,
    READY,
    ROLLED_BACK,
    Children,
    ModelServiceView,
    Observed,
    plan_modelservice,
)
from maas_operator.status.plan import Apply, Delete, Plan, written_manifests

OWNER = Owner("ModelService", "digits", "team-a", "uid-ms")
IMAGE = "registry.example/serve:test"
NOW = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=datetime.UTC)
V1 = ServedModel(uri="s3://models/digits/v1", sha256="1" * 64)
V2 = ServedModel(uri="s3://models/digits/v2", sha256="2" * 64)


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"uri": V1.uri, "sha256": V1.sha256}, "replicas": 2}
    body.update(changes)
    return body


def plan(
    body: dict[str, Any] | None,
    status: ModelServiceStatus | None = None,
    children: Children | None = None,
    jobs: dict[str, dict[str, Any] | None] | None = None,
    now: datetime.datetime = NOW,
) -> Plan[ModelServiceStatus]:
    parsed = ModelServiceSpec.model_validate(body) if body is not None else None
    view = ModelServiceView(
        OWNER, 3, parsed, None if parsed else "spec.model: Field required", status or ModelServiceStatus()
    )
    return plan_modelservice(view, Observed(children or Children(), jobs or {}), now, IMAGE)


def condition(result: Plan[ModelServiceStatus], condition_type: str) -> tuple[str, str, str]:
    found = conditions.find(result.status.conditions, condition_type)
    assert found is not None, condition_type
    return found.status, found.reason, found.message


def created(result: Plan[ModelServiceStatus], kind: str) -> dict[str, Any]:
    return next(manifest for manifest in written_manifests(result) if manifest["kind"] == kind)


def rolled_out(manifest: dict[str, Any], ready: int | None = None, **status: Any) -> dict[str, Any]:
    """Play the Deployment controller: the manifest, fully rolled out (unless told otherwise)."""
    observed = copy.deepcopy(manifest)
    observed["metadata"]["generation"] = 1
    replicas = observed["spec"].get("replicas", 1)
    count = replicas if ready is None else ready
    observed["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": count,
        "availableReplicas": count,
        **status,
    }
    return observed


def serving(
    body: dict[str, Any], status: ModelServiceStatus | None = None
) -> tuple[Plan[ModelServiceStatus], Children]:
    """Create, then observe the children as rolled out: a ModelService serving its model."""
    first = plan(body, status)
    manifests = {manifest["kind"]: manifest for manifest in written_manifests(first)}
    children = Children(
        deployment=rolled_out(manifests["Deployment"]),
        service=manifests["Service"],
        disruption_budget=manifests.get("PodDisruptionBudget"),
        autoscaler=manifests.get("HorizontalPodAutoscaler"),
    )
    return plan(body, first.status, children), children


def pod(
    model: ServedModel, track: str = "stable", waiting: str | None = None, restarts: int = 0, message: str = ""
) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    last = {"terminated": {"exitCode": 64, "message": message}} if message else {}
    return {
        "metadata": {
            "name": f"digits-{track}-{model.sha256[:4] if model.sha256 else 'x'}",
            "labels": {"maas.dev/track": track},
            "annotations": {"maas.dev/model-uri": model.uri, "maas.dev/model-sha256": model.sha256},
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False" if waiting else "True"}],
            "containerStatuses": [{"name": "server", "restartCount": restarts, "state": state, "lastState": last}],
        },
    }


# --- spec and model resolution ---------------------------------------------------------------


def test_invalid_spec_gets_failed_and_no_children() -> None:
    result = plan(None)
    assert condition(result, READY)[:2] == ("False", "InvalidSpec")
    assert result.status.phase == "Failed" and not result.actions
    assert [e.reason for e in result.events] == ["InvalidSpec"]
    again = plan(None, result.status)
    assert not again.events, "the Event is posted once"


def test_a_uri_model_creates_every_child_and_records_the_model_first() -> None:
    result = plan(spec())
    kinds = sorted(manifest["kind"] for manifest in written_manifests(result))
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service"]
    assert result.status.model == V1 and result.status.url == "http://digits.team-a.svc"
    assert condition(result, MODEL_RESOLVED)[0] == "True"
    assert condition(result, PROGRESSING)[:2] == ("True", "Creating")
    assert condition(result, ROLLED_BACK)[:2] == ("False", "NoRollback")
    assert result.status.phase == "Progressing" and result.status.replicas.desired == 2


def test_a_rolled_out_deployment_is_ready_and_steady_state_writes_nothing() -> None:
    result, children = serving(spec())
    assert condition(result, READY)[:2] == ("True", "Available")
    assert condition(result, PROGRESSING)[:2] == ("False", "RolloutComplete")
    assert condition(result, DEGRADED)[:2] == ("False", "Healthy")
    assert result.status.phase == "Ready" and result.status.replicas.available == 2
    assert not result.actions and [e.reason for e in result.events] == ["RolloutComplete"]
    again = plan(spec(), result.status, children)
    assert again.status == result.status and not again.actions and not again.events


def test_missing_running_and_failed_trainingjobs_deploy_nothing() -> None:
    body = spec(model={"trainingJobRef": {"name": "train"}})
    missing = plan(body, jobs={"train": None})
    assert condition(missing, MODEL_RESOLVED)[:2] == ("False", "TrainingJobNotFound")
    running_job = {"metadata": {"uid": "j1"}, "status": {"phase": "Running", "progress": {"summary": "42%"}}}
    running = plan(body, jobs={"train": running_job})
    status, reason, message = condition(running, MODEL_RESOLVED)
    assert (status, reason) == ("False", "TrainingJobNotSucceeded") and "Running (42%)" in message
    failed_job = {
        "metadata": {"uid": "j1"},
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "Failed", "reason": "BackoffLimitExceeded", "message": "x"}],
        },
    }
    failed = plan(body, jobs={"train": failed_job})
    assert condition(failed, MODEL_RESOLVED)[:2] == ("False", "TrainingJobFailed")
    for result in (missing, running, failed):
        assert not result.actions and result.status.phase == "Pending" and result.status.model is None
        assert condition(result, READY)[0] == "False"


def succeeded_job(uid: str, sha256: str, output: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid},
        "spec": {"output": output or {"uri": "s3://models/train", "secretRef": {"name": "s3"}}},
        "status": {"phase": "Succeeded", "model": {"uri": "s3://models/train/model", "sha256": sha256}},
    }


def test_a_succeeded_trainingjob_is_served_with_its_output_credentials() -> None:
    body = spec(model={"trainingJobRef": {"name": "train"}})
    result = plan(body, jobs={"train": succeeded_job("j1", "3" * 64)})
    model = result.status.model
    assert model is not None and model.sha256 == "3" * 64
    assert model.training_job is not None and model.training_job.uid == "j1"
    container = created(result, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]


def test_a_trainingjob_model_on_a_claim_is_served_from_the_same_claim() -> None:
    job = succeeded_job("j1", "3" * 64, {"pvc": {"claimName": "store", "path": "digits"}})
    job["status"]["model"]["uri"] = "file:///mnt/maas/store/digits/model"
    result = plan(spec(model={"trainingJobRef": {"name": "train"}}), jobs={"train": job})
    assert result.status.model is not None and result.status.model.uri == "pvc://store/digits/model"


def test_a_pinned_checksum_that_the_trainingjob_did_not_produce_is_refused() -> None:
    body = spec(model={"trainingJobRef": {"name": "train"}, "sha256": "9" * 64})
    result = plan(body, jobs={"train": succeeded_job("j1", "3" * 64)})
    assert condition(result, MODEL_RESOLVED)[:2] == ("False", "ChecksumMismatch") and not result.actions


def test_what_serves_keeps_serving_while_the_trainingjob_retrains() -> None:
    body = spec(model={"trainingJobRef": {"name": "train"}})
    jobs: dict[str, dict[str, Any] | None] = {"train": succeeded_job("j1", "3" * 64)}
    first = plan(body, jobs=jobs)
    deployment = rolled_out(created(first, "Deployment"))
    children = Children(
        deployment=deployment,
        service=created(first, "Service"),
        disruption_budget=created(first, "PodDisruptionBudget"),
    )
    retraining = plan(
        body, first.status, children, {"train": {"metadata": {"uid": "j2"}, "status": {"phase": "Running"}}}
    )
    assert not retraining.actions and retraining.status.model == first.status.model
    assert condition(retraining, MODEL_RESOLVED)[0] == "False" and condition(retraining, READY)[0] == "True"
    retrained = plan(body, retraining.status, children, {"train": succeeded_job("j2", "4" * 64)})
    assert retrained.status.model is not None and retrained.status.model.sha256 == "4" * 64
    assert retrained.status.previous_model == first.status.model
    assert [type(a) for a in retrained.actions] == [Apply] and "RolloutStarted" in [
        e.reason for e in retrained.events_after
    ]


# --- rollouts and rollbacks -------------------------------------------------------------------


def new_model_rolling(auto_rollback: bool = True) -> tuple[dict[str, Any], Plan[ModelServiceStatus], Children]:
    """V1 serves; the spec moves to V2; the Deployment has picked up V2 but not finished."""
    ready, children = serving(spec())
    body = spec(model={"uri": V2.uri, "sha256": V2.sha256}, rollout={"autoRollback": auto_rollback})
    moving = plan(body, ready.status, children)
    assert moving.status.model == V2 and moving.status.previous_model == V1
    assert condition(moving, READY)[0] == "False" and condition(moving, PROGRESSING)[0] == "True"
    applied = created(moving, "Deployment")
    rolling = rolled_out(applied)
    rolling["status"].update(updatedReplicas=1, replicas=3, availableReplicas=2)
    return body, moving, Children(**{**children.__dict__, "deployment": rolling})


def test_a_new_model_rolls_the_deployment() -> None:
    body, moving, children = new_model_rolling()
    assert "RolloutStarted" in [e.reason for e in moving.events_after]
    during = plan(body, moving.status, children)
    assert (
        condition(during, PROGRESSING)[:2] == ("True", "RollingOut") and "1/2 pods" in condition(during, PROGRESSING)[2]
    )
    assert during.status.phase == "Progressing" and not during.actions


def test_a_rollout_past_its_deadline_rolls_back() -> None:
    body, moving, children = new_model_rolling()
    assert children.deployment is not None
    children.deployment["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet timed out",
        }
    ]
    back = plan(body, moving.status, children)
    assert back.status.model == V1 and back.status.failed_model is not None
    assert back.status.failed_model.reason == "ProgressDeadlineExceeded"
    assert condition(back, ROLLED_BACK)[:2] == ("True", "ProgressDeadlineExceeded")
    assert "RolledBack" in [e.reason for e in back.events]
    template = created(back, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["maas.dev/model-sha256"] == V1.sha256
    # The spec still names V2: it is not retried until the spec names something else.
    assert plan(body, back.status, children).status.model == V1


def test_crash_looping_new_pods_roll_back_with_the_reason() -> None:
    body, moving, children = new_model_rolling()
    crashing = pod(V2, waiting="CrashLoopBackOff", restarts=3, message="checksum mismatch: model.pt")
    back = plan(body, moving.status, Children(**{**children.__dict__, "pods": [crashing]}))
    assert back.status.model == V1
    status, reason, message = condition(back, ROLLED_BACK)
    assert (status, reason) == ("True", "CrashLoopBackOff") and "checksum mismatch" in message


def test_without_auto_rollback_a_failed_rollout_is_degraded() -> None:
    body, moving, children = new_model_rolling(auto_rollback=False)
    stuck = pod(V2, waiting="ImagePullBackOff")
    result = plan(body, moving.status, Children(**{**children.__dict__, "pods": [stuck]}))
    assert result.status.model == V2 and result.status.phase == "Degraded"
    assert condition(result, DEGRADED)[:2] == ("True", "ImagePullBackOff")
    assert condition(result, PROGRESSING)[:2] == ("False", "ImagePullBackOff")


def test_a_lost_pod_after_the_rollout_is_degraded_not_rolled_back() -> None:
    ready, children = serving(spec())
    assert children.deployment is not None
    children.deployment["status"]["availableReplicas"] = 1
    result = plan(spec(), ready.status, children)
    assert condition(result, DEGRADED)[:2] == ("True", "InsufficientReplicas") and result.status.model == V1


def test_scaled_to_zero_is_not_ready() -> None:
    result, _ = serving(spec(replicas=0))
    assert condition(result, READY)[:2] == ("False", "ScaledToZero")


# --- autoscaling ------------------------------------------------------------------------------


def test_autoscaling_creates_an_hpa_and_never_sets_replicas_after_creation() -> None:
    body = spec(replicas=None, autoscaling={"minReplicas": 2, "maxReplicas": 8, "metric": "inflight"})
    body.pop("replicas")
    first = plan(body)
    assert created(first, "Deployment")["spec"]["replicas"] == 2
    assert created(first, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 8
    result, children = serving(body)
    assert children.deployment is not None
    children.deployment["spec"]["replicas"] = 6  # the HPA scaled up
    scaled = plan(body, result.status, children)
    assert not scaled.actions and scaled.status.replicas.desired == 6
    fixed = plan(spec(replicas=3), scaled.status, children)
    assert [a.kind for a in fixed.actions if isinstance(a, Delete)] == ["HorizontalPodAutoscaler"]
    assert created(fixed, "Deployment")["spec"]["replicas"] == 3


# --- canary -----------------------------------------------------------------------------------


def canary_spec(after: int | None = 60) -> dict[str, Any]:
    canary: dict[str, Any] = {"model": {"uri": V2.uri, "sha256": V2.sha256}, "weight": 20}
    if after is not None:
        canary["autoPromoteAfterSeconds"] = after
    return spec(replicas=4, rollout={"canary": canary})


def canary_running() -> tuple[Plan[ModelServiceStatus], Children]:
    ready, children = serving(spec(replicas=4))
    started = plan(canary_spec(), ready.status, children)
    canary = next(
        manifest for manifest in written_manifests(started) if manifest["metadata"]["name"] == "digits-canary"
    )
    assert canary["spec"]["replicas"] == 1 and started.status.canary is not None
    assert started.status.canary.phase == "Progressing" and started.status.model == V1
    assert [e.reason for e in started.events_after] == ["CanaryStarted"]
    return started, Children(**{**children.__dict__, "canary": rolled_out(canary)})


def test_a_ready_canary_is_promoted_after_its_time() -> None:
    started, children = canary_running()
    ready = plan(canary_spec(), started.status, children)
    assert ready.status.canary is not None and ready.status.canary.phase == "Ready"
    assert ready.status.canary.traffic_percent == 20 and ready.requeue_after == 60
    promoted = plan(canary_spec(), ready.status, children, now=NOW + datetime.timedelta(seconds=61))
    assert promoted.status.model == V2 and promoted.status.previous_model == V1
    assert promoted.status.canary is not None and promoted.status.canary.phase == "Promoted"
    assert any(isinstance(a, Delete) and a.name == "digits-canary" for a in promoted.actions)
    stable = created(promoted, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert stable["maas.dev/model-sha256"] == V2.sha256
    assert "CanaryPromoted" in [e.reason for e in promoted.events]


def test_a_restart_starts_the_promotion_clock_again() -> None:
    started, children = canary_running()
    ready = plan(canary_spec(), started.status, children)
    restarted = Children(**{**children.__dict__, "pods": [pod(V2, "canary", restarts=1)]})
    later = plan(canary_spec(), ready.status, restarted, now=NOW + datetime.timedelta(seconds=61))
    assert later.status.model == V1 and later.status.canary is not None
    assert later.status.canary.ready_since is None and "restarted" in later.status.canary.message


def test_a_failing_canary_is_removed_and_the_stable_model_keeps_serving() -> None:
    started, children = canary_running()
    crashing = Children(**{**children.__dict__, "pods": [pod(V2, "canary", waiting="CrashLoopBackOff", restarts=4)]})
    failed = plan(canary_spec(), started.status, crashing)
    assert failed.status.canary is not None and failed.status.canary.phase == "Failed"
    assert failed.status.canary.reason == "CrashLoopBackOff" and failed.status.model == V1
    assert [a.name for a in failed.actions if isinstance(a, Delete)] == ["digits-canary"]
    assert "CanaryFailed" in [e.reason for e in failed.events]
    gone = Children(**{**children.__dict__, "canary": None})
    assert not plan(canary_spec(), failed.status, gone).actions, "a failed canary is not recreated"


def test_a_canary_without_auto_promotion_waits_for_the_spec() -> None:
    started, children = canary_running()
    body = canary_spec(after=None)
    waiting = plan(body, started.status, children, now=NOW + datetime.timedelta(days=1))
    assert waiting.status.model == V1 and waiting.status.canary is not None
    assert waiting.status.canary.phase == "Ready" and "spec.model" in waiting.status.canary.message


def test_turning_autoscaling_on_hands_the_replica_count_to_the_hpa() -> None:
    fixed, children = serving(spec(replicas=5))
    body = spec(autoscaling={"minReplicas": 2, "maxReplicas": 8, "metric": "inflight"})
    body.pop("replicas")
    switched = plan(body, fixed.status, children)
    handover, applied = switched.actions[:2]
    assert isinstance(handover, Apply) and isinstance(applied, Apply), "the hand-over comes before the apply"
    assert handover.field_manager == REPLICAS_FIELD_MANAGER, "another manager keeps the count when ours drops it"
    assert handover.manifest["spec"] == {"replicas": 5}, "the count stays where it is"
    assert "replicas" not in created(switched, "Deployment")["spec"]
    assert created(switched, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 2
