"""What a reconcile decided (the status to record and the writes to make, in order), and
what the API server answered to earlier writes (refusals), which the next plan reports."""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from maas_operator.builders.meta import FIELD_MANAGER

StatusT = TypeVar("StatusT")

ChildKey = tuple[str, str]
"""(kind, name) of a child object, in its owner's namespace."""

REFUSAL_BACKOFF_START_SECONDS = 1.0
REFUSAL_BACKOFF_MAX_SECONDS = 300.0
"""A refused write is retried after 1 s, 2 s, 4 s, ... at most 5 min apart (as controllers' rate limiters do)."""


def fingerprint(body: Any) -> str:
    """A short digest of a request body: a changed body is a new write, not a retry."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Create:
    """Create a child; an existing one (409) counts as success."""

    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def key(self) -> ChildKey:
        return (str(self.manifest["kind"]), self.name)

    verb = "create"


@dataclass(frozen=True)
class Apply:
    """Server-side apply a child as `field_manager`: creates it, or converges it to exactly these fields."""

    manifest: dict[str, Any]
    field_manager: str = FIELD_MANAGER

    @property
    def key(self) -> ChildKey:
        return (str(self.manifest["kind"]), str(self.manifest["metadata"]["name"]))

    verb = "apply"


@dataclass(frozen=True)
class Delete:
    """Delete a child; a missing one (404) counts as success.

    `grace_period_seconds` 0 force-deletes a pod whose kubelet can no longer confirm its end.
    """

    api_version: str
    kind: str
    name: str
    grace_period_seconds: int | None = None

    @property
    def key(self) -> ChildKey:
        return (self.kind, self.name)

    verb = "delete"


@dataclass(frozen=True)
class DeleteOwner:
    """Delete the custom resource itself (ttlSecondsAfterFinished)."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = Create | Apply | Delete | DeleteOwner
ChildAction = Create | Apply | Delete


def action_fingerprint(action: ChildAction) -> str:
    if isinstance(action, Delete):
        return fingerprint([action.kind, action.name, action.grace_period_seconds])
    if isinstance(action, Apply):
        return fingerprint([action.field_manager, action.manifest])
    return fingerprint(action.manifest)


@dataclass(frozen=True)
class Refusal:
    """The API server refused a write of a child with a 4xx that retrying as is cannot fix by itself
    (422 Invalid, 403 Forbidden incl. quota and admission webhooks, 400 BadRequest, ...)."""

    kind: str
    name: str
    verb: str
    """create, apply or delete."""
    code: int
    """HTTP status."""
    reason: str
    """The API server's Status reason (Invalid, Forbidden, BadRequest, ...)."""
    message: str
    """The API server's own words, quoted to the user."""
    fingerprint: str
    """Of the refused request: a different request to the same child is tried at once."""
    first: datetime.datetime
    last: datetime.datetime
    attempts: int = 1
    """Refused requests in a row with this same message."""

    @property
    def key(self) -> ChildKey:
        return (self.kind, self.name)

    @property
    def retry_at(self) -> datetime.datetime:
        delay = min(REFUSAL_BACKOFF_MAX_SECONDS, REFUSAL_BACKOFF_START_SECONDS * 2 ** (self.attempts - 1))
        return self.last + datetime.timedelta(seconds=delay)

    def describe(self) -> str:
        """E.g. `pod digits-worker-3: pods "digits-worker-3" is forbidden: exceeded quota: gpu, ...`."""
        return f"{self.kind.lower()} {self.name}: {self.message}"


def describe_refusals(refusals: list[Refusal], limit: int = 3) -> str:
    """One line naming each refused child (the first `limit`) with the API server's message."""
    ordered = sorted(refusals, key=lambda r: (r.kind, r.name))
    text = "; ".join(r.describe() for r in ordered[:limit])
    return text + (f"; and {len(ordered) - limit} more" if len(ordered) > limit else "")


@dataclass(frozen=True)
class Plan(Generic[StatusT]):
    status: StatusT
    """Recorded before any action, so identity (attempt, child names) is written first."""
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    """Posted once the status is recorded: what was observed and decided."""
    status_after: StatusT | None = None
    """Recorded once every action succeeded (e.g. Created=True after the pods exist)."""
    events_after: list[Event] = field(default_factory=list)
    """Posted only once every action succeeded: what the writes did (e.g. PodsCreated)."""
    requeue_after: float | None = None
    """Seconds until something time-based is due (a deadline, a TTL, a backoff)."""


def written_manifests(plan: Plan[Any]) -> list[dict[str, Any]]:
    """The whole objects a plan creates or applies (not partial applies by other field managers)."""
    return [
        action.manifest
        for action in plan.actions
        if isinstance(action, Create) or (isinstance(action, Apply) and action.field_manager == FIELD_MANAGER)
    ]


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
