"""The real operator against the emulated API server, for ModelServices.

The test plays the Deployment controller (and the HPA) by patching Deployment status, and
the kubelet for the pods of the TrainingJobs a ModelService serves.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from maas_operator.builders.meta import REPLICAS_FIELD_MANAGER
from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_trainingjob_operator import HEAD, WORKERS, start_running, trainingjob, wait_pods
from tests.operator.validation import assert_valid_objects

pytestmark = pytest.mark.slow

V1 = {"uri": "s3://models/digits/v1", "sha256": "1" * 64}
V2 = {"uri": "s3://models/digits/v2", "sha256": "2" * 64}
V3 = {"uri": "s3://models/digits/v3", "sha256": "3" * 64}


def modelservice(name: str = "digits", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": dict(V1), "replicas": 2, "resources": {"cpu": "1", "memory": "1Gi"}}
    body.update(spec)
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name}, "spec": body}


async def status_of(cluster: Cluster, name: str = "digits") -> dict[str, Any]:
    service = await cluster.get("ModelService", name)
    return (service or {}).get("status") or {}


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), {})


async def wait_status(cluster: Cluster, check: Any, what: str, name: str = "digits", timeout: float = 20) -> Any:
    async def probe() -> dict[str, Any] | None:
        status = await status_of(cluster, name)
        return status if status and check(status) else None

    return await wait_for(probe, timeout=timeout, what=what)


def template_sha(deployment: dict[str, Any]) -> str | None:
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations.get("maas.dev/model-sha256")


async def wait_deployment(cluster: Cluster, name: str = "digits", sha256: str | None = None) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        deployment = await cluster.get("Deployment", name)
        if deployment is None or (sha256 is not None and template_sha(deployment) != sha256):
            return None
        return deployment

    return await wait_for(probe, what=f"Deployment {name} serving {sha256}")


async def roll_out(cluster: Cluster, name: str = "digits", sha256: str | None = None, **status: Any) -> None:
    """Play the Deployment controller: every pod of the current template available."""
    deployment = await wait_deployment(cluster, name, sha256)
    replicas = deployment["spec"].get("replicas", 1)
    report = {
        "observedGeneration": deployment["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
    }
    report.update(status)
    await cluster.patch("Deployment", name, {"status": report}, "status")


async def serving(cluster: Cluster, sha256: str, name: str = "digits") -> dict[str, Any]:
    await roll_out(cluster, sha256=sha256)
    return await wait_status(
        cluster,
        lambda s: s.get("phase") == "Ready" and (s.get("model") or {}).get("sha256") == sha256,
        f"Ready serving {sha256[:4]}",
        name,
    )


def writes(cluster: Cluster, path_part: str = "") -> int:
    return sum(len(cluster.requests(method, path_part)) for method in ("POST", "PATCH", "PUT", "DELETE"))


async def test_create_serves_and_then_writes_nothing(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice())
    deployment = await wait_deployment(cluster, sha256=V1["sha256"])
    service = await wait_for(lambda: cluster.get("Service", "digits"), what="Service")
    budget = await wait_for(lambda: cluster.get("PodDisruptionBudget", "digits"), what="PodDisruptionBudget")
    assert_valid_objects([deployment, service, budget])
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    status = await wait_status(cluster, lambda s: s.get("phase") == "Progressing", "Progressing")
    assert status["url"] == "http://digits.team-a.svc" and status["model"] == V1

    status = await serving(cluster, V1["sha256"])
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    assert status["replicas"] == {"desired": 2, "ready": 2, "updated": 2, "available": 2}
    await wait_for(lambda: cluster.events("RolloutComplete"), what="Event RolloutComplete")
    await asyncio.sleep(1)
    before = writes(cluster)
    await asyncio.sleep(3)  # six resync periods
    assert writes(cluster) == before
    assert len(cluster.applies("/deployments/digits")) == 1, "one apply created the Deployment; nothing since"


async def test_autoscaling_leaves_replicas_to_the_hpa(cluster: Cluster, operator: OperatorProcess) -> None:
    autoscaling = {"minReplicas": 2, "maxReplicas": 6, "metric": "cpu", "target": 60}
    body = modelservice(autoscaling=autoscaling)
    body["spec"].pop("replicas")
    await cluster.create(body)
    hpa = await wait_for(lambda: cluster.get("HorizontalPodAutoscaler", "digits"), what="HPA")
    assert_valid_objects([hpa])
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert (await wait_deployment(cluster))["spec"]["replicas"] == 2
    await serving(cluster, V1["sha256"])

    # The HPA scales up; the operator must not touch the count.
    await cluster.patch("Deployment", "digits", {"spec": {"replicas": 5}})
    await roll_out(cluster)
    await wait_status(cluster, lambda s: s["replicas"]["desired"] == 5, "desired 5")
    deployment_writes = len(cluster.applies("/deployments/digits"))
    await asyncio.sleep(2)
    assert (await wait_deployment(cluster))["spec"]["replicas"] == 5
    assert len(cluster.applies("/deployments/digits")) == deployment_writes


async def test_model_change_rolls_out_and_a_failed_rollout_rolls_back(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    await cluster.create(modelservice())
    await serving(cluster, V1["sha256"])

    await cluster.patch("ModelService", "digits", {"spec": {"model": V2}})
    await wait_deployment(cluster, sha256=V2["sha256"])
    await roll_out(cluster, updatedReplicas=1, replicas=3, availableReplicas=2)
    status = await wait_status(cluster, lambda s: condition(s, "Progressing").get("status") == "True", "rolling")
    assert status["model"] == V2 and status["previousModel"] == V1
    await wait_for(lambda: cluster.events("RolloutStarted"), what="Event RolloutStarted")
    status = await serving(cluster, V2["sha256"])
    assert status["previousModel"] == V1

    # V3 never becomes available: the Deployment gives up, the operator returns to V2.
    await cluster.patch("ModelService", "digits", {"spec": {"model": V3}})
    await wait_deployment(cluster, sha256=V3["sha256"])
    deadline = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "digits-7d9" has timed out progressing.',
    }
    await roll_out(cluster, updatedReplicas=1, replicas=3, availableReplicas=2, conditions=[deadline])
    status = await wait_status(cluster, lambda s: condition(s, "RolledBack").get("status") == "True", "rolled back")
    assert status["model"] == V2 and status["failedModel"]["sha256"] == V3["sha256"]
    assert condition(status, "RolledBack")["reason"] == "ProgressDeadlineExceeded"
    assert "timed out" in condition(status, "RolledBack")["message"]
    await wait_deployment(cluster, sha256=V2["sha256"])
    await wait_for(lambda: cluster.events("RolledBack"), what="Event RolledBack")
    await serving(cluster, V2["sha256"])


async def test_canary_is_promoted_when_healthy(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice(replicas=4))
    await serving(cluster, V1["sha256"])
    canary = {"model": V2, "weight": 20, "autoPromoteAfterSeconds": 1}
    await cluster.patch("ModelService", "digits", {"spec": {"rollout": {"canary": canary}}})
    deployment = await wait_deployment(cluster, "digits-canary", V2["sha256"])
    assert deployment["spec"]["replicas"] == 1
    assert_valid_objects([deployment])
    await roll_out(cluster, "digits-canary")
    status = await wait_status(cluster, lambda s: (s.get("canary") or {}).get("phase") == "Promoted", "promoted")
    assert status["model"] == V2 and status["previousModel"] == V1
    await wait_deployment(cluster, sha256=V2["sha256"])
    await wait_for(lambda: _gone(cluster, "Deployment", "digits-canary"), what="canary removed")
    await wait_for(lambda: cluster.events("CanaryPromoted"), what="Event CanaryPromoted")


async def test_failing_canary_is_removed(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice())
    await serving(cluster, V1["sha256"])
    canary = {"model": V2, "weight": 50, "autoPromoteAfterSeconds": 60}
    await cluster.patch("ModelService", "digits", {"spec": {"rollout": {"canary": canary}}})
    await wait_deployment(cluster, "digits-canary", V2["sha256"])
    await cluster.create(crash_looping_pod(V2))
    status = await wait_status(cluster, lambda s: (s.get("canary") or {}).get("phase") == "Failed", "canary failed")
    assert status["canary"]["reason"] == "CrashLoopBackOff" and status["model"] == V1
    assert "sha256 mismatch" in status["canary"]["message"]
    await wait_for(lambda: _gone(cluster, "Deployment", "digits-canary"), what="canary removed")
    assert (await status_of(cluster))["phase"] == "Ready"


def crash_looping_pod(model: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "digits-canary-abc12",
            "labels": {
                "app.kubernetes.io/managed-by": "maas-operator",
                "maas.dev/modelservice": "digits",
                "maas.dev/track": "canary",
            },
            "annotations": {"maas.dev/model-uri": model["uri"], "maas.dev/model-sha256": model["sha256"]},
        },
        "spec": {"containers": [{"name": "server", "image": "serve"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"exitCode": 64, "message": "sha256 mismatch for model.pt"}},
                }
            ],
        },
    }


async def _gone(cluster: Cluster, kind: str, name: str) -> bool:
    return await cluster.get(kind, name) is None


async def succeed(cluster: Cluster, sha256: str) -> None:
    await start_running(cluster)
    report = {"model": {"uri": "s3://models/digits/run", "sha256": sha256, "metrics": {"val_accuracy": 0.97}}}
    await cluster.set_pod(HEAD, "Succeeded", exit_code=0, message=json.dumps(report))


async def test_trainingjob_ref_follows_the_job_through_retraining(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice(model={"trainingJobRef": {"name": "digits"}}))
    status = await wait_status(
        cluster, lambda s: condition(s, "ModelResolved").get("reason") == "TrainingJobNotFound", "not found"
    )
    assert status["phase"] == "Pending"

    await cluster.create(trainingjob())
    await start_running(cluster)
    await wait_status(
        cluster, lambda s: condition(s, "ModelResolved").get("reason") == "TrainingJobNotSucceeded", "not succeeded"
    )
    assert await cluster.get("Deployment", "digits") is None

    await cluster.set_pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": {**V1, "metrics": {}}}))
    status = await wait_status(cluster, lambda s: (s.get("model") or {}).get("sha256") == V1["sha256"], "model")
    assert status["model"]["trainingJob"]["name"] == "digits"
    await serving(cluster, V1["sha256"])

    # Retrain: delete and re-create the job. What serves keeps serving meanwhile.
    await cluster.delete("TrainingJob", "digits")
    for pod in await cluster.list("Pod"):
        await cluster.delete("Pod", pod["metadata"]["name"])  # garbage collection's part
    status = await wait_status(
        cluster, lambda s: condition(s, "ModelResolved").get("reason") == "TrainingJobDeleted", "job gone"
    )
    assert condition(status, "ModelResolved")["status"] == "True" and status["phase"] == "Ready"
    assert "keeps serving" in condition(status, "ModelResolved")["message"]
    await cluster.create(trainingjob())
    await wait_pods(cluster, [HEAD, *WORKERS])
    await succeed(cluster, V2["sha256"])
    await wait_deployment(cluster, sha256=V2["sha256"])
    status = await serving(cluster, V2["sha256"])
    assert status["previousModel"]["sha256"] == V1["sha256"]


async def test_failed_trainingjob_is_reported(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob())
    await cluster.create(modelservice(model={"trainingJobRef": {"name": "digits"}}))
    await start_running(cluster)
    await cluster.set_pod(HEAD, "Failed", exit_code=64, message='{"error": "unknown model resnet"}')
    status = await wait_status(
        cluster, lambda s: condition(s, "ModelResolved").get("reason") == "TrainingJobFailed", "job failed"
    )
    assert "unknown model resnet" in condition(status, "ModelResolved")["message"]
    assert await cluster.get("Deployment", "digits") is None


async def test_invalid_spec_gets_no_children(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice(replicas=2, autoscaling={"maxReplicas": 3}))
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed")
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert "set replicas or autoscaling, not both" in condition(status, "Ready")["message"]
    await wait_for(lambda: cluster.events("InvalidSpec"), what="Event InvalidSpec")
    await asyncio.sleep(1)
    assert await cluster.list("Deployment") == [] and await cluster.list("Service") == []


async def test_restart_mid_creation_makes_no_duplicates(cluster: Cluster, operator: OperatorProcess) -> None:
    hang = asyncio.Event()

    async def slow_create() -> None:
        await hang.wait()

    (
        cluster.emulator[
            lambda r: str(r.method).upper().endswith("PATCH") and "/services/" in str(r.url) and not hang.is_set()
        ]
        << slow_create
    )
    await cluster.create(modelservice())
    await wait_deployment(cluster)
    await wait_for(lambda: _requested(cluster, "/services/digits"), what="the Service create in flight")
    operator.stop(kill=True)
    hang.set()
    operator.start()
    await wait_for(lambda: cluster.get("PodDisruptionBudget", "digits"), what="PodDisruptionBudget")
    await serving(cluster, V1["sha256"])
    assert [d["metadata"]["name"] for d in await cluster.list("Deployment")] == ["digits"]
    assert len(await cluster.list("Service")) == 1


async def _requested(cluster: Cluster, path: str) -> bool:
    return bool(cluster.applies(path))


async def test_turning_autoscaling_on_keeps_the_replica_count(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(modelservice(replicas=3))
    await serving(cluster, V1["sha256"])
    autoscaling = {"minReplicas": 2, "maxReplicas": 6, "metric": "cpu"}
    await cluster.patch("ModelService", "digits", {"spec": {"replicas": None, "autoscaling": autoscaling}})
    await wait_for(lambda: cluster.get("HorizontalPodAutoscaler", "digits"), what="HPA")
    handovers = cluster.applies("/deployments/digits", REPLICAS_FIELD_MANAGER)
    assert [r.data["spec"] for r in handovers] == [{"replicas": 3}], "the count is handed over before the apply"
    deployment = await wait_for(lambda: _applied_without_replicas(cluster), what="the apply that leaves replicas out")
    assert deployment["spec"]["replicas"] == 3, "the API server kept the count the hand-over manager co-owns"


async def _applied_without_replicas(cluster: Cluster) -> dict[str, Any] | None:
    deployment = await cluster.get("Deployment", "digits")
    ours = cluster.applies("/deployments/digits")
    return deployment if ours and "replicas" not in ours[-1].data["spec"] else None
