"""ModelService decisions about refused writes, pods that cannot be created or scheduled, the
phase, a TrainingJob deleted after its model was deployed, and how children are written."""

from __future__ import annotations

import datetime
from typing import Any

from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus
from maas_operator.builders.meta import REPLICAS_FIELD_MANAGER
from maas_operator.status.modelservice import (
    DEGRADED,
    MODEL_RESOLVED,
    PROGRESSING,
    READY,
    Children,
    ModelServiceView,
    Observed,
    plan_modelservice,
)
from maas_operator.status.plan import Apply, Plan, Refusal, fingerprint, written_manifests
from tests.operator.test_modelservice_status import (
    IMAGE,
    NOW,
    OWNER,
    condition,
    created,
    plan,
    pod,
    rolled_out,
    serving,
    spec,
    succeeded_job,
)

DENIED = 'admission webhook "policy.example.com" denied the request: the team label must name a cost center'


NOT_IN_EFFECT = f"generation 4 is not in effect: the API server refused deployment digits: {DENIED}"


def with_refusals(
    body: dict[str, Any], status: ModelServiceStatus, children: Children, generation: int, *refusals: Refusal
) -> Plan[ModelServiceStatus]:
    view = ModelServiceView(OWNER, generation, ModelServiceSpec.model_validate(body), None, status)
    return plan_modelservice(view, Observed(children, {}, {r.key: r for r in refusals}), NOW, IMAGE)


def test_a_refused_update_is_not_reported_as_applied() -> None:
    ready, children = serving(spec())
    assert ready.status.observed_generation == 3 and ready.status.phase == "Ready"
    edited = spec(labels={"team": "serving"})
    refusal = Refusal("Deployment", "digits", "apply", 403, "Forbidden", DENIED, fingerprint(1), NOW, NOW)
    refused = with_refusals(edited, ready.status, children, 4, refusal)
    assert refused.status.observed_generation == 3 and refused.status_after is None, "generation 4 is not in effect"
    for condition_type, status in ((READY, "False"), (PROGRESSING, "False"), (DEGRADED, "True")):
        found = condition(refused, condition_type)
        assert found[:2] == (status, "ChildRejected")
        assert found[2].startswith(NOT_IN_EFFECT)
        assert found[2].endswith("the previous configuration keeps serving (2 pod(s) available)")
    assert refused.status.phase == "Degraded"
    assert [type(a) for a in refused.actions] == [Apply], "the write is still wanted (retried with backoff)"
    fixed = plan(spec(labels={"team": "cc-1234"}), refused.status, children)
    assert fixed.status.observed_generation == 3 and fixed.status_after is not None
    assert fixed.status_after.observed_generation == 3 and condition(fixed, DEGRADED)[0] == "False"


def test_observed_generation_moves_only_once_the_writes_succeeded() -> None:
    first = plan(spec())
    assert first.status.observed_generation is None and first.status_after is not None
    assert first.status_after.observed_generation == 3
    ready, _ = serving(spec())
    assert not ready.actions and ready.status.observed_generation == 3


def test_children_are_created_and_updated_by_server_side_apply() -> None:
    first = plan(spec())
    assert all(isinstance(a, Apply) for a in first.actions)
    ready, children = serving(spec(env=[{"name": "A", "value": "1"}], nodeSelector={"pool": "gpu"}))
    body = spec()
    again = plan(body, ready.status, children)
    deployment = created(again, "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in deployment, "the apply leaves out what the spec no longer asks for"
    assert "A" not in [e["name"] for e in deployment["containers"][0]["env"]]


def test_autoscaled_deployments_are_created_with_the_count_handed_over() -> None:
    body = spec(autoscaling={"minReplicas": 3, "maxReplicas": 9, "metric": "inflight"})
    body.pop("replicas")
    first = plan(body)
    deployment, handover = first.actions[:2]
    assert isinstance(deployment, Apply) and deployment.manifest["spec"]["replicas"] == 3
    assert isinstance(handover, Apply) and handover.field_manager == REPLICAS_FIELD_MANAGER
    assert handover.manifest["spec"] == {"replicas": 3}
    assert [m["kind"] for m in written_manifests(first)] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]


def test_pods_that_cannot_be_created_are_reported_long_before_the_deadline() -> None:
    ready, children = serving(spec())
    assert children.deployment is not None
    quota = 'pods "digits-7d9-x" is forbidden: exceeded quota: compute, requested: cpu=1, used: cpu=4, limited: cpu=4'
    failing = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": quota}
    rolling = rolled_out(created(plan(spec(replicas=4), ready.status, children), "Deployment"), ready=2)
    rolling["status"].update(updatedReplicas=2, replicas=2, conditions=[failing])
    blocked = plan(spec(replicas=4), ready.status, Children(**{**children.__dict__, "deployment": rolling}))
    assert condition(blocked, PROGRESSING)[:2] == ("True", "FailedCreate")
    assert quota in condition(blocked, PROGRESSING)[2] and quota in condition(blocked, DEGRADED)[2]
    assert condition(blocked, DEGRADED)[:2] == ("True", "FailedCreate") and blocked.status.phase == "Degraded"
    assert blocked.status.model == ready.status.model and blocked.status.failed_model is None, "not rolled back"


def test_unschedulable_pods_are_reported() -> None:
    first = plan(spec())
    deployment = rolled_out(created(first, "Deployment"), ready=0)
    deployment["status"].update(updatedReplicas=2, availableReplicas=0)
    pending = pod(first.status.model, message="")  # type: ignore[arg-type]
    pending["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes fit"}
        ],
    }
    result = plan(spec(), first.status, Children(deployment=deployment, pods=[pending]))
    assert condition(result, PROGRESSING)[:2] == ("True", "Unschedulable")
    status, reason, message = condition(result, DEGRADED)
    assert (status, reason) == ("True", "Unschedulable") and "cannot be scheduled: 0/3 nodes fit" in message


def test_the_phase_is_never_ready_while_ready_is_false() -> None:
    ready, children = serving(spec())
    assert children.deployment is not None
    children.deployment["spec"]["replicas"] = 0
    children.deployment["status"].update(replicas=0, updatedReplicas=0, readyReplicas=0, availableReplicas=0)
    parked = plan(spec(replicas=0), ready.status, children)
    assert condition(parked, READY)[:2] == ("False", "ScaledToZero")
    assert parked.status.phase == "ScaledToZero"


def test_a_trainingjob_deleted_after_its_model_was_deployed_keeps_serving() -> None:
    body = spec(model={"trainingJobRef": {"name": "train"}})
    first = plan(body, jobs={"train": succeeded_job("j1", "3" * 64)})
    children = Children(
        deployment=rolled_out(created(first, "Deployment")),
        service=created(first, "Service"),
        disruption_budget=created(first, "PodDisruptionBudget"),
    )
    ready = plan(body, first.status, children, {"train": succeeded_job("j1", "3" * 64)})
    gone = plan(body, ready.status, children, {"train": None}, now=NOW + datetime.timedelta(days=1))
    status, reason, message = condition(gone, MODEL_RESOLVED)
    assert (status, reason) == ("True", "TrainingJobDeleted")
    assert "was deleted after it produced s3://models/train/model" in message and "keeps serving" in message
    assert not gone.actions and gone.status.phase == "Ready" and gone.status.model == ready.status.model
    never = plan(body, jobs={"train": None})
    assert condition(never, MODEL_RESOLVED)[1] == "TrainingJobNotFound"
