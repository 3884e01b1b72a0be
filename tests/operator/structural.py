"""The API server's rules for a CRD's schema, as a test oracle (apiextensions.k8s.io/v1).

From the Kubernetes documentation ("Specifying a structural schema", "Validation rules",
"Defaulting") and apiextensions-apiserver's ValidateStructural / ValidateCustomResourceDefinition:

- every node of the structural part (root, properties, items, additionalProperties) has a
  non-empty `type`, except under `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`;
  arrays have `items`; the root is an object;
- inside `anyOf`/`allOf`/`oneOf`/`not` only value validations: no `type` (except the int-or-string
  form `anyOf: [{type: integer}, {type: string}]`, exactly), `properties` of fields that are not also
  specified outside, `additionalProperties`, `default`, `description`, `title`, `nullable`, nor any
  `x-kubernetes-*` extension;
- no `$ref`, `id`, `definitions`, `dependencies`, `patternProperties`, `additionalItems`,
  `uniqueItems: true`, `type: null`; `additionalProperties` never with `properties`, never at the root;
- `metadata` at the root restricts at most `name` and `generateName`; no defaults in metadata;
- with the status subresource, the root holds only description, type, required, properties and
  x-kubernetes-validations (of the keys we use);
- `x-kubernetes-list-type: map` needs `x-kubernetes-list-map-keys`, object items, scalar keys
  that are required or defaulted; `x-kubernetes-map-type` is on objects;
- defaults validate against their own schema and hold no field the schema would prune;
- every CEL rule has a rule and a one-line message, compiles, names an existing `fieldPath`, and uses
  `oldSelf` only where old and new values can be correlated (not under a list's items unless the
  list is a map, not under additionalProperties).

Two further checks are ours, because an API server applies them only when it runs the rule:
a rule reaching an optional field without a default must guard it with `has()` (else "no such
key" at run time); and a rule iterating a list or map, or matching a string, must sit on a node
bounded by maxItems, maxProperties or maxLength (else the API server's cost estimate, which
assumes the request-size limit, refuses the CRD).
"""

from __future__ import annotations

import re
from typing import Any

import celpy
import jsonschema

from tests.operator.cel import with_defaults

