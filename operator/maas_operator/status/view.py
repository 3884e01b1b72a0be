"""What a reconcile starts from: a custom resource's identity, its validated spec (or why it
is invalid), and the status it last wrote; and the helpers every planner shares."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from pydantic import BaseModel, ValidationError

from maas_operator.api import conditions
from maas_operator.api.common import Condition, ConditionStatus, describe_validation_error
from maas_operator.api.names import name_error
from maas_operator.api.validation import Rule
from maas_operator.builders.meta import Owner
from maas_operator.status.plan import Event, rfc3339

SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=BaseModel)


@dataclass(frozen=True)
class ObjectView(Generic[SpecT, StatusT]):
    owner: Owner
    generation: int | None
    spec: SpecT | None
    """None when the spec failed validation; spec_error says why."""
    spec_error: str | None
    status: StatusT


def object_view(
    body: Mapping[str, Any],
    cached_status: dict[str, Any] | None,
    kind: str,
    name_rules: list[Rule],
    spec_model: type[SpecT],
    status_model: type[StatusT],
) -> ObjectView[SpecT, StatusT]:
    """Parse a watched body; `cached_status` (what we last wrote) wins over the watched one.

    A name the CRD's rules refuse (`name_rules`, which an API server without them let through)
    is a spec error with the CRD's message: no child could be named after it.
    """
    metadata = body["metadata"]
    owner = Owner(kind, metadata["name"], metadata["namespace"], metadata["uid"])
    spec: SpecT | None = None
    error = name_error(name_rules, owner.name)
    if error is None:
        try:
            spec = spec_model.model_validate(body.get("spec") or {})
        except ValidationError as invalid:
            error = describe_validation_error(invalid)
    raw_status = cached_status if cached_status is not None else dict(body.get("status") or {})
    try:
        status = status_model.model_validate(raw_status)
    except ValidationError:
        status = status_model()  # a status edited by hand: rebuild it from observation
    return ObjectView(owner, metadata.get("generation"), spec, error, status)


class ConditionedStatus(Protocol):
    @property
    def conditions(self) -> list[Condition]: ...

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self: ...


ConditionedT = TypeVar("ConditionedT", bound=ConditionedStatus)


class StatusPlanner(Generic[ConditionedT]):
    """The status being decided, with Kubernetes-style conditions and the Events they warrant."""

    def __init__(self, status: ConditionedT, generation: int | None, now: datetime.datetime) -> None:
        self.generation = generation
        self.now = now
        self.stamp = rfc3339(now)
        self.status = status.model_copy(update={"observed_generation": generation})
        self.events: list[Event] = []

    def update(self, **changes: Any) -> None:
        self.status = self.status.model_copy(update=changes)

    def condition(self, condition_type: str, status: ConditionStatus, reason: str, message: str) -> bool:
        """Set a condition; True when its status or reason changed (worth an Event)."""
        before = conditions.find(self.status.conditions, condition_type)
        self.update(
            conditions=conditions.set_condition(
                self.status.conditions, condition_type, status, reason, message, self.stamp, self.generation
            )
        )
        return before is None or before.status != status or before.reason != reason

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))
