"""CustomResourceDefinitions generated from the pydantic models (the single source of truth).

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined,
every node typed, `null` branches of optional fields dropped, titles removed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from maas_workloads.contract import API_GROUP, API_VERSION

_DROPPED_KEYS = {"title", "$defs", "additionalProperties"}


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
    max_name_length: int
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

    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
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
    if result.get("default") in ({}, []) and "properties" not in result:
        result.pop("default")  # empty maps and lists are the same as absent
    if result.get("default") == {} and "properties" in result:
        result["default"] = {}
    return result


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
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {spec.max_name_length}",
                                    "message": f"metadata.name must be at most {spec.max_name_length} "
                                    "characters, so that child object names fit in 63",
                                }
                            ],
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
