"""Every TrainingJob transition, through the pure planner with hand-built observations."""

from __future__ import annotations

import datetime
import json
from typing import Any

from maas_operator.api import conditions
from maas_operator.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from maas_operator.builders.meta import Owner
from maas_operator.status.plan import Create, Delete, DeleteOwner, Plan, rfc3339
from maas_operator.status.pods import PodView
from maas_operator.status.trainingjob import Observed, TrainingJobView, plan_trainingjob

OWNER = Owner("TrainingJob", "digits", "team-a", "uid-1")
T0 = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=datetime.UTC)
HEAD, W0, W1 = "digits-head", "digits-worker-0", "digits-worker-1"
POLICY = "digits-ray"


def spec(**run_policy: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}},
            "workers": {"replicas": 2, "minReplicas": 1},
            "output": {"uri": "s3://models/digits"},
            "runPolicy": run_policy,
        }
    )


def pod(name: str, phase: str = "Running", attempt: int = 1, **kwargs: Any) -> PodView:
    role = "head" if name.endswith("head") else "worker"
    index = None if role == "head" else int(name.rsplit("-", 1)[1])
    return PodView(name=name, role=role, attempt=attempt, index=index, phase=phase, ready=phase == "Running", **kwargs)


def plan(
    status: TrainingJobStatus | None = None,
    pods: list[PodView] | None = None,
    job_spec: TrainingJobSpec | None = None,
    at: datetime.datetime = T0,
    progress: dict[str, Any] | None = None,
    error: str | None = None,
) -> Plan[TrainingJobStatus]:
    view = TrainingJobView(OWNER, 1, None if error else (job_spec or spec()), error, status or TrainingJobStatus())
    return plan_trainingjob(view, Observed(pods or [], progress), at, "image:test")  # type: ignore[arg-type]


def final(result: Plan[TrainingJobStatus]) -> TrainingJobStatus:
    return result.status_after or result.status


def cond(status: TrainingJobStatus, kind: str) -> tuple[str, str, str]:
    found = conditions.find(status.conditions, kind)
    assert found is not None, f"no {kind} condition"
    return found.status, found.reason, found.message


def created_names(result: Plan[TrainingJobStatus]) -> list[str]:
    return [a.name for a in result.actions if isinstance(a, Create)]


def deleted_names(result: Plan[TrainingJobStatus]) -> list[str]:
    return [a.name for a in result.actions if isinstance(a, Delete)]


def running_status() -> TrainingJobStatus:
    """A job whose attempt 1 is running with every pod up."""
    started = final(plan())
    return final(plan(started, [pod(HEAD), pod(W0), pod(W1)]))


def test_new_job_records_identity_before_creating_pods() -> None:
    result = plan()
    assert result.status.attempt == 1
    assert cond(result.status, "Created")[:2] == ("False", "CreatingPods")
    assert result.status.head_service == "digits-head.team-a.svc"
    assert created_names(result) == [POLICY, HEAD, HEAD, W0, W1]  # the NetworkPolicy, the Service, then the pods
    assert result.status_after is not None
    assert cond(result.status_after, "Created")[:2] == ("True", "PodsCreated")
    assert result.status_after.phase == "Starting"


def test_creation_resumed_after_restart_creates_only_missing_pods() -> None:
    interrupted = plan().status  # status written, operator died before every create
    result = plan(interrupted, [pod(HEAD, "Pending")])
    assert created_names(result) == [POLICY, HEAD, W0, W1]  # policy and Service (idempotent) + the missing workers
    assert final(result).worker_restarts == 0


def test_unschedulable_reason_is_the_running_condition_message() -> None:
    started = final(plan())
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    result = plan(started, [pod(HEAD, "Pending"), pod(W0, "Pending", unschedulable=message), pod(W1, "Pending")])
    status, reason, text = cond(result.status, "Running")
    assert (status, reason) == ("False", "Unschedulable") and message in text and W0 in text


def test_image_pull_error_is_reported() -> None:
    result = plan(final(plan()), [pod(HEAD, "Pending", waiting_reason="ImagePullBackOff"), pod(W0), pod(W1)])
    assert cond(result.status, "Running")[1] == "ImagePullBackOff"


def test_running_needs_head_and_min_replicas() -> None:
    started = final(plan())
    fewer = plan(started, [pod(HEAD), pod(W0), pod(W1, "Pending")])
    assert cond(fewer.status, "Running")[0] == "True"  # minReplicas is 1
    assert fewer.status.phase == "Running" and fewer.status.attempt_running_time == rfc3339(T0)
    assert fewer.status.workers.ready == 1
    assert [e.reason for e in fewer.events] == ["Running"]
    head_pending = plan(started, [pod(HEAD, "Pending"), pod(W0), pod(W1)])
    assert cond(head_pending.status, "Running")[1] == "HeadStarting"


