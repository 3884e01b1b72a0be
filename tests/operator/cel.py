"""Evaluates a CRD's CEL rules (x-kubernetes-validations) the way the API server does."""

from __future__ import annotations

from typing import Any

import celpy

_ENVIRONMENT = celpy.Environment()


def violations(schema: dict[str, Any], value: Any, old: Any = None, path: str = "") -> list[str]:
    """Messages of every rule that fails; transition rules only when an old value exists."""
    found: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        program = _ENVIRONMENT.program(_ENVIRONMENT.compile(rule["rule"]))
        if not bool(program.evaluate(activation)):
            found.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub_schema in schema.get("properties", {}).items():
            if key in value:
                old_value = old.get(key) if isinstance(old, dict) else None
                found += violations(sub_schema, value[key], old_value, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += violations(schema["items"], item, None, f"{path}[{index}]")
    return found
