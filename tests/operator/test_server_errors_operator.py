"""The real operator when the API server keeps failing a child's write with a 500, as it answers a
Service create once the cluster's Service IP range is full: the condition names the child and
quotes the API server, nothing reads Ready or Running, and the write is retried with a growing
backoff that no resync shortens (the tests' resync period is 0.5 s)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_modelservice_operator import V1, modelservice, roll_out
from tests.operator.test_modelservice_operator import condition as service_condition
from tests.operator.test_modelservice_operator import wait_status as wait_service
from tests.operator.test_trainingjob_operator import HEAD, WORKERS, condition, trainingjob, wait_status

pytestmark = pytest.mark.slow

RANGE_FULL = "failed to allocate a serviceIP: range is full"
MESSAGE = f"Internal error occurred: {RANGE_FULL}"
WINDOW_SECONDS = 4.0
"""Eight resync periods; with a backoff of 1 s, 2 s, 4 s at most four attempts fit in it."""


def writes_of(cluster: Cluster, path: str) -> list[Any]:
    """Creates and applies whose URL names the object (a create's URL does not: its body does)."""
    name = path.rsplit("/", 1)[1]
    collection = path.rsplit("/", 1)[0]
    return [
        request
        for request in cluster.requests()
        if str(request.method).upper().endswith(("POST", "PATCH"))
        and (path in str(request.url) or (collection in str(request.url) and _named(request, name)))
        and "/status" not in str(request.url)
    ]


def _named(request: Any, name: str) -> bool:
    return isinstance(request.data, dict) and (request.data.get("metadata") or {}).get("name") == name


async def test_a_service_the_api_server_cannot_allocate_is_reported_and_retried_with_backoff(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.switches.server_errors["Service", "digits"] = RANGE_FULL
    await cluster.create(modelservice())
    await roll_out(cluster, sha256=V1["sha256"])  # the Deployment is created and serves
    status = await wait_service(
        cluster, lambda s: service_condition(s, "Ready").get("reason") == "ChildRejected", "the failure reported"
    )
    message = service_condition(status, "Ready")["message"]
    assert f"the API server refused service digits: {MESSAGE}" in message
    assert status["phase"] == "Degraded" and service_condition(status, "Degraded")["status"] == "True"
    assert await cluster.get("PodDisruptionBudget", "digits") is not None, "the other children were written"

    before = len(writes_of(cluster, "/services/digits"))
    await asyncio.sleep(WINDOW_SECONDS)
    retries = len(writes_of(cluster, "/services/digits")) - before
    assert 1 <= retries <= 4, f"{retries} writes in {WINDOW_SECONDS}s: the backoff grows, the resync honours it"
    (failure,) = await cluster.events("ChildRejected")  # one Warning, not one per retry
    assert failure["message"] == f"cannot write service digits (500 InternalError): {MESSAGE}"
    phases = [r.data["status"].get("phase") for r in cluster.requests("PATCH", "/modelservices/digits/status")]
    assert "Ready" not in phases, "never Ready while its Service cannot be written"

    cluster.switches.server_errors.clear()  # an IP was freed
    await wait_for(lambda: cluster.get("Service", "digits"), timeout=30, what="the Service created on a retry")
    status = await wait_service(cluster, lambda s: s.get("phase") == "Ready", "Ready", timeout=30)
    assert service_condition(status, "Degraded")["status"] == "False"


async def test_a_head_service_that_keeps_failing_keeps_the_attempt_from_running(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.switches.server_errors["Service", HEAD] = RANGE_FULL
    await cluster.create(trainingjob())
    status = await wait_status(cluster, lambda s: condition(s, "Created").get("reason") == "ChildRejected", "failed")
    assert f"service {HEAD}: {MESSAGE}" in condition(status, "Created")["message"]
    await wait_for(lambda: _pods(cluster, [HEAD, *WORKERS]), what="the pods created beside the failing Service")
    for name in [HEAD, *WORKERS]:  # the kubelet runs them: still no Running without the head's Service
        await cluster.set_pod(name, "Running")

    policies = len(writes_of(cluster, "/networkpolicies/digits-ray"))
    before = len(writes_of(cluster, f"/services/{HEAD}"))
    await asyncio.sleep(WINDOW_SECONDS)
    retries = len(writes_of(cluster, f"/services/{HEAD}")) - before
    assert 1 <= retries <= 4, f"{retries} creates in {WINDOW_SECONDS}s: the backoff grows, the resync honours it"
    assert len(writes_of(cluster, "/networkpolicies/digits-ray")) == policies, "no repeated create of what exists"
    status = await wait_status(cluster, lambda s: True, "status")
    assert condition(status, "Created")["status"] == "False" and condition(status, "Running")["status"] == "False"
    assert status["phase"] != "Running"

    cluster.switches.server_errors.clear()
    await wait_status(cluster, lambda s: condition(s, "Running").get("status") == "True", "Running", timeout=30)
    assert await cluster.get("Service", HEAD) is not None


async def _pods(cluster: Cluster, names: list[str]) -> bool:
    return sorted(p["metadata"]["name"] for p in await cluster.list("Pod")) == sorted(names)
