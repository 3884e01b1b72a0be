"""TrainingJob decisions about refused writes, bounded waits and harvesting, on inputs built by hand."""

from __future__ import annotations

import datetime
import json

from maas_operator.api.trainingjob import TrainingJobStatus
from maas_operator.status.attempts import Timing
from maas_operator.status.plan import Create, Delete, Plan, Refusal, fingerprint
from maas_operator.status.pods import NodeView, PodView
from maas_operator.status.trainingjob import Observed, TrainingJobView, plan_trainingjob
from tests.operator.test_trainingjob_status import (
    HEAD,
    OWNER,
    T0,
    W0,
    W1,
    cond,
    created_names,
    deleted_names,
    final,
    plan,
    pod,
    running_status,
    spec,
)

QUOTA = 'pods "digits-worker-1" is forbidden: exceeded quota: gpu, requested: requests.nvidia.com/gpu=1, used: ...'


def refusal(name: str = W1, kind: str = "Pod", message: str = QUOTA, attempts: int = 1) -> Refusal:
    return Refusal(kind, name, "create", 403, "Forbidden", message, fingerprint(name), T0, T0, attempts)


def observe(
    status: TrainingJobStatus,
    pods: list[PodView],
    refusals: list[Refusal] | None = None,
    nodes: dict[str, NodeView | None] | None = None,
    at: datetime.datetime = T0,
    **run_policy: object,
) -> Plan[TrainingJobStatus]:
    view = TrainingJobView(OWNER, 1, spec(**run_policy), None, status)
    observed = Observed(pods, None, {r.key: r for r in refusals or []}, nodes or {})
    return plan_trainingjob(view, observed, at, "image:test", Timing(force_delete_after_seconds=60))


# --- refused writes ----------------------------------------------------------------------------


def test_a_refused_pod_is_named_with_the_api_servers_words_and_nothing_claims_creation() -> None:
    started = plan().status
    refused = observe(started, [pod(HEAD, "Pending"), pod(W0, "Pending")], [refusal()])
    assert created_names(refused) == ["digits-ray", HEAD, W1], "the missing children are asked for again"
    status, reason, message = cond(refused.status, "Running")
    assert (status, reason) == ("False", "ChildRejected")
    assert message == f"pod {W1}: {QUOTA}"
    assert cond(refused.status, "Created")[:2] == ("False", "ChildRejected")
    assert refused.status_after is None and not refused.events_after, "no PodsCreated for a write that failed"
    assert not refused.events, "the executor posts the one Warning per distinct refusal"


def test_pods_that_cannot_all_be_created_end_by_the_startup_deadline_and_are_released() -> None:
    started = plan().status
    pods = [pod(HEAD, "Running"), pod(W0, "Running")]
    waiting = observe(started, pods, [refusal()], at=T0 + datetime.timedelta(seconds=599))
    assert waiting.status.phase == "Pending" and waiting.requeue_after == 1
    ended = observe(waiting.status, pods, [refusal()], at=T0 + datetime.timedelta(seconds=600))
    status, reason, message = cond(ended.status, "Failed")
    assert (status, reason) == ("True", "StartupDeadlineExceeded")
    assert message.endswith(f"startupDeadlineSeconds (600s): pod {W1}: {QUOTA}")
    assert sorted(deleted_names(ended)) == [HEAD, W0], "the pods it did start are released"


def test_a_refused_worker_replacement_is_counted_once_and_reported() -> None:
    running = running_status()
    first = plan(running, [pod(HEAD), pod(W0)])
    assert created_names(first) == [W1] and final(first).worker_restarts == 1
    again = observe(final(first), [pod(HEAD), pod(W0)], [refusal()])
    assert created_names(again) == [W1] and again.status.worker_restarts == 1 and not again.events_after
    status, reason, message = cond(again.status, "Running")
    assert (status, reason) == ("True", "Running"), "minReplicas (1) still run: the attempt goes on"
    assert f"the API server refuses pod {W1}: {QUOTA}" in message


def test_a_refused_delete_of_the_last_attempt_is_reported() -> None:
    retried = plan(running_status(), [pod(HEAD, "Failed", exit_code=1), pod(W0), pod(W1)]).status
    forbidden = refusal(W0, message='pods "digits-worker-0" is forbidden: User cannot delete pods')
    blocked = observe(retried, [pod(W0)], [forbidden])
    assert deleted_names(blocked) == [W0]
    status, reason, message = cond(blocked.status, "Created")
    assert (status, reason) == ("False", "ChildRejected") and "cannot delete the pods of attempt 1" in message


# --- harvesting --------------------------------------------------------------------------------


