"""The TrainingJob API: pydantic and the CRD's schema and CEL rules refuse the same bad specs."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from maas_operator.api.common import describe_validation_error
from maas_operator.api.crd import custom_resource_definition
from maas_operator.api.resources import TRAININGJOB
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.cli import main
from tests.operator.cel import violations

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD = custom_resource_definition(TRAININGJOB)
ROOT_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = ROOT_SCHEMA["properties"]["spec"]


def example_spec() -> dict[str, Any]:
    documents = yaml.safe_load_all((REPO / "examples" / "trainingjob.yaml").read_text())
    job = next(d for d in documents if d["kind"] == "TrainingJob")
    return dict(job["spec"])


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    return changed(example_spec(), changes)


def changed(original: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of a spec with dotted paths set (None removes the field)."""
    spec = copy.deepcopy(original)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


def test_example_is_valid_everywhere() -> None:
    spec = example_spec()
    parsed = TrainingJobSpec.model_validate(spec)
    assert parsed.workers.replicas == 2 and parsed.run_policy.backoff_limit == 3
    assert violations(SPEC_SCHEMA, spec) == []


BAD_SPECS = [
    ({"workers.minReplicas": 3}, "minReplicas", "minReplicas must be less than or equal to replicas"),
    ({"command": ["python", "train.py"]}, "exactly one of trainer", "set exactly one of trainer"),
    ({"trainer": None}, "exactly one of trainer", "set exactly one of trainer"),
    ({"args": ["--fast"]}, "args need a command", "args need a command"),
    ({"checkpoint.uri": "s3://bucket/ckpt"}, "exactly one of uri or pvc", "set exactly one of uri or pvc"),
    ({"output.pvc.path": "/abs"}, "relative", "path must be relative"),
]


@pytest.mark.parametrize(("changes", "pydantic_says", "cel_says"), BAD_SPECS)
def test_bad_specs_are_refused_by_both(changes: dict[str, Any], pydantic_says: str, cel_says: str) -> None:
    spec = with_changes(changes)
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(spec)
    assert pydantic_says in describe_validation_error(refused.value)
    assert any(cel_says in message for message in violations(SPEC_SCHEMA, spec))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"workers.resources.memory": "lots"}, "spec.workers.resources.memory"),
        ({"workers.replicas": 0}, "spec.workers.replicas"),
        ({"trainer.model": "resnet"}, "spec.trainer.model"),
        ({"trainer.hyperparameters.learningRate": -1}, "spec.trainer.hyperparameters.learningRate"),
        ({"runPolicy.cleanPodPolicy": "Sometimes"}, "spec.runPolicy.cleanPodPolicy"),
        ({"workers.gpus": 1}, "spec.workers.gpus"),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(with_changes(changes))
    assert field in describe_validation_error(refused.value)


def test_immutable_fields_and_mutable_run_policy() -> None:
    old = example_spec()
    resized = with_changes({"workers.replicas": 4})
    assert "spec.workers: workers is immutable" in " ".join(violations(SPEC_SCHEMA, resized, old, "spec"))
    suspended = with_changes({"runPolicy.suspend": True, "runPolicy.activeDeadlineSeconds": 60})
    assert violations(SPEC_SCHEMA, suspended, old, "spec") == []


def test_kubectl_explain_has_descriptions() -> None:
    workers = SPEC_SCHEMA["properties"]["workers"]
    assert "one Ray Train worker" in workers["description"]
    for name in ("replicas", "minReplicas", "resources", "nodeSelector", "tolerations"):
        assert workers["properties"][name].get("description"), name
    conditions = ROOT_SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"


def test_crds_directory_matches_the_models(tmp_path: pathlib.Path) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert generated == committed, "crds/ is stale: run `make crds` and commit the result"
