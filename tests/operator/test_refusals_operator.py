"""The real operator when the API server refuses a child: 403 for a quota and an admission
webhook, 422 for an invalid edit. Nothing is silent, deadlines keep running, old pods keep serving."""

from __future__ import annotations

import asyncio

import pytest

from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_modelservice_operator import V1, modelservice, roll_out, serving
from tests.operator.test_modelservice_operator import condition as service_condition
from tests.operator.test_modelservice_operator import wait_status as wait_service
from tests.operator.test_trainingjob_operator import HEAD, WORKERS, condition, trainingjob, wait_status

pytestmark = pytest.mark.slow


def quota(pod: str) -> str:
    return f'pods "{pod}" is forbidden: exceeded quota: test-quota, requested: pods=1, used: pods=2'


async def test_a_quota_that_refuses_a_worker_ends_the_run_by_its_startup_deadline(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.switches.quota = {"pods": 2}
    await cluster.create(trainingjob(runPolicy={"startupDeadlineSeconds": 5}))
    status = await wait_status(cluster, lambda s: condition(s, "Running").get("reason") == "ChildRejected", "refused")
    # The pods are created at once: whichever comes third is refused.
    (refused,) = {HEAD, *WORKERS} - {p["metadata"]["name"] for p in await cluster.list("Pod")}
    assert condition(status, "Running")["message"].startswith(f"pod {refused}: {quota(refused)}")
    assert condition(status, "Created")["status"] == "False" and status["phase"] == "Pending"

    async def retried() -> bool:
        return len([r for r in cluster.requests("POST", "/pods") if r.data["metadata"]["name"] == refused]) >= 3

    await wait_for(retried, what="the refused create retried with backoff")
    refusals = await cluster.events("ChildRejected")
    assert len(refusals) == 1, "one Warning per distinct refusal, not one per retry"
    assert refusals[0]["type"] == "Warning" and quota(refused) in refusals[0]["message"]
    assert not await cluster.events("PodsCreated"), "no created Event for a write that failed"

    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed", timeout=20)
    failed = condition(status, "Failed")
    assert failed["reason"] == "StartupDeadlineExceeded" and quota(refused) in failed["message"]

    async def released() -> bool:
        return not await cluster.list("Pod")

    await wait_for(released, what="the pods it did start released")


async def test_a_refused_edit_is_not_reported_as_applied(cluster: Cluster, operator: OperatorProcess) -> None:
    """A policy webhook refuses the edited Deployment (invalid labels never get this far: the CRD
    and the operator refuse them at admission); the refusal path is the same for any 4xx."""
    await cluster.create(modelservice())
    await serving(cluster, V1["sha256"])
    cluster.switches.denials["Deployment", "digits"] = "the team label must name a cost center"
    await cluster.patch("ModelService", "digits", {"spec": {"labels": {"team": "serving"}}})
    status = await wait_service(cluster, lambda s: service_condition(s, "Ready").get("reason") == "ChildRejected", "")
    assert status["observedGeneration"] == 1, "generation 2 is not in effect"
    assert status["phase"] == "Degraded" and service_condition(status, "Degraded")["status"] == "True"
    message = service_condition(status, "Ready")["message"]
    assert message == (
        "generation 2 is not in effect: the API server refused deployment digits: admission webhook "
        '"policy.example.com" denied the request: the team label must name a cost center; '
        "the previous configuration keeps serving (2 pod(s) available)"
    )
    deployment = await cluster.get("Deployment", "digits")
    assert deployment is not None and "team" not in deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["status"]["availableReplicas"] == 2, "the old pods keep serving"
    await asyncio.sleep(2)  # a few retries
    assert len(await cluster.events("ChildRejected")) == 1

    cluster.switches.denials.clear()
    await cluster.patch("ModelService", "digits", {"spec": {"labels": {"team": "cc-1234"}}})
    await wait_for(lambda: _labelled(cluster), what="the next edit applied at once")
    await roll_out(cluster)
    status = await wait_service(cluster, lambda s: s.get("phase") == "Ready", "Ready again")
    assert status["observedGeneration"] == 3 and service_condition(status, "Degraded")["status"] == "False"


async def _labelled(cluster: Cluster) -> bool:
    deployment = await cluster.get("Deployment", "digits")
    return deployment is not None and deployment["spec"]["template"]["metadata"]["labels"].get("team") == "cc-1234"


async def test_a_webhook_denial_is_reported_and_retried(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.switches.denials["PodDisruptionBudget", "digits"] = "PodDisruptionBudgets need an approval label"
    await cluster.create(modelservice())
    await roll_out(cluster, sha256=V1["sha256"])
    status = await wait_service(
        cluster, lambda s: "keeps serving" in service_condition(s, "Ready").get("message", ""), "refusal reported"
    )
    message = service_condition(status, "Ready")["message"]
    assert service_condition(status, "Ready")["reason"] == "ChildRejected"
    assert "refused poddisruptionbudget digits: admission webhook" in message
    assert message.endswith(
        "denied the request: PodDisruptionBudgets need an approval label; "
        "the previous configuration keeps serving (2 pod(s) available)"
    )
    assert "observedGeneration" not in status, "no generation is fully in effect yet"
    assert await cluster.get("Service", "digits") is not None, "the other children were written"
    cluster.switches.denials.clear()
    await wait_for(lambda: cluster.get("PodDisruptionBudget", "digits"), what="the retried PodDisruptionBudget")
    status = await wait_service(cluster, lambda s: s.get("phase") == "Ready", "Ready")
    assert status["observedGeneration"] == 1


async def test_head_pod_never_reported_created_when_its_create_is_refused(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.switches.denials["Pod", HEAD] = "privileged pods are not allowed here"
    await cluster.create(trainingjob())
    status = await wait_status(cluster, lambda s: condition(s, "Created").get("reason") == "ChildRejected", "refused")
    assert "pod digits-head: admission webhook" in condition(status, "Created")["message"]
    assert sorted(p["metadata"]["name"] for p in await cluster.list("Pod")) == WORKERS
    cluster.switches.denials.clear()
    await wait_status(cluster, lambda s: condition(s, "Created").get("status") == "True", "created after all")
    await wait_for(lambda: cluster.events("PodsCreated"), what="Event PodsCreated")
