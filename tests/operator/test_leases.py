"""Leader election against the emulated API server, in-process: the Lease API calls (kube/lease.py)
and the election loop (handlers/leadership.py) of several candidates sharing one Lease.

The emulator keeps resourceVersions on Leases (`switches.resource_versions`), as the API server
does; with the switch off (KMock's own behaviour) two candidates can both win a race, which is
what optimistic concurrency prevents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from maas_operator.election import Election, LeaseRecord, Timing, Update
from maas_operator.handlers.leadership import LeaderElector, fence
from maas_operator.kube.client import KubeClient, NotLeaderError
from maas_operator.kube.lease import LeaseClient
from tests.operator.emulator import Cluster, wait_for, write_kubeconfig

LEASE_NAMESPACE = "maas-system"
LEASE = "maas-operator"
FAST = Timing(lease_duration_seconds=2, renew_deadline_seconds=1.0, retry_period_seconds=0.2)


class Reconciler:
    """Stands in for the Runtime: records when it was told to start and stop (monotonic seconds)."""

    def __init__(self) -> None:
        self.terms: list[tuple[float, float | None]] = []

    @property
    def leading(self) -> bool:
        return bool(self.terms) and self.terms[-1][1] is None

    def start_leading(self) -> None:
        self.terms.append((time.monotonic(), None))

    async def stop_leading(self) -> None:
        started, _ = self.terms[-1]
        self.terms[-1] = (started, time.monotonic())


async def connect(
    cluster: Cluster, directory: pathlib.Path, token: str, may_write: Callable[[], bool] | None = None
) -> KubeClient:
    configuration = client.Configuration()
    kubeconfig = write_kubeconfig(cluster.url, directory, token)
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return KubeClient.from_configuration(configuration, may_write)


class Candidates:
    def __init__(self, cluster: Cluster, directory: pathlib.Path) -> None:
        self.cluster = cluster
        self.directory = directory
        self.electors: dict[str, LeaderElector] = {}

    async def add(self, name: str, timing: Timing = FAST) -> LeaderElector:
        kube = await connect(self.cluster, self.directory, name)
        elector = LeaderElector(Election(name, timing), LeaseClient(kube, LEASE_NAMESPACE, LEASE), Reconciler())
        self.electors[name] = elector
        return elector

    def reconciler(self, name: str) -> Reconciler:
        runtime = self.electors[name].runtime
        assert isinstance(runtime, Reconciler)
        return runtime

    def leaders(self) -> list[str]:
        return [name for name, elector in self.electors.items() if elector.leading]

    async def close(self) -> None:
        for elector in self.electors.values():
            await elector.stop()


@pytest.fixture
async def candidates(cluster: Cluster, tmp_path: pathlib.Path) -> AsyncIterator[Candidates]:
    found = Candidates(cluster, tmp_path)
    yield found
    await found.close()


async def lease(cluster: Cluster) -> dict[str, Any]:
    found = await cluster.get("Lease", LEASE, LEASE_NAMESPACE)
    assert found is not None
    return found


def is_put(request: Any) -> bool:
    return str(request.method).upper().endswith("PUT")


def token_of(request: Any) -> str:
    return str(request.headers.get("Authorization", "")).removeprefix("Bearer ")


@pytest.fixture
async def leases(cluster: Cluster, tmp_path: pathlib.Path) -> AsyncIterator[LeaseClient]:
    found = LeaseClient(await connect(cluster, tmp_path, "a"), LEASE_NAMESPACE, LEASE)
    yield found
    await found.kube.close()


async def test_lease_writes_carry_the_resource_version(cluster: Cluster, leases: LeaseClient) -> None:
    now = _wall()
    assert await leases.get() is None
    created = await leases.create(LeaseRecord("a", 15, now, now))
    assert created is not None and created.holder == "a" and created.resource_version
    assert await leases.create(LeaseRecord("b", 15, now, now)) is None, "the second create is 409 AlreadyExists"

    renewed = await leases.update(dataclasses.replace(created, renew_time=_wall()))
    assert renewed is not None and renewed.resource_version != created.resource_version
    assert renewed.acquire_time == now and renewed.renew_time is not None and renewed.renew_time > now
    stale = dataclasses.replace(created, holder="b", transitions=1)
    assert await leases.update(stale) is None, "a write based on an old read is 409 Conflict"
    stored = (await lease(cluster))["spec"]
    assert stored["holderIdentity"] == "a" and stored["leaseTransitions"] == 0
    fraction = stored["renewTime"].rsplit(".", 1)[1]
    assert fraction.endswith("Z") and len(fraction) == 7, "a MicroTime: six fractional digits, UTC"


@pytest.mark.parametrize("resource_versions", [True, False])
async def test_of_candidates_that_race_exactly_one_wins(
    cluster: Cluster, candidates: Candidates, resource_versions: bool
) -> None:
    cluster.switches.resource_versions = resource_versions
    names = [f"c{n}" for n in range(4)]
    electors = [await candidates.add(name) for name in names]
    released = {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 3}
    metadata = {"name": LEASE, "namespace": LEASE_NAMESPACE}
    # A released Lease: every candidate may take it at once.
    await cluster.create(
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": released}
    )
    # Every candidate reads the free Lease before any writes it, as when several start at once.
    steps = [elector.election.read(await elector.leases.get(), time.monotonic(), _wall()) for elector in electors]
    assert all(isinstance(step, Update) for step in steps)
    results = await asyncio.gather(*(e.leases.update(s.record) for e, s in zip(electors, steps, strict=True)))
    winners = [name for name, stored in zip(names, results, strict=True) if stored is not None]
    if resource_versions:
        assert len(winners) == 1, winners
        spec = (await lease(cluster))["spec"]
        assert spec["holderIdentity"] == winners[0] and spec["leaseTransitions"] == 4
    else:
        assert winners == names, "without preconditions every write lands: the last one silently wins"


async def test_one_leads_and_a_released_lease_is_taken_at_once(cluster: Cluster, candidates: Candidates) -> None:
    slow = Timing(lease_duration_seconds=60, renew_deadline_seconds=1.0, retry_period_seconds=0.2)
    for name in ("a", "b", "c"):
        (await candidates.add(name, slow)).start()
    await wait_for(lambda: _leaders(candidates, 1), what="a leader")
    first = candidates.leaders()[0]
    await asyncio.sleep(1.0)  # several renew rounds: still one leader, the same one
    assert candidates.leaders() == [first]
    assert (await lease(cluster))["spec"]["holderIdentity"] == first

    await candidates.electors.pop(first).stop()
    released = await lease(cluster)
    assert released["spec"]["holderIdentity"] == "" and released["spec"]["leaseDurationSeconds"] == 1
    # Far sooner than the 60 s lease: only the release can explain a new leader.
    await wait_for(lambda: _leaders(candidates, 1), timeout=10, what="a new leader after the release")
    second = candidates.leaders()[0]
    assert second != first
    spec = (await lease(cluster))["spec"]
    assert spec["holderIdentity"] == second and spec["leaseTransitions"] == 1


async def test_a_leader_that_cannot_renew_stops_before_anyone_takes_over(
    cluster: Cluster, candidates: Candidates
) -> None:
    a = await candidates.add("a")
    a.start()
    await wait_for(lambda: _leaders(candidates, 1), what="a leading")
    b = await candidates.add("b")
    b.start()
    cut = {"on": True}
    cluster.emulator[lambda r: cut["on"] and is_put(r) and token_of(r) == "a"] << 503  # a's renews fail
    await wait_for(lambda: _is_leader(b), timeout=15, what="b leading")
    [(_, a_stopped)] = candidates.reconciler("a").terms
    [(b_started, _)] = candidates.reconciler("b").terms
    assert a_stopped is not None and a_stopped < b_started, "never two leaders"
    assert not a.election.is_leader(b_started) and not a.leading

    cut["on"] = False  # a reaches the API server again: it follows b, it does not take the Lease back
    await asyncio.sleep(1.0)
    assert candidates.leaders() == ["b"]
    assert len(candidates.reconciler("a").terms) == 1


async def test_writes_are_refused_once_the_renew_deadline_has_passed(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    election = Election("a", FAST)
    fenced = await connect(cluster, tmp_path, "a", fence(election))
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "team-a"}}
    with pytest.raises(NotLeaderError):
        await fenced.create(event)
    election.written(LeaseRecord("a", 2, resource_version="1"), time.monotonic())
    assert await fenced.create(event) is True
    election.renewed_at = time.monotonic() - FAST.renew_deadline_seconds  # the deadline just passed
    with pytest.raises(NotLeaderError):
        await fenced.create({**event, "metadata": {"name": "f", "namespace": "team-a"}})
    assert [r.data["metadata"]["name"] for r in cluster.requests("POST", "/events")] == ["e"], "nothing was sent"
    await fenced.close()


def _wall() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _leaders(candidates: Candidates, count: int) -> bool:
    return len(candidates.leaders()) == count


async def _is_leader(elector: LeaderElector) -> bool:
    return elector.leading
