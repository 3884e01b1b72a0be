"""The emulator answers like the API server where the operator's tests rely on it (see emulator.py)."""

from __future__ import annotations

import copy
from typing import Any

from tests.operator.emulator import Cluster, wait_for

OURS = "maas-operator"


def deployment(**template_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "digits", "namespace": "team-a", "annotations": {"a": "1", "b": "2"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "digits"}},
            "template": {
                "metadata": {"labels": {"app": "digits"}},
                "spec": {"containers": [{"name": "server", "image": "serve"}], **template_spec},
            },
        },
    }


async def test_apply_creates_and_removes_what_its_manager_stops_applying(cluster: Cluster) -> None:
    status, created = await cluster.apply(deployment(nodeSelector={"pool": "gpu"}), OURS)
    assert status == 201 and created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    await cluster.patch("Deployment", "digits", {"metadata": {"annotations": {"c": "kept"}}})  # kubectl edit
    smaller = deployment()
    del smaller["metadata"]["annotations"]["b"]
    del smaller["spec"]["replicas"]
    status, applied = await cluster.apply(smaller, OURS)
    assert status == 200
    assert applied["metadata"]["annotations"] == {"a": "1", "c": "kept"}, "another manager's field stays"
    assert "nodeSelector" not in applied["spec"]["template"]["spec"]
    assert applied["spec"]["replicas"] == 1, "a released field with a default gets its default"
    assert applied["metadata"]["generation"] == 2


async def test_a_field_co_owned_by_another_manager_survives_and_an_update_takes_it_over(cluster: Cluster) -> None:
    await cluster.apply(deployment(), OURS)
    handover = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "digits"}, "spec": {"replicas": 3}}
    await cluster.apply(handover, "maas-operator-replicas")
    without = deployment()
    del without["spec"]["replicas"]
    assert (await cluster.apply(without, OURS))[1]["spec"]["replicas"] == 3
    await cluster.patch("Deployment", "digits", {"spec": {"replicas": 7}}, field_manager="horizontal-pod-autoscaler")
    owners = cluster.emulator.ownership["deployments", "team-a", "digits"]
    assert ("spec", "replicas") in owners["horizontal-pod-autoscaler", "Update"]
    assert ("spec", "replicas") not in owners.get(("maas-operator-replicas", "Apply"), set())
    again = copy.deepcopy(without)
    again["metadata"]["annotations"]["d"] = "4"
    assert (await cluster.apply(again, OURS))[1]["spec"]["replicas"] == 7


async def test_invalid_objects_get_the_api_servers_422(cluster: Cluster) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "digits.v2"}, "spec": {}}
    status, body = await cluster.apply(service, OURS)
    assert status == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith('Service "digits.v2" is invalid: metadata.name: Invalid value: "digits.v2"')
    labelled = deployment()
    labelled["spec"]["template"]["metadata"]["labels"]["team"] = "bad value!"
    status, body = await cluster.apply(labelled, OURS)
    assert status == 422 and 'spec.template.metadata.labels: Invalid value: "bad value!"' in body["message"]
    twice = deployment(volumes=[{"name": "tmp", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}])
    status, body = await cluster.apply(twice, OURS)
    assert status == 422 and 'spec.template.spec.volumes[1].name: Duplicate value: "tmp"' in body["message"]


async def test_a_budget_bound_created_by_a_plain_create_is_never_removed_by_an_apply(cluster: Cluster) -> None:
    """What went wrong on a real API server: a create (an Update) owns minAvailable forever."""
    created: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "created"},
        "spec": {"minAvailable": 1},
    }
    async with cluster.session.post(cluster.path("PodDisruptionBudget"), json=created, params={"fieldManager": OURS}):
        pass
    status, body = await cluster.apply({**created, "spec": {"maxUnavailable": 1}}, OURS)
    assert status == 422 and body["message"] == (
        'PodDisruptionBudget.policy "created" is invalid: spec: Invalid value: policy.PodDisruptionBudgetSpec: '
        "minAvailable and maxUnavailable cannot be both set"
    )
    applied = {**created, "metadata": {"name": "applied"}}
    assert (await cluster.apply(applied, OURS))[0] == 201
    status, body = await cluster.apply({**applied, "spec": {"maxUnavailable": 1}}, OURS)
    assert status == 200 and body["spec"] == {"maxUnavailable": 1}


