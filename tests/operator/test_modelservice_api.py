"""The ModelService API and its children: pydantic and CEL refuse the same bad specs; the
builders produce valid, restricted, HPA-friendly objects."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from maas_operator.api.common import describe_validation_error
from maas_operator.api.crd import custom_resource_definition
from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.api.resources import MODELSERVICE
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from tests.operator.cel import violations
from tests.operator.test_api import changed
from tests.operator.validation import assert_valid_objects

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).parent / "golden" / "modelservice-digits.yaml"
ROOT_SCHEMA = custom_resource_definition(MODELSERVICE)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = ROOT_SCHEMA["properties"]["spec"]
OWNER = Owner("ModelService", "digits", "team-a", "5b1c1f0e-0000-4000-8000-000000000002")
IMAGE = "registry.example/maas-workloads:test"
MODEL = ServedModel(uri="s3://models/digits/v1", sha256="a" * 64)


def example_spec() -> dict[str, Any]:
    documents = yaml.safe_load_all((REPO / "examples" / "modelservice.yaml").read_text())
    return dict(next(d for d in documents if d["kind"] == "ModelService")["spec"])


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    return changed(example_spec(), changes)


def test_example_is_valid_everywhere() -> None:
    spec = ModelServiceSpec.model_validate(example_spec())
    assert spec.autoscaling is not None and spec.autoscaling.metric == "inflight"
    assert violations(SPEC_SCHEMA, example_spec()) == []


BAD_SPECS = [
    ({"model.uri": "s3://models/digits"}, "exactly one of uri or trainingJobRef"),
    ({"model.trainingJobRef": None}, "exactly one of uri or trainingJobRef"),
    ({"replicas": 3}, "set replicas or autoscaling, not both"),
    ({"autoscaling.minReplicas": 20}, "must be less than or equal to maxReplicas"),
    ({"autoscaling.metric": "cpu", "resources.cpu": None}, "autoscaling on cpu needs resources.cpu"),
    ({"autoscaling.metric": "cpu", "autoscaling.target": 150}, "at most 100"),
    ({"disruption": {"minAvailable": 1, "maxUnavailable": 1}}, "set minAvailable or maxUnavailable, not both"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SPECS)
def test_bad_specs_are_refused_by_both(changes: dict[str, Any], message: str) -> None:
    spec = with_changes(changes)
    with pytest.raises(ValidationError) as refused:
        ModelServiceSpec.model_validate(spec)
    assert message in describe_validation_error(refused.value)
    assert any(message in found for found in violations(SPEC_SCHEMA, spec))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model.trainingJobRef": None, "model.uri": "ftp://x/y"}, "spec.model.uri"),
        ({"model.sha256": "abc"}, "spec.model.sha256"),
        ({"rollout.canary": {"model": {"uri": "s3://models/b/1"}, "weight": 100}}, "spec.rollout.canary.weight"),
        ({"autoscaling.metric": "gpu"}, "spec.autoscaling.metric"),
        ({"rollout.maxSurge": "lots"}, "rollout.maxSurge"),
        ({"server.port": 80}, "spec.server.port"),
        ({"service.type": "ExternalName"}, "spec.service.type"),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelServiceSpec.model_validate(with_changes(changes))
    assert field in describe_validation_error(refused.value)


def children(spec: dict[str, Any], model: ServedModel = MODEL) -> list[dict[str, Any]]:
    parsed = ModelServiceSpec.model_validate(spec)
    autoscaling = parsed.autoscaling
    objects = [
        build.deployment(OWNER, parsed, model, "stable", IMAGE, None if autoscaling else parsed.fixed_replicas),
        build.deployment(OWNER, parsed, model, "canary", IMAGE, 1),
        build.service(OWNER, parsed),
    ]
    if autoscaling:
        objects.append(build.horizontal_pod_autoscaler(OWNER, autoscaling))
    budget = build.pod_disruption_budget(OWNER, parsed)
    return objects + ([budget] if budget else [])


def test_golden_manifests() -> None:
    rendered = yaml.safe_dump_all(children(example_spec()), sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 after an intended change"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"autoscaling": None, "replicas": 1, "auth": None},
        {"autoscaling.metric": "cpu", "autoscaling.behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
        {"autoscaling.metric": "rps", "resources.gpu": 1, "nodeSelector": {"gpu": "h100"}},
        {"disruption": {"minAvailable": "50%"}, "service": {"type": "LoadBalancer", "annotations": {"a": "b"}}},
    ],
)
def test_children_are_valid_kubernetes_objects(changes: dict[str, Any]) -> None:
    assert_valid_objects(children(with_changes(changes)))
    assert_valid_objects(children(with_changes(changes), ServedModel(uri="pvc://models/digits/v2")))


def test_pods_are_restricted_probed_and_drain() -> None:
    spec = ModelServiceSpec.model_validate(example_spec())
    pod = build.deployment(OWNER, spec, MODEL, "stable", IMAGE, None)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + spec.server.timeout_seconds
    env = {e["name"]: e for e in container["env"]}
    assert env["MAAS_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "digits-token", "key": "token"}
    assert env["MAAS_MODEL_SHA256"]["value"] == MODEL.sha256 and env["OMP_NUM_THREADS"]["value"] == "1"
    assert pod["metadata"]["annotations"][build.ANNOTATION_MODEL_SHA256] == MODEL.sha256


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    spec = ModelServiceSpec.model_validate(example_spec())
    assert "replicas" not in build.deployment(OWNER, spec, MODEL, "stable", IMAGE, None)["spec"]
    assert spec.autoscaling is not None
    metric = build.horizontal_pod_autoscaler(OWNER, spec.autoscaling)["spec"]["metrics"][0]
    assert metric["pods"]["metric"]["name"] == "maas_inference_inflight_requests"


def test_a_new_model_changes_the_pod_template_and_the_hash() -> None:
    spec = ModelServiceSpec.model_validate(example_spec())
    first = build.deployment(OWNER, spec, MODEL, "stable", IMAGE, None)
    second = build.deployment(OWNER, spec, ServedModel(uri=MODEL.uri, sha256="b" * 64), "stable", IMAGE, None)
    assert first["spec"]["template"] != second["spec"]["template"]
    assert build.spec_hash(first) != build.spec_hash(second)
    assert build.spec_hash(first) == build.spec_hash(build.deployment(OWNER, spec, MODEL, "stable", IMAGE, None))


def test_pvc_models_are_mounted_read_only() -> None:
    spec = ModelServiceSpec.model_validate(example_spec())
    template = build.deployment(OWNER, spec, ServedModel(uri="pvc://store/digits/model"), "stable", IMAGE, None)
    pod = template["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MAAS_MODEL_URI"] == "file:///mnt/maas/store/digits/model"
    assert {"name": "maas-model", "persistentVolumeClaim": {"claimName": "store", "readOnly": True}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "maas-model", "mountPath": "/mnt/maas/store", "readOnly": True} in mounts


def test_stable_and_canary_selectors_are_disjoint_and_the_service_selects_both() -> None:
    spec = ModelServiceSpec.model_validate(example_spec())
    stable = build.deployment(OWNER, spec, MODEL, "stable", IMAGE, 2)
    canary = build.deployment(OWNER, spec, MODEL, "canary", IMAGE, 1)
    service_selector = build.service(OWNER, spec)["spec"]["selector"].items()
    for deployment in (stable, canary):
        assert service_selector <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert stable["spec"]["selector"] != canary["spec"]["selector"]


@pytest.mark.parametrize(("stable", "weight", "expected"), [(1, 10, 1), (9, 10, 1), (3, 50, 3), (4, 20, 1), (8, 20, 2)])
def test_canary_replicas_follow_the_weight(stable: int, weight: int, expected: int) -> None:
    assert build.canary_replicas(stable, weight) == expected


def test_no_disruption_budget_for_a_single_replica() -> None:
    single = ModelServiceSpec.model_validate(with_changes({"autoscaling": None, "replicas": 1}))
    assert build.pod_disruption_budget(OWNER, single) is None
    several = ModelServiceSpec.model_validate(example_spec())
    budget = build.pod_disruption_budget(OWNER, several)
    assert budget is not None and budget["spec"]["maxUnavailable"] == 1
