"""Restarting the operator (SIGTERM, SIGKILL) under running TrainingJobs and ModelServices
changes nothing: no attempt restarts, no pod is deleted, every head that exited 0 is harvested.

A restarted operator must not plan from a partial view (a TrainingJob listed before its pods
looks as if its head were lost); see handlers/runtime.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_modelservice_operator import V1, modelservice, roll_out
from tests.operator.test_trainingjob_operator import trainingjob

pytestmark = pytest.mark.slow

JOBS = [f"job{n}" for n in range(8)]
SERVICES = ["serve0", "serve1"]


def pods_of(job: str) -> list[str]:
    return [f"{job}-head", f"{job}-worker-0", f"{job}-worker-1"]


async def statuses(cluster: Cluster, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o.get("status") or {} for o in await cluster.list(kind)}


async def all_in_phase(cluster: Cluster, kind: str, names: list[str], phase: str) -> bool:
    found = await statuses(cluster, kind)
    return all(found.get(name, {}).get("phase") == phase for name in names)


def model_of(job: str) -> dict[str, Any]:
    return {"uri": f"s3://models/{job}", "sha256": f"{JOBS.index(job):064d}", "metrics": {}}


async def finish(cluster: Cluster, job: str) -> None:
    message = json.dumps({"model": model_of(job)})
    await cluster.set_pod(f"{job}-head", "Succeeded", exit_code=0, message=message)


async def test_restarts_under_a_burst_change_nothing(cluster: Cluster, operator: OperatorProcess) -> None:
    for job in JOBS:  # cleanPodPolicy None: a finished run deletes nothing either
        await cluster.create(trainingjob(job, runPolicy={"cleanPodPolicy": "None"}))
    for name in SERVICES:
        await cluster.create(modelservice(name))

    async def every_pod_created() -> bool:
        names = {p["metadata"]["name"] for p in await cluster.list("Pod")}
        return all(pod in names for job in JOBS for pod in pods_of(job))

    await wait_for(every_pod_created, timeout=40, what="the pods of every job")
    for job in JOBS:
        for pod in pods_of(job):
            await cluster.set_pod(pod, "Running")
    for name in SERVICES:
        await roll_out(cluster, name, V1["sha256"])
    await wait_for(lambda: all_in_phase(cluster, "TrainingJob", JOBS, "Running"), timeout=40, what="jobs Running")
    await wait_for(lambda: all_in_phase(cluster, "ModelService", SERVICES, "Ready"), timeout=40, what="Ready")
    deletes_before = len(cluster.requests("DELETE", "/pods/"))

    finished: list[str] = []
    for round_, kill in enumerate([False, True, False, True]):
        operator.stop(kill=kill)
        # Heads exit 0 while no operator runs, and right as the next one starts.
        job = JOBS[round_]
        await finish(cluster, job)
        finished.append(job)
        operator.start()
        await finish(cluster, JOBS[round_ + 4])
        finished.append(JOBS[round_ + 4])
        await wait_for(
            lambda: all_in_phase(cluster, "TrainingJob", finished, "Succeeded"),
            timeout=40,
            what=f"{finished} harvested",
        )

    found = await statuses(cluster, "TrainingJob")
    assert {name: status["attempt"] for name, status in found.items()} == dict.fromkeys(JOBS, 1), "no attempt restarted"
    assert all(not status.get("failures") for status in found.values())
    for job in finished:
        assert found[job]["model"] == model_of(job), f"{job}'s model was harvested"
    assert len(cluster.requests("DELETE", "/pods/")) == deletes_before, "no pod was deleted"
    services = await statuses(cluster, "ModelService")
    assert all(services[name]["phase"] == "Ready" for name in SERVICES)
    assert len(cluster.applies("/deployments/serve0")) == 1, "nothing was rewritten"
