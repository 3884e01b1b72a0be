"""What the operator keeps per object (handlers/cache.py) is what its planners read, and small;
after a busy spell its freed memory goes back to the system (handlers/memory.py)."""

from __future__ import annotations

import copy
import datetime
import gc
import json
import tracemalloc
from typing import Any

import pytest

from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus
from maas_operator.builders.meta import Owner
from maas_operator.handlers import cache, memory
from maas_operator.status.modelservice import Children, ModelServiceView, Observed, plan_modelservice

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
OWNER = Owner("ModelService", "digits", "team-a", "uid-1")
SPEC = ModelServiceSpec.model_validate(
    {
        "model": {"uri": "s3://models/digits/v1", "sha256": "1" * 64},
        "replicas": 2,
        "resources": {"cpu": "1", "memory": "1Gi"},
    }
)
KEPT_PER_MODELSERVICE_BYTES = 4096
"""What the indices may keep of a ModelService and its Deployment, Service and PDB (JSON bytes)."""
HELD_PER_MODELSERVICE_BYTES = 10_000
"""The Python objects that keeps, per ModelService, once many are watched (measured: ~7.4 KB)."""


def as_served(manifest: dict[str, Any], kind: str) -> dict[str, Any]:
    """A child as the API server sends it in a watch event: managedFields, kubectl's annotation, status."""
    body = copy.deepcopy(manifest)
    metadata = body["metadata"]
    metadata.update(uid=f"uid-{kind}", resourceVersion="42", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
    metadata["managedFields"] = [
        {"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": manifest["spec"]}}
        for manager in ("maas-operator", "maas-operator-replicas", "kube-controller-manager")
    ]
    metadata.setdefault("annotations", {})[cache.LAST_APPLIED] = json.dumps(manifest)
    if kind == "Deployment":
        replicas = body["spec"].get("replicas", 2)
        body["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        }
    return body


def served_children() -> dict[str, dict[str, Any]]:
    """The children the planner creates first, as the API server then sends them back."""
    first = plan_modelservice(ModelServiceView(OWNER, 1, SPEC, None, ModelServiceStatus()), Observed(), NOW, "img")
    manifests = [action.manifest for action in first.actions if hasattr(action, "manifest")]
    return {manifest["kind"]: as_served(manifest, manifest["kind"]) for manifest in manifests}


def children(bodies: dict[str, dict[str, Any]]) -> Children:
    return Children(
        deployment=bodies.get("Deployment"),
        service=bodies.get("Service"),
        autoscaler=bodies.get("HorizontalPodAutoscaler"),
        disruption_budget=bodies.get("PodDisruptionBudget"),
    )


def test_the_planner_decides_the_same_from_what_is_kept() -> None:
    served = served_children()
    assert set(served) >= {"Deployment", "Service", "PodDisruptionBudget"}
    kept = {kind: cache.child(kind, body) for kind, body in served.items()}
    view = ModelServiceView(OWNER, 1, SPEC, None, ModelServiceStatus())
    from_served = plan_modelservice(view, Observed(children(served)), NOW, "img")
    from_kept = plan_modelservice(view, Observed(children(kept)), NOW, "img")
    assert from_kept == from_served
    assert from_kept.status.phase == "Ready" and not from_kept.actions, "a steady state: nothing to write"


def test_what_is_kept_drops_managed_fields_and_the_pod_template() -> None:
    served = served_children()
    deployment = cache.child("Deployment", served["Deployment"])
    assert "managedFields" not in deployment["metadata"] and "resourceVersion" not in deployment["metadata"]
    assert cache.LAST_APPLIED not in deployment["metadata"]["annotations"]
    assert deployment["spec"] == {
        "template": {"metadata": {"annotations": served["Deployment"]["spec"]["template"]["metadata"]["annotations"]}},
        "replicas": served["Deployment"]["spec"]["replicas"],
    }
    assert deployment["status"] == served["Deployment"]["status"]
    assert cache.child("Service", served["Service"])["spec"] == {}


def test_what_is_kept_per_modelservice_is_bounded() -> None:
    served = served_children()
    body = as_served({"metadata": {"name": "digits"}, "spec": SPEC.model_dump(by_alias=True, mode="json")}, "x")
    kept = [cache.custom_resource(body), *(cache.child(kind, child) for kind, child in served.items())]
    full = [body, *served.values()]
    kept_bytes = sum(len(json.dumps(value)) for value in kept)
    full_bytes = sum(len(json.dumps(value)) for value in full)
    assert kept_bytes < KEPT_PER_MODELSERVICE_BYTES, f"{kept_bytes} bytes kept per ModelService"
    assert kept_bytes < full_bytes / 4, f"kept {kept_bytes} of {full_bytes} bytes"


def test_what_is_held_in_memory_per_modelservice_is_bounded() -> None:
    """As the watches see them: every body decoded on its own, so nothing is shared but what
    cache.py shares."""
    served = served_children()
    body = as_served({"metadata": {"name": "digits"}, "spec": SPEC.model_dump(by_alias=True, mode="json")}, "x")
    texts = [("", json.dumps(body))] + [(kind, json.dumps(child)) for kind, child in served.items()]
    count = 200
    tracemalloc.start()
    try:
        kept = [
            cache.child(kind, json.loads(text)) if kind else cache.custom_resource(json.loads(text))
            for _ in range(count)
            for kind, text in texts
        ]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == count * len(texts)
    assert held / count < HELD_PER_MODELSERVICE_BYTES, f"{held / count:.0f} bytes held per ModelService"


class Resident:
    """A made-up resident set size (bytes) and a record of what the releaser did."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.trimmed = 0

    def read(self) -> int:
        return self.size

    def trim(self, pad: int) -> int:
        self.trimmed += 1
        self.size = int(self.size * 0.8)
        return 1


def test_memory_is_released_when_idle_after_a_burst_of_creates_or_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    resident = Resident(100 * 2**20)
    monkeypatch.setattr(memory, "resident_bytes", resident.read)
    monkeypatch.setattr(memory, "MALLOC_TRIM", resident.trim)
    releaser = memory.Releaser()
    resident.size = 200 * 2**20  # a burst of 1,000 new objects
    releaser.after_work(idle=False, objects=1000)
    assert resident.trimmed == 0, "never while work is queued or running"
    releaser.after_work(idle=True, objects=1000)
    assert resident.trimmed == 1 and releaser.baseline == 160 * 2**20
    releaser.after_work(idle=True, objects=1000)
    assert resident.trimmed == 1, "not again until it has grown by GROWTH or the objects shrank"
    resident.size = int(160 * 2**20 * memory.GROWTH) + 1
    releaser.after_work(idle=True, objects=1000)
    assert resident.trimmed == 2
    releaser.after_work(idle=True, objects=950)
    assert resident.trimmed == 2, "a few deletions: not yet"
    releaser.after_work(idle=True, objects=0)  # everything deleted: the memory it held is free
    assert resident.trimmed == 3
    releaser.after_work(idle=True, objects=0)
    assert resident.trimmed == 3, "once"


@pytest.mark.skipif(memory.resident_bytes() is None, reason="needs /proc (Linux)")
def test_the_resident_size_is_read_from_the_system() -> None:
    size = memory.resident_bytes()
    assert size is not None and 10 * 2**20 < size < 10 * 2**30


def test_objects_alive_at_start_up_are_left_out_of_garbage_collections() -> None:
    threshold = gc.get_threshold()
    survivor = [object() for _ in range(1000)]  # tracked: a list of objects
    try:
        memory.tune_garbage_collector()
        assert not any(obj is survivor for obj in gc.get_objects())  # only frozen objects hold it now
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[0] > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