def gpu_pod(name: str) -> dict[str, Any]:
    container = {"name": "main", "image": "train", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container]}}


async def post(cluster: Cluster, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with cluster.session.post(cluster.path(manifest["kind"]), json=manifest) as response:
        return response.status, await response.json()


async def test_quota_and_webhook_denials_get_403(cluster: Cluster) -> None:
    cluster.switches.quota = {"requests.nvidia.com/gpu": 1}
    assert (await post(cluster, gpu_pod("first")))[0] == 201
    status, body = await post(cluster, gpu_pod("second"))
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'pods "second" is forbidden: exceeded quota: test-quota, requested: requests.nvidia.com/gpu=1, '
        "used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1"
    )
    await cluster.set_pod("first", "Succeeded")
    assert (await post(cluster, gpu_pod("second")))[0] == 201, "finished pods do not count"
    cluster.switches.denials["Pod", "third"] = "pods must not run as root"
    status, body = await post(cluster, gpu_pod("third"))
    assert status == 403 and body["message"].endswith("denied the request: pods must not run as root")


async def test_pods_on_lost_nodes_stay_terminating_until_force_deleted(cluster: Cluster) -> None:
    cluster.switches.lost_nodes = {"node-1"}
    pod = gpu_pod("stuck")
    pod["spec"]["nodeName"] = "node-1"
    await post(cluster, pod)
    async with cluster.session.delete(cluster.path("Pod", "stuck"), json={"kind": "DeleteOptions"}) as response:
        assert response.status == 200
    stuck = await cluster.get("Pod", "stuck")
    assert stuck is not None and stuck["metadata"]["deletionTimestamp"]
    assert stuck["metadata"]["deletionGracePeriodSeconds"] == 30
    force = {"kind": "DeleteOptions", "gracePeriodSeconds": 0}
    async with cluster.session.delete(cluster.path("Pod", "stuck"), json=force) as response:
        assert response.status == 200

    async def gone() -> bool:
        return await cluster.get("Pod", "stuck") is None

    await wait_for(gone, what="the force-deleted pod gone")


async def test_a_merge_patch_is_stored_merged_and_a_tests_reaction_still_answers_first(cluster: Cluster) -> None:
    await cluster.apply(deployment(), OURS)
    await cluster.patch("Deployment", "digits", {"metadata": {"annotations": {"a": None, "c": "3"}}})
    await cluster.patch("Deployment", "digits", {"spec": {"replicas": 5}})
    stored = await cluster.get("Deployment", "digits")
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"b": "2", "c": "3"}, "null removes, maps merge"
    assert stored["spec"]["replicas"] == 5 and stored["metadata"]["generation"] == 2, "a spec change counts"
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "serve"
    # With a reaction of the test's own, requests go through KMock's search again: it answers first.
    cluster.emulator["get", "/apis/apps/v1/namespaces/team-a/deployments/digits"] << 503
    async with cluster.session.get(cluster.path("Deployment", "digits")) as response:
        assert response.status == 503
    async with cluster.session.get(cluster.path("Deployment")) as response:
        assert response.status == 200 and [item["metadata"]["name"] for item in (await response.json())["items"]] == [
            "digits"
        ]


async def test_lists_return_only_what_the_label_selector_selects(cluster: Cluster) -> None:
    for name, labels in (("ours", {"managed": "yes", "owner": "a"}), ("theirs", {"managed": "no"}), ("bare", {})):
        await cluster.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels}})

    async def names(selector: str) -> list[str]:
        async with cluster.session.get(cluster.path("Service"), params={"labelSelector": selector}) as response:
            assert response.status == 200, await response.text()
            return sorted(item["metadata"]["name"] for item in (await response.json())["items"])

    assert await names("managed=yes") == ["ours"]
    assert await names("managed=yes,owner") == ["ours"]
    assert await names("managed!=yes") == ["bare", "theirs"]
    assert await names("!managed") == ["bare"]
    assert await names("owner,!managed") == []
