"""Kubernetes' own rules for what a spec hands on to child objects, each stated once, applied twice.

A `Rule` is a CEL expression for the CRD (`x-kubernetes-validations`: the API server refuses at
admission) and the same predicate in Python (pydantic: `maas render`, `maas run` and the
operator's `InvalidSpec` refuse with the same message). The formats are those of
k8s.io/apimachinery/pkg/util/validation (IsDNS1035Label, IsDNS1123Label, IsDNS1123Subdomain,
IsQualifiedName, IsValidLabelValue) and pkg/api/validation (ValidateAnnotations: 256 KiB in all).

Regular expressions are written without backslashes (`[.]`, not `\\.`), so the same text is a
valid CEL string literal, an RE2 pattern for the API server and a Python pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
DNS_LABEL_MAX_LENGTH = 63
DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = f"{DNS1123_LABEL}([.]{DNS1123_LABEL})*"
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
QUALIFIED_NAME = f"({DNS1123_SUBDOMAIN}/)?([A-Za-z0-9][-A-Za-z0-9_.]{{0,61}})?[A-Za-z0-9]"
"""A label or annotation key: an optional DNS subdomain prefix and '/', then a name of at most 63 characters."""
QUALIFIED_PREFIX_LENGTH = f"([^/]{{1,{DNS1123_SUBDOMAIN_MAX_LENGTH}}}/)?[^/]*"
LABEL_VALUE = "(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?"
ANNOTATIONS_MAX_BYTES = 256 * 1024
"""Kubernetes' TotalAnnotationSizeLimitB: keys and values together."""
MAX_MAP_ENTRIES = 64
"""maxProperties of user-set maps: bounds the API server's CEL cost estimate (not a Kubernetes limit)."""
MAX_LIST_ITEMS = 64
"""maxItems of user-set lists (volumes, mounts, tolerations), for the same reason."""
MAX_ENV = 256

KEY_MESSAGE = (
    "keys must be qualified names: an optional DNS subdomain prefix of at most 253 characters and '/', "
    "then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
)
LABEL_VALUE_MESSAGE = (
    "values must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
)


def full_match(pattern: str, text: str) -> bool:
    """RE2's `^...$` on the whole string (Python's `$` would also accept a trailing newline)."""
    return re.fullmatch(pattern, text) is not None


def cel_matches(subject: str, pattern: str) -> str:
    return f"{subject}.matches('^{pattern}$')"


def cel_list(values: frozenset[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in sorted(values)) + "]"


def is_qualified_name(key: str) -> bool:
    return full_match(QUALIFIED_NAME, key) and full_match(QUALIFIED_PREFIX_LENGTH, key)


@dataclass(frozen=True)
class Rule:
    """One admission rule: `cel` for the CRD, `check` (on the parsed value) for pydantic."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def schema(self) -> dict[str, Any]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule

    def enforce(self, value: Any) -> None:
        """Raises ValueError with the CRD's message when `value` breaks the rule."""
        if not self.check(value):
            raise ValueError(self.message)


@dataclass(frozen=True)
class EntryRule:
    """A rule on every entry of a map (`self.all(k, ...)` in CEL); the Python error names the key."""

    cel_entry: str
    """CEL on one entry: `k` is the key, `self[k]` the value."""
    message: str
    check: Callable[[str, str], bool]

    def schema(self) -> dict[str, Any]:
        return {"rule": f"self.all(k, {self.cel_entry})", "message": self.message}

    def enforce(self, mapping: Any) -> None:
        """Raises ValueError naming every key of `mapping` (a str-to-str dict) that breaks the rule."""
        bad = [key for key, value in mapping.items() if not self.check(key, value)]
        if bad:
            raise ValueError(f"{self.message} (not {', '.join(repr(key) for key in bad)})")


QUALIFIED_KEYS = EntryRule(
    f"{cel_matches('k', QUALIFIED_NAME)} && {cel_matches('k', QUALIFIED_PREFIX_LENGTH)}",
    KEY_MESSAGE,
    lambda key, _: is_qualified_name(key),
)
LABEL_VALUES = EntryRule(
    cel_matches("self[k]", LABEL_VALUE), LABEL_VALUE_MESSAGE, lambda _, value: full_match(LABEL_VALUE, value)
)


def reserved_keys(keys: frozenset[str], prefixes: tuple[str, ...], why: str) -> EntryRule:
    """Keys the operator sets itself (`prefixes` end in '/': a whole namespace of keys)."""
    conditions = [f"!(k in {cel_list(keys)})"] if keys else []
    conditions += [f"!k.startsWith('{prefix}')" for prefix in prefixes]
    named = sorted(keys) + [f"{prefix}*" for prefix in prefixes]
    return EntryRule(
        " && ".join(conditions),
        f"{', '.join(named)} are set by the operator: {why}",
        lambda key, _: key not in keys and not key.startswith(prefixes),
    )


ANNOTATIONS_SIZE = Rule(
    f"self.map(k, size(bytes(k)) + size(bytes(self[k]))).sum() <= {ANNOTATIONS_MAX_BYTES}",
    f"must be at most {ANNOTATIONS_MAX_BYTES // 1024} KiB in all, keys and values together",
    lambda annotations: sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) <= ANNOTATIONS_MAX_BYTES,
)


def map_schema(rules: list[EntryRule | Rule], value_max_length: int | None = None) -> dict[str, Any]:
    """JSON-schema extra of a string-to-string map carrying `rules`."""
    values: dict[str, Any] = {"type": "string"}
    if value_max_length is not None:
        values["maxLength"] = value_max_length
    return {
        "maxProperties": MAX_MAP_ENTRIES,
        "additionalProperties": values,
        "x-kubernetes-validations": [rule.schema() for rule in rules],
    }


def int_or_string(rules: list[Rule], max_length: int) -> dict[str, Any]:
    """JSON-schema extra of an int-or-string field: the one union a structural schema allows.

    Constraints sit beside `anyOf`, never inside its branches (the API server refuses a CRD with
    a `type` plus anything else in a branch); `maxLength` bounds the CEL cost estimate of `rules`.
    """
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "maxLength": max_length,
        "x-kubernetes-validations": [rule.schema() for rule in rules],
    }


def enforcer(rules: list[EntryRule] | list[Rule] | list[EntryRule | Rule]) -> Callable[[T], T]:
    """A pydantic after-validator applying `rules` in order (the first broken one is reported)."""

    def enforce(value: T) -> T:
        for rule in rules:
            rule.enforce(value)
        return value

    return enforce
