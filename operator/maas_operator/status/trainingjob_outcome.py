"""How a TrainingJob attempt or run ends: a retry (charged or not), success, failure, and the
cleanup after the end. The base of the TrainingJob planner (status/trainingjob.py), which owns
starting and supervising attempts. Pure: no I/O, no clocks.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

from maas_operator.api import conditions
from maas_operator.api.trainingjob import (
    MAX_FAILURES_KEPT,
    ArtifactReference,
    Failure,
    ModelStatus,
    Phase,
    TrainingJobSpec,
    TrainingJobStatus,
)
from maas_operator.status import kstatus
from maas_operator.status.attempts import HeadFailure, Timing, parse_termination_message, variant_statuses
from maas_operator.status.plan import (
    ChildKey,
    Create,
    Delete,
    DeleteOwner,
    Event,
    Plan,
    Refusal,
    parse_time,
    seconds_until,
)
from maas_operator.status.pods import NodeView, PodView
from maas_operator.status.view import ObjectView, StatusPlanner
from maas_workloads.contract import ProgressReport

CREATED = "Created"
RUNNING = "Running"
RESTARTING = "Restarting"
SUSPENDED = "Suspended"
STALLED = "Stalled"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SPEC_ACCEPTED = "SpecAccepted"
"""False while an edit of an immutable field is held back from the running attempt."""
CHILD_REJECTED = "ChildRejected"
"""Reason of a condition when the API server refused to create or delete a child."""
TERMINAL_PHASES: frozenset[Phase] = frozenset({"Succeeded", "Failed"})
# Failures that end a run with every pod removed, whatever cleanPodPolicy says.
REMOVE_ALL_PODS_REASONS = frozenset({"DeadlineExceeded", "StartupDeadlineExceeded", "InvalidSpec"})


TrainingJobView = ObjectView[TrainingJobSpec, TrainingJobStatus]


@dataclass(frozen=True)
class Observed:
    pods: list[PodView] = field(default_factory=list)
    progress: ProgressReport | None = None
    """The head's latest progress report, when it could be fetched."""
    refusals: Mapping[ChildKey, Refusal] = field(default_factory=dict)
    """Writes of children the API server refused, still wanted (see status/plan.py)."""
    nodes: Mapping[str, NodeView | None] = field(default_factory=dict)
    """The nodes of pods stuck terminating, by name; None for one that could not be read."""