def test_steady_state_is_idempotent() -> None:
    status = running_status()
    again = plan(status, [pod(HEAD), pod(W0), pod(W1)])
    assert again.status == status and again.actions == [] and again.events == []


def test_lost_worker_is_recreated_and_counted_once() -> None:
    status = running_status()
    failed = plan(status, [pod(HEAD), pod(W0, "Failed", exit_code=137, reason="OOMKilled"), pod(W1)])
    assert deleted_names(failed) == [W0] and failed.status.worker_restarts == 0
    assert "OOMKilled" in failed.events[0].message
    gone = plan(failed.status, [pod(HEAD), pod(W1)])
    assert created_names(gone) == [W0] and gone.status.worker_restarts == 1
    assert gone.status.attempt == 1


def test_application_failure_is_charged_and_retried() -> None:
    status = running_status()
    message = json.dumps({"error": "loss became NaN"})
    result = plan(status, [pod(HEAD, "Failed", exit_code=1, message=message), pod(W0), pod(W1)])
    assert result.status.attempt == 2 and result.status.charged_failures == 1
    assert result.status.phase == "Restarting"
    assert cond(result.status, "Restarting")[:2] == ("True", "ApplicationError")
    assert "loss became NaN" in cond(result.status, "Restarting")[2]
    assert sorted(deleted_names(result)) == [HEAD, W0, W1]
    failure = result.status.failures[-1]
    assert (failure.attempt, failure.exit_code, failure.charged) == (1, 1, True)


def test_next_attempt_waits_for_old_pods_then_starts_with_new_attempt_number() -> None:
    retried = plan(running_status(), [pod(HEAD, "Failed", exit_code=1), pod(W0), pod(W1)]).status
    lingering = plan(retried, [pod(HEAD, "Failed", exit_code=1, deleting=True)])
    assert created_names(lingering) == [] and lingering.status.phase == "Restarting"
    backing_off = plan(lingering.status, [], at=T0 + datetime.timedelta(seconds=4))
    assert created_names(backing_off) == [] and backing_off.status.phase == "Restarting"
    assert cond(backing_off.status, "Created")[:2] == ("False", "BackoffBeforeRestart")
    assert backing_off.requeue_after == 6, "the first retry waits 10 s, like a Kubernetes Job's"
    fresh = plan(lingering.status, [], at=T0 + datetime.timedelta(seconds=10))
    assert created_names(fresh) == [POLICY, HEAD, HEAD, W0, W1]
    creates = [a for a in fresh.actions if isinstance(a, Create) and a.manifest["kind"] == "Pod"]
    assert all(c.manifest["metadata"]["labels"]["maas.dev/attempt"] == "2" for c in creates)
    running = plan(final(fresh), [pod(HEAD, attempt=2), pod(W0, attempt=2), pod(W1, attempt=2)])
    assert cond(running.status, "Restarting")[:2] == ("False", "Recovered")


def test_backoff_limit_ends_the_run() -> None:
    status = running_status().model_copy(update={"charged_failures": 3})
    result = plan(status, [pod(HEAD, "Failed", exit_code=1), pod(W0), pod(W1, "Succeeded")])
    assert result.status.phase == "Failed"
    assert cond(result.status, "Failed")[1] == "BackoffLimitExceeded"
    assert sorted(deleted_names(result)) == [W0]  # cleanPodPolicy Running keeps finished pods


def test_platform_and_infrastructure_failures_are_free() -> None:
    status = running_status()
    cases = [
        pod(HEAD, "Failed", exit_code=137, disruption="PreemptionByScheduler"),
        pod(HEAD, "Failed", exit_code=137, reason="Evicted"),
        pod(HEAD, "Failed", exit_code=75, message='{"error": "workers never joined"}'),
    ]
    for head in cases:
        result = plan(status, [head, pod(W0), pod(W1)])
        assert result.status.attempt == 2 and result.status.charged_failures == 0, head
    oom = plan(status, [pod(HEAD, "Failed", exit_code=137, reason="OOMKilled"), pod(W0), pod(W1)])
    assert oom.status.charged_failures == 1 and oom.status.failures[-1].reason == "OOMKilled"


def test_head_lost_or_deleted_by_someone_else_retries_free() -> None:
    status = running_status()
    lost = plan(status, [pod(W0), pod(W1)])
    assert lost.status.failures[-1].reason == "HeadPodLost" and lost.status.charged_failures == 0
    deleted = plan(status, [pod(HEAD, deleting=True), pod(W0), pod(W1)])
    assert deleted.status.failures[-1].reason == "HeadPodDeleted"


