"""Kubernetes-style conditions: set one without disturbing the others' transition times."""

from __future__ import annotations

from collections.abc import Sequence

from maas_operator.api.common import Condition, ConditionStatus


def find(conditions: Sequence[Condition], condition_type: str) -> Condition | None:
    return next((c for c in conditions if c.type == condition_type), None)


def is_true(conditions: Sequence[Condition], condition_type: str) -> bool:
    condition = find(conditions, condition_type)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """A new list with `condition_type` set; lastTransitionTime moves only when status changes."""
    previous = find(conditions, condition_type)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=condition_type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if previous == updated:
        return list(conditions)
    others = [c for c in conditions if c.type != condition_type]
    return [*others, updated] if previous is None else [updated if c.type == condition_type else c for c in conditions]
