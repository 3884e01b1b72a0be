"""The real operator writes an object's independent children concurrently, after its status and
never behind its Events: the emulator holds one child's write (or every Event) at a gate
(`switches.held`) and the tests see the others land while it waits. Were the writes made one
after another, the held one would stop those planned after it, for one of the held kinds at least.
No clock assertions: only what arrived while a gate was shut."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_modelservice_operator import modelservice
from tests.operator.test_trainingjob_operator import trainingjob

pytestmark = pytest.mark.slow

MODELSERVICE_CHILDREN = ("Deployment", "Service", "PodDisruptionBudget")
TRAININGJOB_CHILDREN = {"Service": "{}-head", "NetworkPolicy": "{}-ray", "Pod": "{}-head"}
"""A TrainingJob's children by kind, one name each (its pods are created the same way)."""


async def _exist(cluster: Cluster, children: list[tuple[str, str]]) -> bool:
    return all([await cluster.get(kind, name) is not None for kind, name in children])


async def _wait_exist(cluster: Cluster, children: list[tuple[str, str]], what: str) -> None:
    await wait_for(lambda: _exist(cluster, children), what=what)


def _writes(cluster: Cluster, kind_path: str, name: str) -> list[Any]:
    """Creates (the name is in the body) and applies (in the URL) of one child."""
    return [
        request
        for request in cluster.requests()
        if str(request.method).upper().endswith(("POST", "PATCH"))
        and kind_path in str(request.url)
        and "/status" not in str(request.url)
        and (
            str(request.url).split("?")[0].endswith(f"/{name}")
            or (isinstance(request.data, dict) and (request.data.get("metadata") or {}).get("name") == name)
        )
    ]


def _first_status_patch(cluster: Cluster, plural: str, name: str) -> int:
    patches = cluster.requests("PATCH", f"/{plural}/{name}/status")
    assert patches, f"no status written for {name}"
    return int(patches[0].id)


async def test_a_modelservices_children_are_written_while_another_of_them_waits(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    gates = {(kind, kind.lower()[:3]): asyncio.Event() for kind in MODELSERVICE_CHILDREN}
    cluster.switches.held.update(gates)  # ModelService "dep": its Deployment held; "ser": its Service; ...
    for _, name in gates:
        await cluster.create(modelservice(name))
    for held_kind, name in gates:
        others = [(kind, name) for kind in MODELSERVICE_CHILDREN if kind != held_kind]
        await _wait_exist(cluster, others, f"{others} written while {held_kind} {name} waits")
        assert await cluster.get(held_kind, name) is None
    assert sum(cluster.switches.holding.values()) == len(gates), "each held write is still waiting"
    for kind, name in gates:  # identity in status before any child
        first_child = min(int(r.id) for k in MODELSERVICE_CHILDREN for r in _writes(cluster, _plural(k), name))
        assert _first_status_patch(cluster, "modelservices", name) < first_child, (kind, name)

    for gate in gates.values():
        gate.set()
    everything = [(kind, name) for _, name in gates for kind in MODELSERVICE_CHILDREN]
    await wait_for(lambda: _exist(cluster, everything), what="every child once the gates open")
    for kind, name in everything:
        assert len(_writes(cluster, _plural(kind), name)) == 1, f"{kind} {name} written once"


async def test_a_trainingjobs_children_are_created_while_another_of_them_waits(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    jobs = {kind: f"job-{kind.lower()[:3]}" for kind in TRAININGJOB_CHILDREN}
    gates = {(kind, TRAININGJOB_CHILDREN[kind].format(job)): asyncio.Event() for kind, job in jobs.items()}
    cluster.switches.held.update(gates)
    for job in jobs.values():
        await cluster.create(trainingjob(job))
    for held_kind, job in jobs.items():
        others = [(kind, pattern.format(job)) for kind, pattern in TRAININGJOB_CHILDREN.items() if kind != held_kind]
        others.append(("Pod", f"{job}-worker-0"))
        await _wait_exist(cluster, others, f"{others} created while {held_kind} of {job} waits")
    assert sum(cluster.switches.holding.values()) == len(gates), "each held create is still waiting"
    for job in jobs.values():  # the attempt is in status before the first child is created
        status = (await cluster.get("TrainingJob", job) or {}).get("status") or {}
        assert status.get("attempt") == 1
        first_child = min(
            int(r.id)
            for kind, pattern in TRAININGJOB_CHILDREN.items()
            for r in _writes(cluster, _plural(kind), pattern.format(job))
        )
        assert _first_status_patch(cluster, "trainingjobs", job) < first_child, job

    for gate in gates.values():
        gate.set()
    everything = [
        (kind, pattern.format(job)) for job in jobs.values() for kind, pattern in TRAININGJOB_CHILDREN.items()
    ]
    await wait_for(lambda: _exist(cluster, everything), what="every child once the gates open")
    for kind, name in everything:
        assert len(_writes(cluster, _plural(kind), name)) == 1, f"{kind} {name} created once"


async def test_events_that_cannot_be_posted_delay_no_child(cluster: Cluster, operator: OperatorProcess) -> None:
    events = cluster.switches.held["Event", "*"] = asyncio.Event()
    await cluster.create(trainingjob("job"))
    await cluster.create(modelservice("svc"))
    children = [("Pod", "job-head"), ("Pod", "job-worker-1"), ("Service", "job-head"), ("NetworkPolicy", "job-ray")]
    children += [(kind, "svc") for kind in MODELSERVICE_CHILDREN]
    await wait_for(lambda: _exist(cluster, children), what="every child while no Event can be posted")
    await wait_for(lambda: _holding(cluster, ("Event", "*")), what="the Events waiting at the gate")
    assert not await cluster.list("Event"), "no Event got through the gate"

    events.set()
    posted = await wait_for(lambda: cluster.list("Event"), what="the Events stored once the API server takes them")
    assert {e["involvedObject"]["name"] for e in posted} <= {"job", "svc"}


async def _holding(cluster: Cluster, key: tuple[str, str]) -> bool:
    return cluster.switches.holding[key] > 0


def _plural(kind: str) -> str:
    return {
        "Deployment": "/deployments",
        "Service": "/services",
        "PodDisruptionBudget": "/poddisruptionbudgets",
        "NetworkPolicy": "/networkpolicies",
        "Pod": "/pods",
    }[kind]