def test_configuration_error_is_permanent() -> None:
    message = json.dumps({"error": "unknown model 'resnet'"})
    result = plan(running_status(), [pod(HEAD, "Failed", exit_code=64, message=message), pod(W0), pod(W1)])
    assert result.status.phase == "Failed"
    _, reason, text = cond(result.status, "Failed")
    assert reason == "ConfigurationError" and "unknown model" in text and "not retried" in text


def test_success_copies_the_model_and_cleans_up() -> None:
    model = {"uri": "s3://models/digits/v1", "sha256": "c" * 64, "metrics": {"val_accuracy": 0.97}}
    head = pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": model}))
    result = plan(running_status(), [head, pod(W0), pod(W1, "Succeeded")])
    assert result.status.phase == "Succeeded" and result.status.completion_time == rfc3339(T0)
    assert result.status.model is not None and result.status.model.uri == model["uri"]
    assert result.status.model.metrics == {"val_accuracy": 0.97}
    assert deleted_names(result) == [W0]
    assert "Succeeded" in [e.reason for e in result.events]


def test_clean_pod_policies_and_ttl() -> None:
    head = pod(HEAD, "Succeeded", exit_code=0, message="{}")
    for policy, expected in (("All", [HEAD, W0]), ("None", []), ("Running", [W0])):
        job_spec = spec(cleanPodPolicy=policy, ttlSecondsAfterFinished=60)
        result = plan(running_status(), [head, pod(W0)], job_spec)
        assert sorted(deleted_names(result)) == expected, policy
        assert not any(isinstance(a, DeleteOwner) for a in result.actions)
    done = plan(running_status(), [head], spec(ttlSecondsAfterFinished=60)).status
    later = plan(done, [head], spec(ttlSecondsAfterFinished=60), at=T0 + datetime.timedelta(seconds=61))
    assert any(isinstance(a, DeleteOwner) for a in later.actions)
    assert later.events == []  # a finished job raises no new events


def test_no_model_reported_is_a_warning() -> None:
    result = plan(running_status(), [pod(HEAD, "Succeeded", exit_code=0)])
    assert result.status.phase == "Succeeded" and result.status.model is None
    assert any(e.reason == "NoModelReported" and e.type == "Warning" for e in result.events)


def test_active_deadline() -> None:
    job_spec = spec(activeDeadlineSeconds=30)
    status = final(plan(job_spec=job_spec))
    later = T0 + datetime.timedelta(seconds=31)
    result = plan(status, [pod(HEAD), pod(W0), pod(W1)], job_spec, at=later)
    assert cond(result.status, "Failed")[1] == "DeadlineExceeded"
    assert sorted(deleted_names(result)) == [HEAD, W0, W1]


def test_startup_deadline_explains_what_was_waited_for() -> None:
    job_spec = spec(startupDeadlineSeconds=60)
    pending = [pod(HEAD, "Pending", unschedulable="0/3 nodes are available: 3 Insufficient memory.")]
    status = plan(final(plan(job_spec=job_spec)), pending, job_spec).status
    result = plan(status, pending, job_spec, at=T0 + datetime.timedelta(seconds=61))
    _, reason, message = cond(result.status, "Failed")
    assert reason == "StartupDeadlineExceeded" and "Insufficient memory" in message
    # Once the attempt ran, the startup deadline no longer applies.
    running = plan(final(plan(job_spec=job_spec)), [pod(HEAD), pod(W0), pod(W1)], job_spec).status
    later = plan(
        running, [pod(HEAD), pod(W0, "Pending"), pod(W1, "Pending")], job_spec, at=T0 + datetime.timedelta(hours=1)
    )
    assert later.status.phase != "Failed"


def test_suspend_and_resume_without_charge() -> None:
    suspended = plan(running_status(), [pod(HEAD), pod(W0), pod(W1)], spec(suspend=True))
    assert suspended.status.phase == "Suspended" and sorted(deleted_names(suspended)) == [HEAD, W0, W1]
    assert cond(suspended.status, "Suspended")[0] == "True"
    resumed = plan(suspended.status, [], spec(suspend=False))
    assert resumed.status.attempt == 2 and resumed.status.charged_failures == 0
    assert created_names(resumed) == [POLICY, HEAD, HEAD, W0, W1]
    assert cond(resumed.status, "Suspended")[1] == "Resumed"