class OutcomePlanner(StatusPlanner[TrainingJobStatus]):
    """The TrainingJob planner's shared state and helpers, and how attempts and runs end."""

    def __init__(
        self, job: TrainingJobView, observed: Observed, now: datetime.datetime, default_image: str, timing: Timing
    ) -> None:
        super().__init__(job.status, job.generation, now)
        self.job = job
        self.observed = observed
        self.pods = observed.pods
        self.progress = observed.progress
        self.default_image = default_image
        self.timing = timing
        self.actions: list[Create | Delete | DeleteOwner] = []
        self.status_after: TrainingJobStatus | None = None
        self.events_after: list[Event] = []
        self.requeue_after: float | None = None

    # --- small helpers ------------------------------------------------------------------
    def delete_pods(self, pods: list[PodView]) -> None:
        self.actions.extend(Delete("v1", "Pod", pod.name) for pod in pods if not pod.deleting)

    def result(self) -> Plan[TrainingJobStatus]:
        """The plan, every status in it judged for kstatus (Reconciling, Stalled)."""
        status = kstatus.judged(self.status, self.stamp, self.generation)
        after = kstatus.judged(self.status_after, self.stamp, self.generation) if self.status_after else None
        return Plan(status, list(self.actions), self.events, after, self.events_after, self.requeue_after)

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def refused(self, keys: list[ChildKey] | None = None) -> list[Refusal]:
        """The refusals of these children (all of them when None)."""
        refusals = self.observed.refusals
        return list(refusals.values()) if keys is None else [refusals[k] for k in keys if k in refusals]

    @property
    def spec(self) -> TrainingJobSpec:
        assert self.job.spec is not None
        return self.job.spec

    # --- how attempts and runs end ----------------------------------------------------
    def retry(self, failure: HeadFailure) -> None:
        attempt = self.status.attempt
        record = Failure(
            attempt=attempt,
            reason=failure.reason,
            exit_code=failure.exit_code,
            message=failure.message[:1000],
            time=self.stamp,
            charged=failure.charged,
        )
        charged = self.status.charged_failures + (1 if failure.charged else 0)
        platform = self.status.platform_failures + (0 if failure.charged else 1)
        self.update(
            failures=[*self.status.failures, record][-MAX_FAILURES_KEPT:],
            charged_failures=charged,
            platform_failures=platform,
        )
        policy = self.spec.run_policy
        if failure.permanent:
            self.fail(failure.reason, f"attempt {attempt}: {failure.message} (not retried: fix the spec)")
            return
        if charged > policy.backoff_limit:
            self.fail(
                "BackoffLimitExceeded",
                f"{charged} application failure(s), more than backoffLimit ({policy.backoff_limit}); "
                f"last: {failure.reason}: {failure.message}",
            )
            return
        if platform > policy.max_platform_retries:
            self.fail(
                "PlatformRetryLimitExceeded",
                f"{platform} attempt(s) ended by the platform, more than runPolicy.maxPlatformRetries "
                f"({policy.max_platform_retries}); last: {failure.reason}: {failure.message}",
            )
            return
        following = attempt + 1
        if failure.charged:
            charge = f"charged {charged}/{policy.backoff_limit}"
        else:
            charge = f"not charged; platform failure {platform}/{policy.max_platform_retries}"
        message = f"attempt {attempt} ended ({failure.reason}: {failure.message}); starting attempt {following}"
        self.update(
            attempt=following,
            attempt_start_time=None,
            attempt_running_time=None,
            phase="Restarting",
            workers=self.status.workers.model_copy(update={"ready": 0}),
        )
        self.condition(RESTARTING, "True", failure.reason, f"{message} ({charge})")
        self.condition(CREATED, "False", "WaitingForPreviousAttempt", f"deleting the pods of attempt {attempt}")
        self.condition(RUNNING, "False", "Restarting", message)
        self.event("Restarting", f"{message} ({charge})", warning=True)
        self.delete_pods(self.pods)

    def succeed(self, head: PodView) -> None:
        report = parse_termination_message(head.message).get("model") or {}
        model = None
        if report.get("uri") and report.get("sha256"):
            adapter = report.get("adapter")
            model = ModelStatus(
                uri=str(report["uri"]),
                sha256=str(report["sha256"]),
                metrics={str(k): float(v) for k, v in (report.get("metrics") or {}).items()},
                adapter=ArtifactReference(uri=str(adapter["uri"]), sha256=str(adapter["sha256"]))
                if adapter and adapter.get("uri") and adapter.get("sha256")
                else None,
                variants=variant_statuses(report.get("variants")) or None,
            )
            message = f"attempt {head.attempt} finished; model published at {model.uri}"
            refused = [v for v in model.variants or [] if not v.published]
            if refused:
                self.event(
                    "VariantsNotPublished",
                    "; ".join(f"{variant.name}: {variant.message}" for variant in refused),
                    warning=True,
                )
        else:
            message = f"attempt {head.attempt} finished, but the head reported no model artifact"
            self.event("NoModelReported", message, warning=True)
        self.update(
            phase="Succeeded",
            completion_time=self.stamp,
            model=model,
            workers=self.status.workers.model_copy(update={"ready": 0}),
        )
        self.condition(SUCCEEDED, "True", "Succeeded", message)
        self.condition(RUNNING, "False", "Completed", "the run is over")
        if conditions.find(self.status.conditions, RESTARTING):
            self.condition(RESTARTING, "False", "Completed", "the run is over")
        self.event("Succeeded", message)
        self.finished()

    def fail(self, reason: str, message: str) -> None:
        self.update(phase="Failed", completion_time=self.stamp)
        self.condition(FAILED, "True", reason, message)
        self.condition(RUNNING, "False", reason, message)
        if conditions.find(self.status.conditions, RESTARTING):
            self.condition(RESTARTING, "False", reason, "the run is over")
        self.event("Failed", f"{reason}: {message}", warning=True)
        self.finished()

    def finished(self) -> None:
        """Clean up after the end as cleanPodPolicy says, then honour ttlSecondsAfterFinished."""
        failed = conditions.find(self.status.conditions, FAILED)
        policy = self.spec.run_policy.clean_pod_policy if self.job.spec is not None else "All"
        if failed is not None and failed.status == "True" and failed.reason in REMOVE_ALL_PODS_REASONS:
            policy = "All"
        if policy == "All":
            self.delete_pods(self.pods)
        elif policy == "Running":
            self.delete_pods([pod for pod in self.pods if not pod.terminal])
        ttl = self.job.spec.run_policy.ttl_seconds_after_finished if self.job.spec is not None else None
        finished_at = parse_time(self.status.completion_time)
        if ttl is not None and finished_at:
            expires = finished_at + datetime.timedelta(seconds=ttl)
            if self.now >= expires:
                self.actions.append(DeleteOwner())
            else:
                self.requeue(seconds_until(expires, self.now))
