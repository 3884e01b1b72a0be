"""The real operator's waits are bounded and named: pods stuck on a lost node, platform
failures, serving pods that cannot be created, and a TrainingJob's success seen at once."""

from __future__ import annotations

import json

import pytest

from maas_operator.builders.meta import LABEL_ATTEMPT
from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_modelservice_operator import V1, modelservice, roll_out, serving, wait_deployment
from tests.operator.test_modelservice_operator import condition as service_condition
from tests.operator.test_modelservice_operator import wait_status as wait_service
from tests.operator.test_trainingjob_operator import (
    HEAD,
    WORKERS,
    condition,
    start_running,
    trainingjob,
    wait_pods,
    wait_status,
)

pytestmark = pytest.mark.slow


async def test_a_pod_stuck_on_a_lost_node_is_named_then_force_deleted(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    await cluster.add_node("node-1", ready=False, unreachable=True)
    cluster.switches.lost_nodes = {"node-1"}
    await cluster.create(trainingjob())
    await wait_pods(cluster, [HEAD, *WORKERS])
    await cluster.patch("Pod", WORKERS[0], {"spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1}})
    await start_running(cluster)
    await cluster.set_pod(HEAD, "Failed", exit_code=137, disruption="PreemptionByScheduler")
    status = await wait_status(cluster, lambda s: condition(s, "Created").get("reason") == "PodTerminating", "named")
    message = condition(status, "Created")["message"]
    assert f"pod {WORKERS[0]} on node node-1 has been terminating for" in message and "unreachable" in message
    events = await wait_for(lambda: cluster.events("ForceDeleted"), what="Event ForceDeleted")
    assert WORKERS[0] in events[0]["message"] and events[0]["type"] == "Warning"
    forced = [r for r in cluster.requests("DELETE", f"/pods/{WORKERS[0]}") if r.data.get("gracePeriodSeconds") == 0]
    assert len(forced) == 1
    await wait_pods(cluster, [HEAD, *WORKERS], attempt=2)


async def test_platform_failures_end_after_max_platform_retries(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob(runPolicy={"maxPlatformRetries": 1}))
    await start_running(cluster)
    await cluster.set_pod(HEAD, "Failed", exit_code=75, message='{"error": "storage unreachable"}')
    await wait_pods(cluster, [HEAD, *WORKERS], attempt=2)
    await start_running(cluster, attempt=2)
    await cluster.set_pod(HEAD, "Failed", exit_code=75, message='{"error": "storage unreachable"}')
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "PlatformRetryLimitExceeded" and "storage unreachable" in failed["message"]
    assert [(f["attempt"], f["charged"]) for f in status["failures"]] == [(1, False), (2, False)]
    assert status["platformFailures"] == 2 and status["chargedFailures"] == 0


async def test_serving_pods_that_cannot_be_created_are_reported(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice())
    await serving(cluster, V1["sha256"])
    await cluster.patch("ModelService", "digits", {"spec": {"replicas": 4}})
    deployment = await wait_for(lambda: _scaled(cluster), what="the Deployment scaled to 4")
    quota = 'pods "digits-7d9-x" is forbidden: exceeded quota: compute, requested: cpu=1, used: cpu=2, limited: cpu=2'
    failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": quota}
    progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    await roll_out(cluster, replicas=2, updatedReplicas=2, availableReplicas=2, conditions=[progressing, failure])
    assert deployment["spec"]["progressDeadlineSeconds"] == 600
    status = await wait_service(cluster, lambda s: service_condition(s, "Degraded").get("reason") == "FailedCreate", "")
    assert quota in service_condition(status, "Degraded")["message"] and status["phase"] == "Degraded"
    assert service_condition(status, "Progressing")["reason"] == "FailedCreate"
    assert status["model"] == V1 and "failedModel" not in status, "not a failed rollout: no rollback"


async def _scaled(cluster: Cluster) -> dict[str, object] | None:
    deployment = await cluster.get("Deployment", "digits")
    return deployment if deployment is not None and deployment["spec"]["replicas"] == 4 else None


@pytest.mark.operator_env(MAAS_OPERATOR_RESYNC_SECONDS="300")
async def test_a_trainingjobs_success_is_served_on_its_event(cluster: Cluster, operator: OperatorProcess) -> None:
    # cleanPodPolicy None: the status write that says Succeeded is the job's last event.
    await cluster.create(trainingjob(runPolicy={"cleanPodPolicy": "None"}))
    await cluster.create(modelservice(model={"trainingJobRef": {"name": "digits"}}))
    await start_running(cluster)
    await wait_service(cluster, lambda s: service_condition(s, "ModelResolved").get("reason") is not None, "resolved")
    await cluster.set_pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": {**V1, "metrics": {}}}))
    # A resync is 5 minutes away: only the TrainingJob's watch event can bring this about.
    await wait_deployment(cluster, sha256=V1["sha256"])
    pods = await cluster.list("Pod")
    assert {p["metadata"]["labels"][LABEL_ATTEMPT] for p in pods} == {"1"}
