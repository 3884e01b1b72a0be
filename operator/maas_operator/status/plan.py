"""What a reconcile decided: the status to record and the writes to make, in order."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

StatusT = TypeVar("StatusT")


@dataclass(frozen=True)
class Create:
    """Create a child; an existing one (409) counts as success."""

    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class Apply:
    """Server-side apply a child (create or converge to the manifest's fields)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class Patch:
    """Merge-patch fields of a child as an update (not an apply) of ours.

    Server-side apply removes a field its manager stops applying unless another manager owns
    it: patching it first hands it to our update manager, which keeps it (see HPA hand-over).
    """

    api_version: str
    kind: str
    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Delete a child; a missing one (404) counts as success."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class DeleteOwner:
    """Delete the custom resource itself (ttlSecondsAfterFinished)."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = Create | Apply | Patch | Delete | DeleteOwner


@dataclass(frozen=True)
class Plan(Generic[StatusT]):
    status: StatusT
    """Recorded before any action, so identity (attempt, child names) is written first."""
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status_after: StatusT | None = None
    """Recorded once every action succeeded (e.g. Created=True after the pods exist)."""
    requeue_after: float | None = None
    """Seconds until something time-based is due (a deadline, a TTL)."""


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def seconds_until(deadline: datetime.datetime, now: datetime.datetime) -> float:
    return max(0.0, (deadline - now).total_seconds())
