"""The generated CRDs pass the API server's own rules for CRDs (tests/operator/structural.py),
and that oracle fails on every kind of schema the API server refuses, old generator output included."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from maas_operator.api.crd import CrdSpec, custom_resource_definition
from maas_operator.api.resources import ALL
from tests.operator.structural import crd_errors, printer_column_errors, schema_errors
from tests.operator.validation import assert_valid_objects

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.kind)
def test_generated_crds_pass_the_api_servers_rules(spec: CrdSpec) -> None:
    crd = custom_resource_definition(spec)
    assert crd_errors(crd) == []
    assert_valid_objects([crd])  # the CustomResourceDefinition object itself, strictly


def test_the_chart_carries_the_very_same_crd_files() -> None:
    generated = sorted(path.name for path in (REPO / "crds").glob("*.yaml"))
    assert generated == sorted(path.name for path in (REPO / "charts/maas-operator/crds").glob("*.yaml"))
    for name in generated:
        assert (REPO / "charts/maas-operator/crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes()


OLD_QUANTITY = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+m?$"}],
}


def test_the_oracle_refuses_what_the_old_generator_emitted() -> None:
    """The form every quantity and int-or-string field had: the issue's exact refusal."""
    root = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"cpu": OLD_QUANTITY}}}}
    errors = schema_errors(root)
    assert (
        "openAPIV3Schema.properties[spec].properties[cpu].anyOf[0].type: Forbidden: must be empty to be structural"
        in errors
    )
    assert (
        "openAPIV3Schema.properties[spec].properties[cpu].anyOf[1].type: Forbidden: must be empty to be structural"
        in errors
    )


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


STRING = {"type": "string"}
OPTIONAL_NAME = obj(name=STRING)
REFUSED = [
    (obj(spec={"properties": {"a": STRING}}), "type: Required value: must not be empty for specified object fields"),
    (obj(spec={"type": "array"}), "items: Required value"),
    (obj(spec={"type": "null"}), "Unsupported value"),
    (obj(spec={"$ref": "#/definitions/x", "type": "object"}), "$ref is not supported"),
    (obj(spec={**obj(a=STRING), "additionalProperties": STRING}), "additionalProperties and properties are mutual"),
    (obj(spec={**obj(a=STRING), "anyOf": [{"description": "x"}]}), "anyOf[0].description: Forbidden"),
    (obj(spec={**obj(a=STRING), "allOf": [{"properties": {"b": {}}}]}), "must be specified outside the junctor"),
    (obj(spec={"type": "string", "oneOf": [{"type": "string"}]}), "oneOf[0].type: Forbidden"),
    (obj(spec={"type": "string", "not": {"x-kubernetes-int-or-string": True}}), "not.x-kubernetes-int-or-string"),
    (obj(spec={"type": "array", "items": STRING, "uniqueItems": True}), "uniqueItems: Forbidden"),
    (obj(spec={"type": "integer", "minimum": 0, "exclusiveMinimum": 0}), "must be a boolean"),
    (obj(spec={"type": "string", "const": "a"}), "const: unknown field"),
    (obj(metadata={"type": "object", "properties": {"labels": STRING}}), "must not specify anything other than name"),
    (obj(spec={"type": "string", "default": None}), "a null default is no default"),
    (obj(spec={**obj(a=STRING), "default": {"b": "x"}}), "must not have fields the schema prunes"),
    (obj(spec={"type": "integer", "minimum": 1, "default": 0}), "default: 0 is less than the minimum of 1"),
    (obj(spec={"type": "string", "pattern": "(?=a)"}), "lookarounds and backreferences are not RE2"),
    (obj(spec={"type": "array", "items": OPTIONAL_NAME, "x-kubernetes-list-type": "map"}), "map-keys: must not be"),
    (
        obj(
            spec={
                "type": "array",
                "items": OPTIONAL_NAME,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            }
        ),
        "must have a default or be required",
    ),
    (obj(spec={"type": "string", "x-kubernetes-list-type": "set"}), "must be array if x-kubernetes-list-type"),
    (obj(spec={**STRING, "x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}]}), "allows exactly"),
    (obj(spec={**obj(a=STRING), "x-kubernetes-validations": [{"rule": "self.a == 'x'"}]}), "without has(self.a)"),
    (
        obj(spec={**obj(a=STRING), "x-kubernetes-validations": [{"rule": "self.a ==", "message": "m"}]}),
        "does not compile",
    ),
    (obj(spec={**obj(a=STRING), "x-kubernetes-validations": [{"rule": "true", "message": "a\nb"}]}), "single line"),
    (
        obj(spec={**obj(a=STRING), "x-kubernetes-validations": [{"rule": "true", "fieldPath": ".b"}]}),
        "does not name a field",
    ),
    (
        obj(spec={**obj(a=STRING), "x-kubernetes-validations": [{"rule": "true", "reason": "Bad"}]}),
        "reason: Unsupported",
    ),
    (
        obj(spec={"type": "array", "items": {**STRING, "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}}),
        "oldSelf cannot be used on the uncorrelatable portion",
    ),
    (
        obj(spec={"type": "array", "items": STRING, "x-kubernetes-validations": [{"rule": "self.all(x, x != '')"}]}),
        "without maxItems",
    ),
    (
        obj(
            spec={
                "type": "object",
                "additionalProperties": STRING,
                "x-kubernetes-validations": [{"rule": "self.all(k, k != '')"}],
            }
        ),
        "without maxProperties",
    ),
    (obj(spec={**STRING, "x-kubernetes-validations": [{"rule": "self.matches('^a$')"}]}), "without maxLength"),
]


@pytest.mark.parametrize(("root", "refusal"), REFUSED, ids=[refusal for _, refusal in REFUSED])
def test_the_oracle_refuses_each_kind_of_bad_schema(root: dict[str, Any], refusal: str) -> None:
    errors = schema_errors(root)
    assert any(refusal in error for error in errors), errors


def test_the_oracle_accepts_the_allowed_forms() -> None:
    int_or_string = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    root = obj(
        metadata={"type": "object"},
        spec=obj(
            surge={**int_or_string, "pattern": "^[0-9]+%$", "maxLength": 8},
            raw={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            items={
                "type": "array",
                "items": {**obj(name=STRING), "required": ["name"]},
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    )
    assert schema_errors(root) == []


def test_printer_columns_reach_fields_of_their_type() -> None:
    root = obj(status=obj(phase=STRING, ready={"type": "integer"}))
    good = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]
    assert printer_column_errors(good, root, "v") == []
    bad = [
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
        {"name": "Gone", "type": "string", "jsonPath": ".status.gone"},
        {"name": "Odd", "type": "float", "jsonPath": ".status.phase"},
        {"name": "Path", "type": "string", "jsonPath": "status[0]"},
    ]
    errors = printer_column_errors(bad, root, "v")
    assert len(errors) == 4, errors