TYPES = {"string", "number", "integer", "boolean", "array", "object"}
KNOWN_KEYS = {
    "id",
    "$schema",
    "$ref",
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "patternProperties",
    "dependencies",
    "additionalItems",
    "definitions",
    "externalDocs",
    "example",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
UNSUPPORTED = ("$ref", "id", "definitions", "dependencies", "patternProperties", "additionalItems")
NOT_IN_JUNCTORS = ("type", "additionalProperties", "default", "title", "description", "nullable")
ROOT_KEYS_WITH_STATUS = {"description", "type", "required", "properties", "x-kubernetes-validations", "title"}
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
JUNCTORS = ("anyOf", "allOf", "oneOf")
RULE_REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}
ITERATING = re.compile(r"\.(all|exists|exists_one|map|filter)\(")
FIELD_ACCESS = re.compile(r"\b(self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
RE2_UNSUPPORTED = re.compile(r"\(\?[=!<]|\\[1-9]")
_CEL = celpy.Environment()


def crd_errors(crd: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse `crd`, as `<path>: <reason>`."""
    errors: list[str] = []
    spec = crd["spec"]
    names = spec["names"]
    if crd["metadata"]["name"] != f"{names['plural']}.{spec['group']}":
        errors.append('metadata.name: must be spec.names.plural+"."+spec.group')
    storage = [version for version in spec["versions"] if version.get("storage")]
    if len(storage) != 1:
        errors.append("spec.versions: exactly one version must be the storage version")
    for index, version in enumerate(spec["versions"]):
        path = f"spec.versions[{index}].schema.openAPIV3Schema"
        root = version["schema"]["openAPIV3Schema"]
        if "status" in version.get("subresources", {}):
            extra = set(root) - ROOT_KEYS_WITH_STATUS
            if extra:
                errors.append(f"{path}: only {sorted(ROOT_KEYS_WITH_STATUS)} are allowed at the root, not {extra}")
        errors += schema_errors(root, path)
        errors += printer_column_errors(version.get("additionalPrinterColumns", []), root, f"spec.versions[{index}]")
    return errors


def schema_errors(root: dict[str, Any], path: str = "openAPIV3Schema") -> list[str]:
    errors = _structural(root, path, "root", correlatable=True)
    if root.get("type") != "object":
        errors.append(f"{path}.type: must be object at the root")
    if "additionalProperties" in root:
        errors.append(f"{path}.additionalProperties: Forbidden: must not be used at the root")
    if root.get("nullable"):
        errors.append(f"{path}.nullable: Forbidden: nullable cannot be true at the root")
    metadata = root.get("properties", {}).get("metadata")
    if metadata is not None:
        restricted = {key: value for key, value in metadata.items() if key != "type"}
        names = set(restricted.pop("properties", {}))
        if metadata.get("type") != "object" or restricted or names - {"name", "generateName"}:
            errors.append(
                f"{path}.properties[metadata]: Forbidden: must not specify anything other than name and generateName"
            )
    for key in ("apiVersion", "kind"):
        node = root.get("properties", {}).get(key)
        if node is not None and (node.get("type") != "string" or "default" in node):
            errors.append(f"{path}.properties[{key}]: must be a string without a default")
    return errors


def _structural(node: dict[str, Any], path: str, level: str, correlatable: bool) -> list[str]:
    """The invariants of one structural node and everything under it."""
    errors = [f"{path}.{key}: unknown field" for key in node if key not in KNOWN_KEYS]
    errors += [f"{path}.{key}: Forbidden: {key} is not supported" for key in UNSUPPORTED if key in node]
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    node_type = node.get("type")
    if preserve is not None and preserve is not True:
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be true or undefined")
    if int_or_string and preserve:
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be false if x-kubernetes-int-or-string")
    if not node_type and not int_or_string and not preserve:
        where = {"root": "at the root", "items": "for specified array items", "field": "for specified object fields"}
        errors.append(f"{path}.type: Required value: must not be empty {where[level]}")
    if node_type and node_type not in TYPES:
        errors.append(f"{path}.type: Unsupported value: {node_type!r}")
    if node_type == "array" and not isinstance(node.get("items"), dict):
        errors.append(f"{path}.items: Required value: must be a schema object")
    if node.get("uniqueItems"):
        errors.append(f"{path}.uniqueItems: Forbidden: cannot be set to true")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            errors.append(f"{path}.{key}: must be a boolean (OpenAPI 3.0), beside minimum/maximum")
    additional = node.get("additionalProperties")
    if additional is not None and node.get("properties") and additional is not True:
        errors.append(
            f"{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        )
    errors += _value_validation(node, path, skip_any_of=int_or_string and node.get("anyOf") == INT_OR_STRING_ANY_OF)
    if int_or_string and "anyOf" in node and node["anyOf"] != INT_OR_STRING_ANY_OF:
        errors.append(f"{path}.anyOf: x-kubernetes-int-or-string allows exactly [{{type: integer}}, {{type: string}}]")
    errors += _extension_errors(node, path)
    errors += _default_errors(node, path)
    errors += _rule_errors(node, path, correlatable)
    for name, sub in node.get("properties", {}).items():
        sub_correlatable = correlatable and node.get("x-kubernetes-map-type") != "atomic"
        errors += _structural(sub, f"{path}.properties[{name}]", "field", sub_correlatable)
    if isinstance(node.get("items"), dict):
        errors += _structural(node["items"], f"{path}.items", "items", node.get("x-kubernetes-list-type") == "map")
    if isinstance(additional, dict):
        errors += _structural(additional, f"{path}.additionalProperties", "field", correlatable=False)
    return errors


def _value_validation(node: dict[str, Any], path: str, skip_any_of: bool) -> list[str]:
    errors: list[str] = []
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except re.error as error:
            errors.append(f"{path}.pattern: must be a valid regular expression: {error}")
        if RE2_UNSUPPORTED.search(node["pattern"]):
            errors.append(f"{path}.pattern: lookarounds and backreferences are not RE2")
    nested = [(f"{path}.{j}[{i}]", branch) for j in JUNCTORS for i, branch in enumerate(node.get(j, []))]
    if skip_any_of:
        nested = [(p, branch) for p, branch in nested if ".anyOf[" not in p]
    if "not" in node:
        nested.append((f"{path}.not", node["not"]))
    for nested_path, branch in nested:
        errors += _nested(branch, nested_path, node)
    return errors


def _nested(branch: dict[str, Any], path: str, outer: dict[str, Any]) -> list[str]:
    """A node under a logical junctor: value validations only, of fields also specified outside."""
    errors = [f"{path}.{key}: Forbidden: must be empty to be structural" for key in NOT_IN_JUNCTORS if key in branch]
    errors += [
        f"{path}.{key}: Forbidden: must be empty to be structural" for key in branch if key.startswith("x-kubernetes-")
    ]
    for name, sub in branch.get("properties", {}).items():
        if name == "metadata":
            errors.append(f"{path}.properties[metadata]: Forbidden: must not be specified in a nested context")
        if name not in outer.get("properties", {}):
            errors.append(f"{path}.properties[{name}]: Required value: must be specified outside the junctor too")
        errors += _nested(sub, f"{path}.properties[{name}]", outer.get("properties", {}).get(name, {}))
    if isinstance(branch.get("items"), dict):
        if not isinstance(outer.get("items"), dict):
            errors.append(f"{path}.items: Required value: must be specified outside the junctor too")
        errors += _nested(branch["items"], f"{path}.items", outer.get("items") or {})
    errors += _value_validation(branch, path, skip_any_of=False)
    return errors


def _extension_errors(node: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None:
        if node.get("type") != "array":
            errors.append(f"{path}.type: must be array if x-kubernetes-list-type is specified")
        if list_type not in ("atomic", "set", "map"):
            errors.append(f"{path}.x-kubernetes-list-type: Unsupported value: {list_type!r}")
    keys = node.get("x-kubernetes-list-map-keys", [])
    if keys and list_type != "map":
        errors.append(f"{path}.x-kubernetes-list-type: must be map if x-kubernetes-list-map-keys is non-empty")
    if list_type == "map":
        items = node.get("items") or {}
        if not keys:
            errors.append(f"{path}.x-kubernetes-list-map-keys: must not be empty if x-kubernetes-list-type is map")
        if items.get("type") != "object":
            errors.append(f"{path}.items.type: must be object if x-kubernetes-list-type is map")
        for key in keys:
            prop = items.get("properties", {}).get(key)
            if prop is None:
                errors.append(f"{path}.x-kubernetes-list-map-keys: {key!r} is not a property of the items")
                continue
            if prop.get("type") in ("array", "object"):
                errors.append(f"{path}.items.properties[{key}].type: must be a scalar type")
            if key not in items.get("required", []) and "default" not in prop:
                errors.append(f"{path}.items.properties[{key}].default: must have a default or be required")
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None and (node.get("type") != "object" or map_type not in ("atomic", "granular")):
        errors.append(f"{path}.x-kubernetes-map-type: must be atomic or granular, on an object")
    return errors


def _default_errors(node: dict[str, Any], path: str) -> list[str]:
    if "default" not in node:
        return []
    default = node["default"]
    if default is None:
        return [f"{path}.default: a null default is no default: leave it out"]
    errors = [
        f"{path}.default: {error.message}"
        for error in jsonschema.Draft4Validator(_values_only(node)).iter_errors(default)
    ]
    if _pruned(node, default) != default:
        errors.append(f"{path}.default: must not have fields the schema prunes: {default!r}")
    errors += [f"{path}.default: {message}" for message in _default_rule_errors(node, default)]
    return errors


def _values_only(node: dict[str, Any]) -> dict[str, Any]:
    """The node's own value validations (JSON Schema draft 4 = OpenAPI 3.0 bounds), recursively."""
    keep = {
        key: value for key, value in node.items() if not key.startswith("x-") and key not in ("default", "description")
    }
    if "properties" in keep:
        keep["properties"] = {name: _values_only(sub) for name, sub in keep["properties"].items()}
    if isinstance(keep.get("items"), dict):
        keep["items"] = _values_only(keep["items"])
    if isinstance(keep.get("additionalProperties"), dict):
        keep["additionalProperties"] = _values_only(keep["additionalProperties"])
    return keep


def _pruned(node: dict[str, Any], value: Any) -> Any:
    if node.get("x-kubernetes-preserve-unknown-fields") or not isinstance(value, dict | list):
        return value
    if isinstance(value, list):
        return [_pruned(node.get("items", {}), item) for item in value]
    if isinstance(node.get("additionalProperties"), dict):
        return {key: _pruned(node["additionalProperties"], item) for key, item in value.items()}
    properties = node.get("properties", {})
    return {key: _pruned(properties[key], item) for key, item in value.items() if key in properties}


def _default_rule_errors(node: dict[str, Any], default: Any) -> list[str]:
    from tests.operator.cel import cel_violations

    return cel_violations(node, with_defaults(node, default))


def _rule_errors(node: dict[str, Any], path: str, correlatable: bool) -> list[str]:
    errors: list[str] = []
    for index, rule in enumerate(node.get("x-kubernetes-validations", [])):
        where = f"{path}.x-kubernetes-validations[{index}]"
        text = rule.get("rule", "").strip()
        if not text:
            errors.append(f"{where}.rule: Required value: rule is not specified")
            continue
        message = rule.get("message", "")
        if "\n" in message or "\r" in message or ("message" in rule and not message.strip()):
            errors.append(f"{where}.message: must be a non-empty single line")
        if rule.get("reason") is not None and rule["reason"] not in RULE_REASONS:
            errors.append(f"{where}.reason: Unsupported value: {rule['reason']!r}")
        if "fieldPath" in rule and not _resolves(node, rule["fieldPath"]):
            errors.append(f"{where}.fieldPath: does not name a field of the schema: {rule['fieldPath']!r}")
        try:
            _CEL.compile(text)
        except celpy.CELParseError as error:
            errors.append(f"{where}.rule: does not compile: {error}")
            continue
        if "oldSelf" in text and not correlatable:
            errors.append(f"{where}.rule: oldSelf cannot be used on the uncorrelatable portion of the schema")
        errors += [f"{where}.rule: {problem}" for problem in _unguarded(node, text) + _unbounded(node, text)]
    return errors


def _resolves(node: dict[str, Any], field_path: str) -> bool:
    for part in field_path.removeprefix(".").split("."):
        node = node.get("properties", {}).get(part)  # type: ignore[assignment]
        if node is None:
            return False
    return True


def _unguarded(node: dict[str, Any], rule: str) -> list[str]:
    """Field accesses in `rule` through an optional, undefaulted field that no has() guards.

    The object's metadata is always there; the last field of an access inside has() is what
    has() tests, so only the fields before it need a guard.
    """
    problems: set[str] = set()
    for match in FIELD_ACCESS.finditer(rule):
        parts = match[2].removeprefix(".").split(".")
        if rule[: match.start()].endswith("has("):
            parts = parts[:-1]
        current, prefix = node, match[1]
        for part in parts:
            properties = current.get("properties")
            if properties is None or part not in properties or part == "metadata":
                break  # a method (size, matches, ...), a preserved-unknown object, or metadata
            prefix = f"{prefix}.{part}"
            optional = part not in current.get("required", []) and "default" not in properties[part]
            if optional and f"has({prefix})" not in rule:
                problems.add(f"reaches {prefix} without has({prefix})")
                break
            current = properties[part]
    return sorted(problems)


def _unbounded(node: dict[str, Any], rule: str) -> list[str]:
    problems = []
    if ITERATING.search(rule) and node.get("type") == "array" and "maxItems" not in node:
        problems.append("iterates a list without maxItems: the API server's cost estimate assumes millions of items")
    if ITERATING.search(rule) and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
        problems.append("iterates a map without maxProperties")
    string_like = node.get("type") == "string" or node.get("x-kubernetes-int-or-string")
    if ".matches(" in rule and string_like and "maxLength" not in node:
        problems.append("matches a string without maxLength")
    return problems


def printer_column_errors(columns: list[dict[str, Any]], root: dict[str, Any], path: str) -> list[str]:
    """Each column is named, typed, and its jsonPath reaches a field of the same type."""
    errors: list[str] = []
    column_types = {
        "integer": {"integer"},
        "number": {"number", "integer"},
        "string": {"string"},
        "boolean": {"boolean"},
    }
    for index, column in enumerate(columns):
        where = f"{path}.additionalPrinterColumns[{index}]"
        if not column.get("name"):
            errors.append(f"{where}.name: Required value")
        if column.get("type") not in {"integer", "number", "string", "boolean", "date"}:
            errors.append(f"{where}.type: Unsupported value: {column.get('type')!r}")
        json_path = column.get("jsonPath", "")
        if not re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", json_path):
            errors.append(f"{where}.jsonPath: must be a simple path such as .status.phase")
            continue
        target = root
        for part in json_path[1:].split("."):
            target = target.get("properties", {}).get(part)  # type: ignore[assignment]
            if target is None:
                break
        if target is None:
            if json_path != ".metadata.creationTimestamp":
                errors.append(f"{where}.jsonPath: {json_path} is not a field of the schema")
        elif column.get("type") in column_types and target.get("type") not in column_types[column["type"]]:
            errors.append(f"{where}.type: {column['type']} column over a {target.get('type')} field")
    return errors