def test_a_head_that_exited_0_is_harvested_whatever_else_changed() -> None:
    model = {"uri": "s3://models/digits/v1", "sha256": "ab" * 32}
    done = pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": model}))
    running = running_status()
    late = observe(running, [done, pod(W0)], at=T0 + datetime.timedelta(days=2), activeDeadlineSeconds=60)
    assert late.status.phase == "Succeeded" and late.status.model is not None
    suspended = observe(running, [done], suspend=True)
    assert suspended.status.phase == "Succeeded"
    superseded = observe(running.model_copy(update={"attempt": 2}), [done])
    assert superseded.status.phase == "Succeeded" and "attempt 1 finished" in cond(superseded.status, "Succeeded")[2]


# --- platform failures are bounded too -----------------------------------------------------------


def test_platform_failures_end_the_run_after_max_platform_retries() -> None:
    status = running_status().model_copy(update={"platform_failures": 2})
    evicted = [pod(HEAD, "Failed", exit_code=137, disruption="EvictionByEvictionAPI"), pod(W0), pod(W1)]
    result = observe(status, evicted, maxPlatformRetries=2)
    assert result.status.phase == "Failed" and result.status.platform_failures == 3
    _, reason, message = cond(result.status, "Failed")
    assert reason == "PlatformRetryLimitExceeded" and "more than runPolicy.maxPlatformRetries (2)" in message
    assert "EvictionByEvictionAPI" in message and result.status.failures[-1].charged is False
    retried = observe(running_status(), evicted, maxPlatformRetries=2)
    assert retried.status.attempt == 2 and "platform failure 1/2" in cond(retried.status, "Restarting")[2]


def test_the_backoff_between_attempts_doubles() -> None:
    status = running_status().model_copy(update={"charged_failures": 1})
    retried = plan(status, [pod(HEAD, "Failed", exit_code=1), pod(W0), pod(W1)]).status
    waiting = plan(retried, [], at=T0 + datetime.timedelta(seconds=19))
    assert not created_names(waiting) and "backoff 20s after 2 failed attempt(s)" in cond(waiting.status, "Created")[2]
    assert created_names(plan(retried, [], at=T0 + datetime.timedelta(seconds=20)))


# --- pods stuck terminating ----------------------------------------------------------------------


def stuck(name: str, node: str | None = "node-3", gone_for: float = 90) -> PodView:
    """A pod of attempt 1 whose deletion (grace 30 s) was requested `gone_for` seconds before T0."""
    ends = T0 - datetime.timedelta(seconds=gone_for - 30)
    return pod(name, attempt=1, deleting=True, node=node, deletion_timestamp=ends.isoformat(), grace_seconds=30)


def restarting() -> TrainingJobStatus:
    return plan(running_status(), [pod(HEAD, "Failed", exit_code=1), pod(W0), pod(W1)]).status


LOST = NodeView("node-3", None, "Kubelet stopped posting node status.", unreachable=True)


def test_a_pod_stuck_terminating_is_named_with_its_node_and_wait() -> None:
    result = observe(restarting(), [stuck(W0, gone_for=60)], nodes={"node-3": LOST})
    status, reason, message = cond(result.status, "Created")
    assert (status, reason) == ("False", "PodTerminating")
    assert f"pod {W0} on node node-3 has been terminating for 60s (node Unknown, unreachable" in message
    assert not result.actions and result.requeue_after == 30, "force-deleted 60 s after its 30 s grace"


def test_a_pod_on_a_lost_node_is_force_deleted_after_the_bound() -> None:
    result = observe(restarting(), [stuck(W0, gone_for=90)], nodes={"node-3": LOST})
    assert result.actions == [Delete("v1", "Pod", W0, grace_period_seconds=0)]
    assert [e.reason for e in result.events_after] == ["ForceDeleted"]
    assert "node-3" in result.events_after[0].message and "attempt 2 can start" in result.events_after[0].message


def test_a_pod_on_a_live_or_unreadable_node_is_never_force_deleted() -> None:
    alive = NodeView("node-3", True)
    for nodes in ({"node-3": alive}, {"node-3": None}, {}):
        result = observe(restarting(), [stuck(W0, gone_for=600)], nodes=nodes)
        assert not [a for a in result.actions if isinstance(a, Delete)], nodes
        assert cond(result.status, "Created")[1] == "PodTerminating"
    unscheduled = observe(restarting(), [stuck(W0, node=None, gone_for=90)])
    assert unscheduled.actions == [Delete("v1", "Pod", W0, grace_period_seconds=0)]


def test_creates_wait_for_the_forced_delete() -> None:
    result = observe(restarting(), [stuck(W0, gone_for=90)], nodes={"node-3": LOST})
    assert not [a for a in result.actions if isinstance(a, Create)]