def test_created_suspended_starts_at_attempt_one_on_resume() -> None:
    queued = plan(job_spec=spec(suspend=True))
    assert queued.status.attempt == 0 and queued.status.phase == "Suspended" and queued.actions == []
    admitted = plan(queued.status, [], spec(suspend=False))
    assert admitted.status.attempt == 1 and created_names(admitted)


def test_invalid_spec_then_fixed() -> None:
    rejected = plan(error="spec.workers: minReplicas (3) must be less than or equal to replicas (2)")
    assert rejected.status.phase == "Failed" and rejected.actions == []
    assert cond(rejected.status, "Failed")[1] == "InvalidSpec"
    assert [e.reason for e in rejected.events] == ["InvalidSpec"]
    repeated = plan(rejected.status, error="spec.workers: minReplicas (3) must be less than or equal to replicas (2)")
    assert repeated.events == []
    fixed = plan(rejected.status)
    assert fixed.status.attempt == 1 and created_names(fixed)


def test_progress_summary_and_stall() -> None:
    job_spec = spec(stallTimeoutSeconds=60)
    status = plan(final(plan(job_spec=job_spec)), [pod(HEAD), pod(W0), pod(W1)], job_spec).status
    report = {
        "attempt": 1,
        "epoch": 2,
        "step": 250,
        "totalSteps": 1000,
        "metrics": {"loss": 0.5},
        "heartbeatTime": rfc3339(T0),
    }
    updated = plan(status, [pod(HEAD), pod(W0), pod(W1)], job_spec, progress=report).status
    assert updated.progress is not None and updated.progress.summary == "25% (step 250/1000)"
    assert cond(updated, "Stalled")[0] == "False"
    old_attempt = plan(updated, [pod(HEAD), pod(W0), pod(W1)], job_spec, progress={**report, "attempt": 0, "step": 1})
    assert old_attempt.status.progress == updated.progress
    silent = plan(updated, [pod(HEAD), pod(W0), pod(W1)], job_spec, at=T0 + datetime.timedelta(seconds=61))
    assert cond(silent.status, "Stalled")[:2] == ("True", "NoHeartbeat")


def test_failure_history_is_bounded() -> None:
    status = final(plan())  # attempt 1's pods exist
    job = spec(backoffLimit=100, maxPlatformRetries=100, startupDeadlineSeconds=86400)
    for n in range(14):
        at = T0 + datetime.timedelta(hours=n)  # well past each backoff
        heads = [pod(HEAD, "Failed", attempt=status.attempt, exit_code=75)]
        status = plan(status, heads, job, at=at).status
        status = final(plan(status, [], job, at=at + datetime.timedelta(minutes=30)))  # the next attempt's pods
    assert len(status.failures) == 10 and status.failures[-1].attempt == 14
    assert {f.reason for f in status.failures} == {"InfrastructureError"}
    assert status.attempt == 15 and status.charged_failures == 0


def test_an_edit_of_an_immutable_field_never_reaches_the_running_attempt() -> None:
    """Got past admission (an older CRD): the attempt keeps its spec; runPolicy edits still apply."""
    running = running_status()
    built_from = json.dumps(spec().to_wire())
    head = pod(HEAD, trainingjob_spec=built_from)
    edited = TrainingJobSpec.model_validate(
        {**spec().to_wire(), "image": "registry.example/other:2", "runPolicy": {"stallTimeoutSeconds": 600}}
    )
    result = plan(running, [head, pod(W0)], job_spec=edited)  # worker 1 is lost meanwhile
    status, reason, message = cond(final(result), "SpecAccepted")
    assert (status, reason) == ("False", "ImmutableFieldChanged")
    assert "image" in message and "immutable" in message
    assert [e.reason for e in result.events + result.events_after] == ["ImmutableFieldChanged", "WorkerRestarted"]
    recreated = next(a.manifest for a in result.actions if isinstance(a, Create))
    assert recreated["spec"]["containers"][0]["image"] == "image:test"  # built from the spec the run started with
    env = {e["name"]: e.get("value") for e in recreated["spec"]["containers"][0]["env"]}
    assert json.loads(env["MAAS_TRAININGJOB"]).get("image") is None
    assert json.loads(env["MAAS_TRAININGJOB"])["runPolicy"]["stallTimeoutSeconds"] == 600

    again = plan(final(result), [head, pod(W0), pod(W1)], job_spec=edited)
    assert not [e for e in again.events if e.reason == "ImmutableFieldChanged"]  # one Event per refusal
    reverted = plan(final(again), [head, pod(W0), pod(W1)])
    assert cond(final(reverted), "SpecAccepted")[:2] == ("True", "Accepted")
