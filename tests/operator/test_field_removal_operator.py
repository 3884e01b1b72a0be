"""Fields removed from a ModelService leave its children, as a real API server's server-side
apply does it (modelled by the emulator, tests/operator/ssa.py), while fields other managers set stay."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.emulator import Cluster, OperatorProcess, wait_for
from tests.operator.test_modelservice_operator import V1, modelservice, roll_out, serving, wait_status

pytestmark = pytest.mark.slow

OPTIONAL: dict[str, Any] = {
    "env": [{"name": "EXTRA_FLAG", "value": "1"}],
    "nodeSelector": {"pool": "inference"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
            ]
        }
    },
    "annotations": {"example.com/owner": "team-a"},
    "labels": {"team": "a"},
    "disruption": {"minAvailable": 1},
    "service": {"annotations": {"example.com/load-balancer": "internal"}},
}
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 4, "metric": "cpu", "target": 60}
BEHAVIOR = {"scaleDown": {"stabilizationWindowSeconds": 60}}


def template(deployment: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]
    return result


async def children(cluster: Cluster) -> dict[str, dict[str, Any]]:
    found = {}
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        child = await cluster.get(kind, "digits")
        assert child is not None, kind
        found[kind] = child
    return found


async def test_every_removed_optional_field_leaves_the_children(cluster: Cluster, operator: OperatorProcess) -> None:
    body = modelservice(**OPTIONAL, autoscaling={**AUTOSCALING, "behavior": BEHAVIOR})
    body["spec"].pop("replicas")
    await cluster.create(body)
    await serving(cluster, V1["sha256"])
    before = await children(cluster)
    pod = template(before["Deployment"])
    assert pod["spec"]["nodeSelector"] and pod["spec"]["tolerations"] and pod["spec"]["affinity"]
    assert "EXTRA_FLAG" in [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert pod["metadata"]["labels"]["team"] == "a" and "example.com/owner" in pod["metadata"]["annotations"]
    assert before["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert before["Service"]["metadata"]["annotations"]["example.com/load-balancer"] == "internal"
    assert before["HorizontalPodAutoscaler"]["spec"]["behavior"] == BEHAVIOR
    # Someone else's edits (kubectl rollout restart, the HPA) are theirs, and stay.
    restarted = {"kubectl.kubernetes.io/restartedAt": "2026-11-01T00:00:00Z"}
    await cluster.patch("Deployment", "digits", {"spec": {"template": {"metadata": {"annotations": restarted}}}})
    await cluster.patch("Deployment", "digits", {"spec": {"replicas": 3}}, field_manager="horizontal-pod-autoscaler")

    removed: dict[str, Any] = dict.fromkeys(OPTIONAL)
    await cluster.patch("ModelService", "digits", {"spec": {**removed, "autoscaling": {"behavior": None}}})

    async def converged() -> dict[str, dict[str, Any]] | None:
        found = await children(cluster)  # read one after another: each must show the edit
        done = (
            "nodeSelector" not in template(found["Deployment"])["spec"]
            and "behavior" not in found["HorizontalPodAutoscaler"]["spec"]
            and "minAvailable" not in found["PodDisruptionBudget"]["spec"]
            and "example.com/load-balancer" not in (found["Service"]["metadata"].get("annotations") or {})
        )
        return found if done else None

    after = await wait_for(converged, what="the children without the removed fields")
    pod = template(after["Deployment"])
    for field in ("nodeSelector", "tolerations", "affinity"):
        assert field not in pod["spec"], field
    assert "EXTRA_FLAG" not in [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert "team" not in pod["metadata"]["labels"] and "example.com/owner" not in pod["metadata"]["annotations"]
    assert (
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        == restarted["kubectl.kubernetes.io/restartedAt"]
    )
    assert after["Deployment"]["spec"]["replicas"] == 3, "the HPA's count stays"
    assert after["PodDisruptionBudget"]["spec"] == {
        "selector": before["PodDisruptionBudget"]["spec"]["selector"],
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "maxUnavailable": 1,
    }, "the bound moved from minAvailable to maxUnavailable without a 422"
    assert (
        "annotations" not in after["Service"]["metadata"]
        or "example.com/load-balancer" not in (after["Service"]["metadata"]["annotations"])
    )
    await roll_out(cluster)
    await wait_status(cluster, lambda s: s.get("phase") == "Ready" and s["observedGeneration"] == 2, "Ready")
    assert not await cluster.events("ChildRejected")
