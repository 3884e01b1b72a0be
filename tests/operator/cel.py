"""Validates a custom resource against a CRD schema the way the API server does, as far as a test can.

In the API server's order: defaults from the schema are applied first, then the OpenAPI value
validations (type, pattern, bounds, required, maxItems/maxProperties/maxLength; unknown fields
refused as `kubectl apply`'s strict field validation does), then every CEL rule
(`x-kubernetes-validations`) with cel-python, transition rules only where an old value exists,
on values typed as the API server types them (a `number` is a double).
Kubernetes' CEL list library function `sum()` is provided; its other libraries are not used by our
rules. Messages are `<path>: <message>`, the path including a rule's fieldPath.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

_ENVIRONMENT = celpy.Environment()
_VALUE_KEYS = {
    "type",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "required",
    "anyOf",
}


def _sum(values: celtypes.ListType) -> celtypes.IntType:
    total = 0
    for value in values:
        total += int(value)
    return celtypes.IntType(total)


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in, as the API server stores it."""
    if isinstance(value, dict):
        result = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = with_defaults(sub, result[key])
        if isinstance(schema.get("additionalProperties"), dict):
            result = {k: with_defaults(schema["additionalProperties"], v) for k, v in result.items()}
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], item) for item in value]
    return value


def _value_errors(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, bool]]:
    """(message, blocking): a wrong type blocks the CEL rules, as in the API server."""
    found: list[tuple[str, bool]] = []
    local = {key: val for key, val in schema.items() if key in _VALUE_KEYS}
    for error in jsonschema.Draft4Validator(local).iter_errors(value):
        found.append((f"{path or '<root>'}: {error.message}", error.validator in ("type", "anyOf")))
    if any(blocking for _, blocking in found):
        return found
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        # An object without properties is the root's metadata or preserves what it holds.
        open_ended = (
            schema.get("x-kubernetes-preserve-unknown-fields")
            or "additionalProperties" in schema
            or "properties" not in schema
        )
        for key, item in value.items():
            if key in properties:
                found += _value_errors(properties[key], item, f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                found += _value_errors(schema["additionalProperties"], item, f"{path}[{key}]")
            elif not open_ended:
                found.append((f"{path}.{key}: unknown field", True))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += _value_errors(schema["items"], item, f"{path}[{index}]")
    return found


def as_schema_types(schema: dict[str, Any], value: Any) -> Any:
    """`value` with every integer at a `type: number` node made a float: the API server hands CEL a
    double there whatever the JSON said (apiserver's UnstructuredToVal), so `x >= 1.0` holds for 1."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {
            key: as_schema_types(properties[key], item)
            if key in properties
            else as_schema_types(extra, item)
            if isinstance(extra, dict)
            else item
            for key, item in value.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [as_schema_types(schema["items"], item) for item in value]
    return value


def cel_violations(schema: dict[str, Any], value: Any, old: Any = None, path: str = "") -> list[str]:
    """Messages of every CEL rule that fails; transition rules only when an old value exists."""
    found: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue
        activation = {"self": celpy.json_to_cel(as_schema_types(schema, value))}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(as_schema_types(schema, old))
        program = _ENVIRONMENT.program(_ENVIRONMENT.compile(rule["rule"]), functions={"sum": _sum})
        result = program.evaluate(activation)
        if isinstance(result, celpy.CELEvalError) or not bool(result):
            found.append(f"{path + rule.get('fieldPath', '') or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub_schema in schema.get("properties", {}).items():
            if key in value:
                old_value = old.get(key) if isinstance(old, dict) else None
                found += cel_violations(sub_schema, value[key], old_value, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += cel_violations(schema["items"], item, None, f"{path}[{index}]")
    return found


def violations(schema: dict[str, Any], value: Any, old: Any = None, path: str = "") -> list[str]:
    """What the API server would answer to a create (or, with `old`, an update) of `value`.

    Like the API server, CEL rules run only once the value passed the schema's own validations.
    """
    value = with_defaults(schema, value)
    old = None if old is None else with_defaults(schema, old)
    errors = _value_errors(schema, value, path)
    if any(blocking for _, blocking in errors):
        return [message for message, _ in errors]
    return [message for message, _ in errors] + cel_violations(schema, value, old, path)
