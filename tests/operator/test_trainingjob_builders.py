"""TrainingJob children: golden manifests, Kubernetes' schema, the restricted profile."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import yaml

from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import attempt_children, storage_wiring, worker_pod
from tests.operator.test_api import example_spec, with_changes
from tests.operator.validation import assert_valid_objects

GOLDEN = pathlib.Path(__file__).parent / "golden" / "trainingjob-digits.yaml"
OWNER = Owner("TrainingJob", "digits", "team-a", "5b1c1f0e-0000-4000-8000-000000000001")
IMAGE = "registry.example/maas-workloads:test"


def children(spec: dict[str, Any], attempt: int = 1) -> list[dict[str, Any]]:
    return attempt_children(OWNER, TrainingJobSpec.model_validate(spec), attempt, IMAGE)


def test_golden_manifests() -> None:
    rendered = yaml.safe_dump_all(children(example_spec()), sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 after an intended change"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"workers.resources.gpu": 2, "workers.nodeSelector": {"nvidia.com/gpu.product": "H100"}},
        {"runPolicy.queueName": "team-a", "runPolicy.priorityClassName": "high", "imagePullPolicy": "Always"},
        {"checkpoint": {"uri": "s3://bucket/ckpt", "secretRef": {"name": "s3-creds"}}},
        {"workers.env": [{"name": "NCCL_DEBUG", "value": "INFO"}], "serviceAccountName": "trainer"},
    ],
)
def test_children_are_valid_kubernetes_objects(changes: dict[str, Any]) -> None:
    assert_valid_objects(children(with_changes(changes)))


def test_pods_follow_the_restricted_profile() -> None:
    for pod in (c for c in children(example_spec()) if c["kind"] == "Pod"):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
        assert not any("hostPath" in volume for volume in spec["volumes"])
        assert spec["restartPolicy"] == "Never"


def test_gpu_workers_request_and_tolerate_gpus() -> None:
    spec = TrainingJobSpec.model_validate(with_changes({"workers.resources.gpu": 4}))
    pod = worker_pod(OWNER, spec, 1, 0, IMAGE)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 4 == resources["requests"]["nvidia.com/gpu"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


def test_kueue_label_and_attempt_label() -> None:
    pods = [c for c in children(with_changes({"runPolicy.queueName": "research"}), attempt=3) if c["kind"] == "Pod"]
    for pod in pods:
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
        assert pod["metadata"]["labels"]["maas.dev/attempt"] == "3"


def test_storage_wiring_mounts_each_claim_once() -> None:
    spec = TrainingJobSpec.model_validate(example_spec())
    wiring = storage_wiring(spec)
    assert wiring.env == {
        "MAAS_CHECKPOINT_URI": "file:///mnt/maas/maas-artifacts/digits/checkpoints",
        "MAAS_OUTPUT_URI": "file:///mnt/maas/maas-artifacts/digits/model",
    }
    assert [(v.volume["name"], v.mount_path) for v in wiring.volumes] == [("maas-pvc-0", "/mnt/maas/maas-artifacts")]


def test_user_env_overrides_operator_env() -> None:
    spec = TrainingJobSpec.model_validate(with_changes({"workers.env": [{"name": "HOME", "value": "/scratch"}]}))
    env = worker_pod(OWNER, spec, 1, 0, IMAGE)["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "HOME"] == ["/scratch"]
