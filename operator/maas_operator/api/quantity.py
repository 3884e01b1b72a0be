"""Kubernetes resource quantities: the grammar the API server accepts, and their values.

The grammar is k8s.io/apimachinery/pkg/api/resource's (`ParseQuantity`):

    <quantity> ::= <sign>? <number> <suffix>?      <number> ::= digits | digits.digits | digits. | .digits
    <suffix>   ::= Ki | Mi | Gi | Ti | Pi | Ei  |  m | k | M | G | T | P | E  |  (e | E) <sign>? digits

so `2G`, `1e3`, `1E3`, `500m`, `1.5Gi`, `+1`, `.5` and plain integers are all quantities. A request
of zero or less makes no sense for the resources a spec asks for, so the rule the CRD and pydantic
share accepts positive quantities only. Kubernetes' CEL `quantity()` library would say the same,
but it exists in CRD rules only from Kubernetes 1.29 (added in 1.28) and not in cel-python;
the pattern below mirrors the grammar and works on every version with CRD validation rules.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from maas_operator.api.validation import Rule, cel_matches, full_match

_NUMBER = "([0-9]+([.][0-9]*)?|[.][0-9]+)"
_POSITIVE_NUMBER = "([0-9]*[1-9][0-9]*([.][0-9]*)?|[0-9]*[.][0-9]*[1-9][0-9]*)"
_SUFFIX = "([KMGTPE]i|[mkMGTPE]|[eE][-+]?[0-9]+)?"
QUANTITY = f"[-+]?{_NUMBER}{_SUFFIX}"
POSITIVE_QUANTITY = f"[+]?{_POSITIVE_NUMBER}{_SUFFIX}"
MAX_LENGTH = 64
"""maxLength of a quantity string: bounds the API server's CEL cost estimate of the rule."""

_MULTIPLIERS: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{suffix: Decimal(1000) ** (power + 1) for power, suffix in enumerate("kMGTPE")},
    **{f"{suffix}i": Decimal(1024) ** (power + 1) for power, suffix in enumerate("KMGTPE")},
}

POSITIVE = Rule(
    f"type(self) == int ? self > 0 : {cel_matches('self', POSITIVE_QUANTITY)}",
    "must be a positive Kubernetes quantity, such as 500m, 2, 1.5Gi or 1e3",
    lambda value: value > 0 if isinstance(value, int) else full_match(POSITIVE_QUANTITY, value),
)


def check_positive(value: Any) -> str:
    """The quantity as a string; ValueError with the CRD's message for anything else.

    Integers (not booleans) and strings are what the CRD's int-or-string type admits; a YAML
    float such as 0.5 is neither, so it is refused with a hint to quote it.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'{POSITIVE.message}; write decimals as strings, e.g. "0.5"')
    POSITIVE.enforce(value)
    return str(value)


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity in its base unit (cores, bytes); ValueError outside the grammar."""
    match = re.fullmatch(f"([-+]?{_NUMBER})([KMGTPE]i|[mkMGTPE]|[eE]([-+]?[0-9]+))?", text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number = Decimal(match[1])
    suffix = match[4] or ""
    if match[5] is not None:
        return number.scaleb(int(match[5]))
    return number * _MULTIPLIERS[suffix]


def whole_cpus(quantity: str | None, default: int = 1) -> int:
    """Whole CPUs covering a CPU quantity, at least 1 (500m -> 1, 2 -> 2, 1.5 -> 2, 2k -> 2000)."""
    if quantity is None:
        return default
    return max(1, math.ceil(parse_quantity(quantity)))
