"""Two real operator processes with leader election against the emulated API server.

Each replica talks to the emulator with its own token, so every request says who sent it. The
Lease timings are shortened (3 s / 2 s / 0.5 s instead of client-go's 15 / 10 / 2) so that a
killed leader is replaced within seconds; the rules are the same.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest

from tests.operator.conftest import ProgressServer
from tests.operator.emulator import Cluster, OperatorProcess, wait_for, write_kubeconfig
from tests.operator.test_modelservice_operator import V1, modelservice, roll_out
from tests.operator.test_restart_operator import all_in_phase, pods_of, statuses
from tests.operator.test_trainingjob_operator import trainingjob

pytestmark = pytest.mark.slow

LEASE_NAMESPACE = "maas-system"
LEASE = "maas-operator"
REPLICAS = ("operator-a", "operator-b")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replica(OperatorProcess):
    """One operator replica: its identity is also its API token; /healthz and /metrics on free ports."""

    def __init__(self, name: str, cluster: Cluster, directory: pathlib.Path, progress: ProgressServer) -> None:
        self.name = name
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {
            "MAAS_OPERATOR_LEADER_ELECTION": "true",
            "MAAS_OPERATOR_LEADER_ELECTION_NAMESPACE": LEASE_NAMESPACE,
            "MAAS_OPERATOR_LEADER_ELECTION_IDENTITY": name,
            "MAAS_OPERATOR_LEADER_ELECTION_LEASE_DURATION_SECONDS": "3",
            "MAAS_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "2",
            "MAAS_OPERATOR_LEADER_ELECTION_RETRY_PERIOD_SECONDS": "0.5",
            "MAAS_OPERATOR_PROGRESS_URL_TEMPLATE": progress.url_template,
            "MAAS_OPERATOR_HEALTH_PORT": str(self.health_port),
            "MAAS_OPERATOR_METRICS_PORT": str(self.metrics_port),
        }
        super().__init__(write_kubeconfig(cluster.url, directory, token=name), directory / f"{name}.log", env)

    async def terminate(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) and wait for the exit, while the emulator on this event loop keeps serving."""
        await asyncio.to_thread(self.stop, kill)

    async def get(self, session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()

    async def healthz(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            code, text = await self.get(session, self.health_port, "/healthz")
        except aiohttp.ClientError:
            return None
        return json.loads(text) if code == 200 else None

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float | None:
        _, text = await self.get(session, self.metrics_port, "/metrics")
        values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ") or line == name]
        return float(values[0]) if values else None

    async def exports(self, session: aiohttp.ClientSession, prefix: str) -> bool:
        _, text = await self.get(session, self.metrics_port, "/metrics")
        return any(line.startswith(prefix) for line in text.splitlines())


@pytest.fixture
async def replicas(
    cluster: Cluster, progress_server: ProgressServer, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, Replica]]:
    found = {name: Replica(name, cluster, tmp_path, progress_server) for name in REPLICAS}
    yield found
    for replica in found.values():
        await replica.terminate()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for replica in found.values():
            print(f"---- {replica.name} log (tail) ----")
            print(replica.logs()[-15000:])


def sender(request: Any) -> str:
    return str(request.headers.get("Authorization", "")).removeprefix("Bearer ")


def is_write(request: Any) -> bool:
    return not str(request.method).upper().endswith("GET")


def is_lease(request: Any) -> bool:
    return "/leases" in str(request.url)


def writes(cluster: Cluster, replica: str, leases: bool = True) -> list[Any]:
    """Every request of `replica` that is not a read, in the order the API server received them."""
    return [r for r in cluster.requests() if sender(r) == replica and is_write(r) and (leases or not is_lease(r))]


async def holder(cluster: Cluster) -> str:
    lease = await cluster.get("Lease", LEASE, LEASE_NAMESPACE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


async def held_by(cluster: Cluster, names: tuple[str, ...]) -> str | None:
    found = await holder(cluster)
    return found if found in names else None


async def test_a_follower_watches_writes_nothing_and_takes_over_without_relisting(
    cluster: Cluster, replicas: dict[str, Replica]
) -> None:
    a, b = replicas["operator-a"], replicas["operator-b"]
    a.start()
    await wait_for(lambda: held_by(cluster, (a.name,)), what="operator-a leading")
    b.start()
    async with aiohttp.ClientSession() as session:
        assert await wait_for(lambda: b.healthz(session), what="operator-b healthy") == {"leader": False}
        await cluster.create(trainingjob("job", runPolicy={"cleanPodPolicy": "None"}))
        await cluster.create(modelservice("serve"))

        async def pods_created() -> bool:
            return {p["metadata"]["name"] for p in await cluster.list("Pod")} >= set(pods_of("job"))

        await wait_for(pods_created, what="the job's pods")
        for pod in pods_of("job"):
            await cluster.set_pod(pod, "Running")
        await roll_out(cluster, "serve", V1["sha256"])
        await wait_for(lambda: all_in_phase(cluster, "TrainingJob", ["job"], "Running"), what="job Running")
        await wait_for(lambda: all_in_phase(cluster, "ModelService", ["serve"], "Ready"), what="serve Ready")

        assert writes(cluster, b.name) == [], "the follower sent no write at all, not even to the Lease"
        assert writes(cluster, a.name, leases=False), "the leader did the work"
        assert await a.metric(session, "maas_leader") == 1 and await b.metric(session, "maas_leader") == 0
        assert await b.metric(session, "maas_leader_transitions_total") == 0
        assert await a.exports(session, "maas_trainingjob_status_condition{")
        assert not await b.exports(session, "maas_trainingjob_status_condition{"), "per-object series: leader only"

        # The leader shuts down (SIGTERM): it releases the Lease and the follower takes over with
        # the view its watches kept: no relist, and nothing to rewrite for the objects in place.
        lists_before = [r for r in cluster.requests() if sender(r) == b.name and r.action == kmock.action.LIST]
        await a.terminate()
        release = [r for r in cluster.requests("PUT", "/leases/") if sender(r) == a.name][-1]
        assert release.data["spec"]["holderIdentity"] == "", "the leader released the Lease on its way out"
        assert await holder(cluster) in ("", b.name)
        await wait_for(lambda: held_by(cluster, (b.name,)), what="operator-b leading")
        taken_over = len(cluster.requests())
        await cluster.create(trainingjob("next"))
        await wait_for(lambda: _pods(cluster, "next"), what="the new leader creating next's pods")
        assert await wait_for(lambda: b.metric(session, "maas_leader"), what="maas_leader 1 on b") == 1
        assert await b.metric(session, "maas_leader_transitions_total") == 1

    lists_after = [r for r in cluster.requests() if sender(r) == b.name and r.action == kmock.action.LIST]
    assert lists_after == lists_before, "taking over listed nothing again"
    new_writes = [r for r in cluster.requests()[taken_over:] if sender(r) == b.name and is_write(r) and not is_lease(r)]
    assert new_writes and all("/next" in str(r.url) or _names(r, "next") for r in new_writes), [
        f"{r.method} {r.url}" for r in new_writes if not ("/next" in str(r.url) or _names(r, "next"))
    ]


def _names(request: Any, job: str) -> bool:
    """The request creates something of TrainingJob `job` (a pod, Service, NetworkPolicy or Event)."""
    data = request.data if isinstance(request.data, dict) else {}
    metadata = data.get("metadata") or {}
    involved = (data.get("involvedObject") or data.get("regarding") or {}).get("name")
    return str(metadata.get("name", "")).startswith(f"{job}-") or involved == job


async def _pods(cluster: Cluster, job: str) -> bool:
    return {p["metadata"]["name"] for p in await cluster.list("Pod")} >= set(pods_of(job))


JOBS = [f"job{n}" for n in range(10)]
SERVICES = [f"serve{n}" for n in range(4)]


async def test_killing_the_leader_mid_burst_duplicates_nothing_and_loses_nothing(
    cluster: Cluster, replicas: dict[str, Replica]
) -> None:
    for replica in replicas.values():
        replica.start()
    first = await wait_for(lambda: held_by(cluster, REPLICAS), timeout=30, what="a leader")
    (second,) = (name for name in REPLICAS if name != first)
    half_jobs, half_services = len(JOBS) // 2, len(SERVICES) // 2
    for job in JOBS[:half_jobs]:
        await cluster.create(trainingjob(job, runPolicy={"cleanPodPolicy": "None"}))
    for name in SERVICES[:half_services]:
        await cluster.create(modelservice(name))

    async def some_pods_created() -> bool:
        return len(cluster.requests("POST", "/pods")) >= 3

    await wait_for(some_pods_created, what="the leader creating pods")
    await replicas[first].terminate(kill=True)  # SIGKILL, mid-burst: no release, the Lease has to expire
    for job in JOBS[half_jobs:]:
        await cluster.create(trainingjob(job, runPolicy={"cleanPodPolicy": "None"}))
    for name in SERVICES[half_services:]:
        await cluster.create(modelservice(name))

    await wait_for(lambda: held_by(cluster, (second,)), timeout=30, what=f"{second} leading")
    everything = [pod for job in JOBS for pod in pods_of(job)]

    async def every_pod_created() -> bool:
        return {p["metadata"]["name"] for p in await cluster.list("Pod")} >= set(everything)

    await wait_for(every_pod_created, timeout=40, what="the pods of every job")
    for pod in everything:
        await cluster.set_pod(pod, "Running")
    for name in SERVICES:
        await roll_out(cluster, name, V1["sha256"])
    await wait_for(lambda: all_in_phase(cluster, "TrainingJob", JOBS, "Running"), timeout=40, what="jobs Running")
    await wait_for(lambda: all_in_phase(cluster, "ModelService", SERVICES, "Ready"), timeout=40, what="Ready")

    # Nothing duplicated: one create per pod, no pod deleted, every job still on attempt 1.
    created = [r.data["metadata"]["name"] for r in cluster.requests("POST", "/pods")]
    assert sorted(created) == sorted(everything), "exactly one create per pod"
    assert {p["metadata"]["name"] for p in await cluster.list("Pod")} == set(everything)
    assert not cluster.requests("DELETE", "/pods/")
    jobs = await statuses(cluster, "TrainingJob")
    assert {name: status["attempt"] for name, status in jobs.items()} == dict.fromkeys(JOBS, 1)
    assert all(not status.get("failures") for status in jobs.values())
    attempts_written = {
        (r.data.get("status") or {}).get("attempt")
        for r in cluster.requests("PATCH", "/trainingjobs/")
        if r.subresource == "status" and isinstance(r.data, dict)
    }
    assert attempts_written <= {None, 1}, "no status write ever named another attempt"
    # Nothing lost: every ModelService has its children and its status.
    assert sorted(d["metadata"]["name"] for d in await cluster.list("Deployment")) == sorted(SERVICES)
    for kind in ("Service", "PodDisruptionBudget"):
        names = {o["metadata"]["name"] for o in await cluster.list(kind)}
        assert set(SERVICES) <= names, kind
    for name in SERVICES:
        assert len(cluster.applies(f"/deployments/{name}")) == 1, f"{name}'s Deployment was written once"
    services = await statuses(cluster, "ModelService")
    assert all(services[name]["phase"] == "Ready" for name in SERVICES)
    # Never two writers: the new leader's first write comes after the killed one's last.
    requests = cluster.requests()
    first_writes = [i for i, r in enumerate(requests) if sender(r) == first and is_write(r) and not is_lease(r)]
    second_writes = [i for i, r in enumerate(requests) if sender(r) == second and is_write(r) and not is_lease(r)]
    assert first_writes and second_writes
    assert max(first_writes) < min(second_writes)
