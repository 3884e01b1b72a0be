"""CustomResourceDefinitions generated from the pydantic models (the single source of truth).

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema (apiextensions.k8s.io/v1,
"Specifying a structural schema"): references inlined, every node typed, `null` branches of
optional fields and `null` defaults dropped, titles removed, and int-or-string fields in the one
form a structural schema allows, `anyOf: [{type: integer}, {type: string}]` with every constraint
beside it. tests/operator/structural.py checks the result against the API server's rules.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from maas_operator.api.validation import Rule
from maas_workloads.contract import API_GROUP, API_VERSION

_DROPPED_KEYS = {"title", "$defs", "additionalProperties"}
INT_OR_STRING_BRANCHES = [{"type": "integer"}, {"type": "string"}]


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CrdSpec:
    kind: str
    plural: str
    short_names: list[str]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    name_rules: list[Rule]
    """CEL rules on metadata.name, at the root of the schema."""
    printer_columns: list[PrinterColumn] = field(default_factory=list)
    categories: list[str] = field(default_factory=lambda: ["maas"])


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 structural schema of a pydantic model, as Kubernetes wants it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.get("$defs", {})
    return _convert(raw, definitions)


def _convert(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        # Sibling keys (description, default, CEL rules) refine the referenced definition.
        merged = {**_convert(target, definitions), **{k: v for k, v in node.items() if k != "title"}}
        if "x-kubernetes-validations" in target and "x-kubernetes-validations" in node:
            merged["x-kubernetes-validations"] = target["x-kubernetes-validations"] + node["x-kubernetes-validations"]
        return _convert(merged, definitions) if "$ref" in merged else merged

    if node.get("x-kubernetes-int-or-string"):
        return _int_or_string(node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {branches} as a structural schema")
        node.pop("default", None)  # the default of an optional field is "absent"
        return _convert({**branches[0], **node}, definitions)

    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            result[key] = {name: _convert(sub, definitions) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            result[key] = _convert(value, definitions)
        elif key == "const":
            result["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 bounds become OpenAPI 3.0's boolean flags.
            result["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            result[key] = True
        else:
            result[key] = value

    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        result["additionalProperties"] = _convert(additional, definitions)
    if result.get("x-kubernetes-preserve-unknown-fields"):
        result.setdefault("type", "object")
    if "enum" in result and "type" not in result:
        result["type"] = "string"
    if "default" in result and result["default"] is None:
        result.pop("default")  # a null default is no default; the API server would prune it
    if result.get("default") in ({}, []) and "properties" not in result:
        result.pop("default")  # empty maps and lists are the same as absent
    if result.get("default") == {} and "properties" in result:
        result["default"] = {}
    return result


def _int_or_string(node: dict[str, Any]) -> dict[str, Any]:
    """An int-or-string node in its structural form; ValueError for a branch that constrains more."""
    branches = [branch for branch in node.get("anyOf", INT_OR_STRING_BRANCHES) if branch.get("type") != "null"]
    if sorted(branches, key=lambda branch: str(branch.get("type"))) != INT_OR_STRING_BRANCHES:
        raise ValueError(f"int-or-string branches {branches}: put constraints beside anyOf, not inside")
    result = {key: value for key, value in node.items() if key not in _DROPPED_KEYS | {"anyOf", "type"}}
    if result.get("default") is None:
        result.pop("default", None)
    return {**result, "anyOf": [dict(branch) for branch in INT_OR_STRING_BRANCHES]}


def custom_resource_definition(spec: CrdSpec) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(spec.spec_model)
    status_schema = structural_schema(spec.status_model)
    status_schema.pop("required", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{spec.plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "maas-operator", "app.kubernetes.io/part-of": "maas"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": spec.kind,
                "listKind": f"{spec.kind}List",
                "plural": spec.plural,
                "singular": spec.kind.lower(),
                "shortNames": spec.short_names,
                "categories": spec.categories,
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": column.name,
                            "type": column.type,
                            "jsonPath": column.json_path,
                            **({"description": column.description} if column.description else {}),
                            **({"priority": column.priority} if column.priority else {}),
                        }
                        for column in spec.printer_columns
                    ]
                    + [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": spec_schema.get("description", spec.kind),
                            "required": ["spec"],
                            "x-kubernetes-validations": [rule.schema() for rule in spec.name_rules],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }
