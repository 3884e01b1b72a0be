"""Admission rules: the CRD (schema + CEL) and pydantic refuse the same specs with the same message.

`refusals` gives both answers for one spec: what the API server says (tests/operator/cel.py) and
what `maas render`, `maas run` and the operator say (pydantic).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from maas_operator.api import modelservice, quantity, trainingjob
from maas_operator.api.common import describe_validation_error
from maas_operator.api.crd import custom_resource_definition
from maas_operator.api.resources import MODELSERVICE, TRAININGJOB, InvalidResourceError, parse_spec
from maas_operator.api.validation import KEY_MESSAGE, LABEL_VALUE_MESSAGE
from maas_operator.status.view import object_view
from tests.operator import test_api, test_modelservice_api
from tests.operator.cel import violations
from tests.operator.test_api import changed

TJ_ROOT = custom_resource_definition(TRAININGJOB)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
MS_ROOT = custom_resource_definition(MODELSERVICE)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
KINDS = {
    "TrainingJob": (TJ_ROOT, trainingjob.TrainingJobSpec, test_api.example_spec),
    "ModelService": (MS_ROOT, modelservice.ModelServiceSpec, test_modelservice_api.example_spec),
}


def refusals(kind: str, spec: dict[str, Any]) -> tuple[str, str]:
    """(the API server's answer, pydantic's answer), each '' when the spec is accepted."""
    root, model, _ = KINDS[kind]
    api_server = "; ".join(violations(root["properties"]["spec"], spec, path="spec"))
    try:
        model.model_validate(spec)
        operator = ""
    except ValidationError as error:
        operator = describe_validation_error(error)
    return api_server, operator


def assert_both_refuse(kind: str, changes: dict[str, Any], message: str, field: str) -> None:
    spec = changed(KINDS[kind][2](), changes)
    for answer in refusals(kind, spec):
        problems = answer.split("; ")
        assert any(p.startswith(f"{field}: ") and message in p for p in problems), (field, message, answer)


# --- object names -------------------------------------------------------------------------
def document(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "maas.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": KINDS[kind][2]()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("name", "rule"), [("digits.v2", 0), ("1digits", 0), ("Digits", 0), ("digits-", 0), ("x" * 64, 1)]
)
def test_names_no_child_could_have_are_refused_alike(kind: str, name: str, rule: int) -> None:
    rules = trainingjob.NAME_RULES if kind == "TrainingJob" else modelservice.NAME_RULES
    message = rules[rule].message
    assert violations(KINDS[kind][0], document(kind, name)) == [f"<root>: {message}"]
    with pytest.raises(InvalidResourceError) as refused:
        parse_spec(document(kind, name))
    assert str(refused.value) == message
    body = {**document(kind, name), "metadata": {"name": name, "namespace": "a", "uid": "u"}}
    status_model = trainingjob.TrainingJobStatus if kind == "TrainingJob" else modelservice.ModelServiceStatus
    view = object_view(body, None, kind, rules, KINDS[kind][1], status_model)
    assert view.spec is None and view.spec_error == message


@pytest.mark.parametrize(
    ("kind", "limit"), [("TrainingJob", trainingjob.MAX_NAME_LENGTH), ("ModelService", modelservice.MAX_NAME_LENGTH)]
)
def test_the_longest_allowed_name_is_accepted(kind: str, limit: int) -> None:
    name = "a" * limit
    assert violations(KINDS[kind][0], document(kind, name)) == []
    parse_spec(document(kind, name))
    assert violations(KINDS[kind][0], document(kind, name + "a")) != []


# --- labels, annotations, node selectors, tolerations ---------------------------------------
LONG = "a" * 64
BAD_MAPS = [
    ("workers.labels", {"team/a/b": "x"}, KEY_MESSAGE),
    ("workers.labels", {f"{LONG}": "x"}, KEY_MESSAGE),
    ("workers.labels", {f"{'a' * 254}/name": "x"}, KEY_MESSAGE),
    ("workers.labels", {"-team": "x"}, KEY_MESSAGE),
    ("workers.labels", {"team": "a b"}, LABEL_VALUE_MESSAGE),
    ("workers.labels", {"team": "-a"}, LABEL_VALUE_MESSAGE),
    ("workers.labels", {"app.kubernetes.io/name": "mine"}, "are set by the operator: they select and own"),
    ("head.labels", {"maas.dev/role": "x"}, "are set by the operator: they select and own"),
    ("workers.annotations", {"bad key": "x"}, KEY_MESSAGE),
    ("workers.annotations", {"maas.dev/spec-hash": "x"}, "are set by the operator: they carry the spec"),
    ("workers.annotations", {f"a{i}": "x" * 5000 for i in range(60)}, "must be at most 256 KiB in all"),
    ("workers.nodeSelector", {"gpu": "a/b"}, LABEL_VALUE_MESSAGE),
    ("workers.nodeSelector", {"/gpu": "h100"}, KEY_MESSAGE),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_MAPS)
def test_labels_and_annotations_are_validated_as_kubernetes_does(field: str, value: Any, message: str) -> None:
    assert_both_refuse("TrainingJob", {field: value}, message, f"spec.{field}")


def test_service_annotations_and_modelservice_labels() -> None:
    assert_both_refuse(
        "ModelService", {"service": {"annotations": {"x y": "1"}}}, KEY_MESSAGE, "spec.service.annotations"
    )
    assert_both_refuse("ModelService", {"labels": {"maas.dev/track": "x"}}, "are set by the operator", "spec.labels")


def test_valid_keys_values_and_prefixes_are_accepted() -> None:
    labels = {"team": "ml", "example.com/owner": "a.b_c-d", "A": "", f"{'a' * 253}/{'b' * 63}": "z" * 63}
    spec = changed(test_api.example_spec(), {"workers.labels": labels, "workers.annotations": {"x.io/y": "{}"}})
    assert refusals("TrainingJob", spec) == ("", "")


@pytest.mark.parametrize(
    ("toleration", "message"),
    [
        ({"operator": "Equal", "value": "x"}, "an empty key needs operator Exists"),
        ({"key": "gpu", "operator": "Exists", "value": "x"}, "operator Exists takes no value"),
        ({"key": "gpu", "tolerationSeconds": 10, "effect": "NoSchedule"}, "tolerationSeconds needs effect NoExecute"),
        ({"key": "a b", "operator": "Exists"}, KEY_MESSAGE),
        ({"key": "gpu", "value": "a b"}, LABEL_VALUE_MESSAGE),
    ],
)
def test_tolerations_are_validated_as_kubernetes_does(toleration: dict[str, Any], message: str) -> None:
    assert_both_refuse("TrainingJob", {"workers.tolerations": [toleration]}, message, "spec.workers.tolerations[0]")


def test_kueue_label_comes_only_from_the_queue_name() -> None:
    message = f"labels: {trainingjob.KUEUE_QUEUE_LABEL} is set on every pod from runPolicy.queueName"
    spec = changed(test_api.example_spec(), {"head.labels": {trainingjob.KUEUE_QUEUE_LABEL: "q"}})
    api_server, operator = refusals("TrainingJob", spec)
    assert message in api_server and message in operator
    assert_both_refuse("TrainingJob", {"runPolicy.queueName": "a b"}, "", "spec.runPolicy.queueName")


# --- quantities -----------------------------------------------------------------------------
ACCEPTED_QUANTITIES = [
    ("2G", Decimal(2 * 10**9)),
    ("1e3", Decimal(1000)),
    ("1E3", Decimal(1000)),
    ("500m", Decimal("0.5")),
    ("1.5Gi", Decimal(3 * 2**29)),
    (2, Decimal(2)),
    ("+1", Decimal(1)),
    (".5", Decimal("0.5")),
    ("1.", Decimal(1)),
    ("2E", Decimal(2 * 10**18)),
    ("1e-3", Decimal("0.001")),
    ("0.5k", Decimal(500)),
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED_QUANTITIES)
def test_every_quantity_form_kubernetes_accepts_is_accepted(value: int | str, expected: Decimal) -> None:
    spec = changed(test_modelservice_api.example_spec(), {"resources.cpu": value, "resources.memory": value})
    assert refusals("ModelService", spec) == ("", "")
    assert quantity.parse_quantity(str(value)) == expected


@pytest.mark.parametrize("value", [-1, 0, "0", "-1", "0m", "0.0Gi", "-500m", "lots", "1.5.0", "1e", "Gi", "1Gb", "1 G"])
@pytest.mark.parametrize("field", ["resources.cpu", "resources.memory", "resources.ephemeralStorage"])
def test_non_positive_or_malformed_quantities_are_refused_alike(value: int | str, field: str) -> None:
    assert_both_refuse("ModelService", {field: value}, quantity.POSITIVE.message, f"spec.{field}")


def test_a_decimal_number_must_be_quoted_and_booleans_are_no_quantity() -> None:
    for value in (1.5, True):
        api_server, operator = refusals(
            "ModelService", changed(test_modelservice_api.example_spec(), {"resources.cpu": value})
        )
        assert "spec.resources.cpu" in api_server
        assert f"spec.resources.cpu: {quantity.POSITIVE.message}" in operator


def test_strict_types_as_in_the_crd() -> None:
    for changes, field in [
        ({"resources.gpu": "1"}, "spec.resources.gpu"),
        ({"server.port": "8080"}, "spec.server.port"),
        ({"rollout.autoRollback": "yes"}, "spec.rollout.autoRollback"),
    ]:
        api_server, operator = refusals("ModelService", changed(test_modelservice_api.example_spec(), changes))
        assert field in api_server and field in operator, (api_server, operator)


@pytest.mark.parametrize(
    ("changes", "message", "field"),
    [
        ({"rollout.maxSurge": -1}, modelservice.COUNT_OR_PERCENT.message, "spec.rollout.maxSurge"),
        ({"rollout.maxSurge": "5"}, modelservice.COUNT_OR_PERCENT.message, "spec.rollout.maxSurge"),
        (
            {"rollout.maxUnavailable": "101%"},
            modelservice.COUNT_OR_PERCENT_UP_TO_100.message,
            "spec.rollout.maxUnavailable",
        ),
        (
            {"disruption": {"minAvailable": "150%"}},
            modelservice.COUNT_OR_PERCENT_UP_TO_100.message,
            "spec.disruption.minAvailable",
        ),
        ({"rollout.maxSurge": "0%", "rollout.maxUnavailable": 0}, modelservice.NOT_BOTH_ZERO.message, "spec.rollout"),
    ],
)
def test_counts_and_percentages(changes: dict[str, Any], message: str, field: str) -> None:
    assert_both_refuse("ModelService", changes, message, field)


# --- immutable fields -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {"image": "registry.example/other:1"},
        {"checkpoint": None},
        {"checkpoint.keep": 9},
        {"workers.replicas": 3},
        {"head": {"resources": {"cpu": "2"}}},
        {"output": {"uri": "s3://bucket/elsewhere"}},
        {"trainer.hyperparameters.epochs": 1},
        {"trainer": None, "command": ["python", "train.py"], "args": ["--fast"]},
    ],
)
def test_immutable_fields_can_be_neither_set_changed_nor_removed(changes: dict[str, Any]) -> None:
    accepted = test_api.example_spec()
    edited = changed(accepted, changes)
    api_server = violations(TJ_ROOT["properties"]["spec"], edited, accepted, "spec")
    operator = trainingjob.immutable_changes(
        trainingjob.TrainingJobSpec.model_validate(accepted), trainingjob.TrainingJobSpec.model_validate(edited)
    )
    assert operator, "pydantic found no change"
    assert sorted(m.split(": ", 1)[1] for m in api_server) == sorted(operator)
    assert all("is immutable: it cannot be set, changed or removed" in m for m in operator)


def test_the_example_without_image_may_not_gain_one_but_run_policy_changes() -> None:
    accepted = test_api.example_spec()
    assert "image" not in accepted
    edited = changed(accepted, {"runPolicy.suspend": True, "runPolicy.backoffLimit": 5})
    assert violations(TJ_ROOT["properties"]["spec"], edited, accepted, "spec") == []
    gained = changed(accepted, {"image": "registry.example/mine:1"})
    assert violations(TJ_ROOT["properties"]["spec"], gained, accepted, "spec") == [
        "spec.image: image is immutable: it cannot be set, changed or removed once the TrainingJob exists"
    ]
