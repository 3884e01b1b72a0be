"""The TrainingJob state machine: (spec, observed pods, nodes, refusals, progress, now) -> status and writes.

Pure: no I/O, no clocks. The handler gathers the observations, calls `plan_trainingjob`, and
carries the plan out. Every decision a TrainingJob makes lives here, so every transition can
be unit-tested by building inputs by hand.
"""

from __future__ import annotations

import dataclasses
import datetime

from maas_operator.api import conditions
from maas_operator.api.trainingjob import (
    TrainingJobSpec,
    TrainingJobStatus,
    WorkersStatus,
    immutable_changes,
)
from maas_operator.builders import trainingjob as build
from maas_operator.status.attempts import (
    Timing,
    lingering_pods,
    restart_backoff,
)
from maas_operator.status.plan import Create, Delete, Event, Plan, describe_refusals, parse_time, seconds_until
from maas_operator.status.pods import PodView
from maas_operator.status.trainingjob_outcome import (
    CHILD_REJECTED,
    CREATED,
    FAILED,
    RESTARTING,
    RUNNING,
    SPEC_ACCEPTED,
    STALLED,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL_PHASES,
    Observed,
    TrainingJobView,
)
from maas_operator.status.trainingjob_supervision import SupervisionPlanner

__all__ = [
    "CREATED",
    "FAILED",
    "RESTARTING",
    "RUNNING",
    "SPEC_ACCEPTED",
    "STALLED",
    "SUCCEEDED",
    "SUSPENDED",
    "Observed",
    "TrainingJobView",
    "plan_trainingjob",
]


def plan_trainingjob(
    job: TrainingJobView,
    observed: Observed,
    now: datetime.datetime,
    default_image: str,
    timing: Timing | None = None,
) -> Plan[TrainingJobStatus]:
    return _Planner(job, observed, now, default_image, timing or Timing()).plan()


class _Planner(SupervisionPlanner):
    """Starts, suspends and restarts attempts; supervising one is SupervisionPlanner's, how it ends
    OutcomePlanner's."""

    # --- the state machine --------------------------------------------------------------
    def plan(self) -> Plan[TrainingJobStatus]:
        if self.job.spec is None:
            self.reject_spec(self.job.spec_error or "the spec is invalid")
            return self.result()
        failed = conditions.find(self.status.conditions, FAILED)
        if self.status.phase == "Failed" and failed is not None and failed.reason == "InvalidSpec":
            self.restart_from_scratch()
        if self.status.phase in TERMINAL_PHASES:
            self.finished()
            return self.result()
        if self.harvest():
            return self.result()
        self.hold_immutable_fields()
        if self.spec.run_policy.suspend:
            self.suspend()
            return self.result()
        if self.status.attempt == 0:
            self.start_run()
        elif self.status.phase == "Suspended":
            self.resume()
        if self.deadline_exceeded():
            return self.result()

        stale = [pod for pod in self.pods if pod.attempt != self.status.attempt]
        if stale:
            # Attempts never overlap: the next one starts once every pod of the last is gone.
            self.wait_for_previous_attempt(stale)
            return self.result()

        if not conditions.is_true(self.status.conditions, CREATED):
            if not self.backing_off():
                self.create_attempt()
            return self.result()
        self.supervise_attempt()
        return self.result()

    def reject_spec(self, error: str) -> None:
        if self.condition(FAILED, "True", "InvalidSpec", error):
            self.event("InvalidSpec", error, warning=True)
        self.condition(RUNNING, "False", "InvalidSpec", "the spec must be fixed before anything runs")
        self.update(phase="Failed")
        self.delete_pods(self.pods)

    def restart_from_scratch(self) -> None:
        self.event("SpecAccepted", "the corrected spec is valid; starting the run")
        self.update(
            phase=None,
            completion_time=None,
            conditions=[c for c in self.status.conditions if c.type not in (FAILED, RUNNING, CREATED)],
        )

    def harvest(self) -> bool:
        """A head that exited 0 ends the run as Succeeded, whatever else changed meanwhile
        (a deadline passing, suspend, a lost worker): its model is published, never thrown away."""
        head = next((p for p in self.pods if p.role == build.HEAD and p.phase == "Succeeded"), None)
        if head is None:
            return False
        self.succeed(head)
        return True

    def hold_immutable_fields(self) -> None:
        """An edit of an immutable field never reaches a running attempt.

        The CRD's transition rules refuse such edits at admission; this holds back one that got
        past them (a CRD from before the rule, or one installed without it): while the attempt's
        head exists, the run goes on with the spec it was built from — runPolicy edits included,
        since runPolicy may change — and `SpecAccepted=False` names each refused field with the
        CRD's own message.
        """
        head = next((pod for pod in self.pods if pod.role == build.HEAD and pod.trainingjob_spec), None)
        accepted = _parse_spec(head.trainingjob_spec) if head is not None else None
        changes = immutable_changes(accepted, self.spec) if accepted is not None else []
        held = conditions.find(self.status.conditions, SPEC_ACCEPTED)
        if accepted is not None and changes:
            message = f"{'; '.join(changes)}: the running attempt goes on with the spec it started with"
            if self.condition(SPEC_ACCEPTED, "False", "ImmutableFieldChanged", message):
                self.event("ImmutableFieldChanged", message, warning=True)
            effective = accepted.model_copy(update={"run_policy": self.spec.run_policy})
            self.job = dataclasses.replace(self.job, spec=effective)
        elif held is not None and held.status == "False":
            self.condition(SPEC_ACCEPTED, "True", "Accepted", "the immutable fields are those the run started with")

    def start_run(self) -> None:
        self.update(
            attempt=1,
            start_time=self.stamp,
            attempt_start_time=None,
            head_service=build.head_host(self.job.owner),
            workers=WorkersStatus(desired=self.spec.workers.replicas, ready=0),
        )
        self.condition(CREATED, "False", "CreatingPods", "creating the pods of attempt 1")

    def suspend(self) -> None:
        self.delete_pods(self.pods)
        if self.condition(SUSPENDED, "True", "Suspended", "runPolicy.suspend is true: the pods are deleted"):
            self.event("Suspended", "runPolicy.suspend is true: deleting the pods")
        self.condition(CREATED, "False", "Suspended", "no pods while suspended")
        self.condition(RUNNING, "False", "Suspended", "suspended by runPolicy.suspend")
        self.update(phase="Suspended", workers=self.status.workers.model_copy(update={"ready": 0}))

    def resume(self) -> None:
        """A resumed run starts a new attempt from the last checkpoint, without a charge."""
        attempt = self.status.attempt + 1
        self.update(attempt=attempt, start_time=self.stamp, attempt_start_time=None, attempt_running_time=None)
        self.condition(SUSPENDED, "False", "Resumed", f"resumed as attempt {attempt}")
        self.condition(CREATED, "False", "CreatingPods", f"creating the pods of attempt {attempt}")
        self.event("Resumed", f"runPolicy.suspend is false: starting attempt {attempt}")

    def deadline_exceeded(self) -> bool:
        policy = self.spec.run_policy
        started = parse_time(self.status.start_time)
        deadline = policy.active_deadline_seconds
        if deadline and started:
            ends = started + datetime.timedelta(seconds=deadline)
            if self.now >= ends:
                self.fail("DeadlineExceeded", f"the run took longer than activeDeadlineSeconds ({deadline}s)")
                return True
            self.requeue(seconds_until(ends, self.now))
        attempt_started = parse_time(self.status.attempt_start_time)
        if attempt_started and self.status.attempt_running_time is None:
            ends = attempt_started + datetime.timedelta(seconds=policy.startup_deadline_seconds)
            # Refused children count as created: waiting for them is waiting for the deadline.
            tried = conditions.is_true(self.status.conditions, CREATED) or bool(self.refused())
            if self.now >= ends and tried:
                refused = self.refused()
                waiting = conditions.find(self.status.conditions, RUNNING)
                if refused:
                    why = f": {describe_refusals(refused)}"
                else:
                    why = f": {waiting.message}" if waiting and waiting.status == "False" and waiting.message else ""
                self.fail(
                    "StartupDeadlineExceeded",
                    f"the pods of attempt {self.status.attempt} were not running within "
                    f"startupDeadlineSeconds ({policy.startup_deadline_seconds}s){why}",
                )
                return True
            self.requeue(seconds_until(ends, self.now))
        return False

    def wait_for_previous_attempt(self, stale: list[PodView]) -> None:
        """Delete what is left of the last attempt; force-delete pods their lost node will never confirm."""
        self.delete_pods(stale)
        self.update(phase="Restarting")
        previous = max(pod.attempt for pod in stale)
        reason, message = "WaitingForPreviousAttempt", f"deleting the pods of attempt {previous}"
        lingering = lingering_pods(stale, self.observed.nodes, self.now, self.timing)
        for pod in lingering:
            if pod.force:
                self.actions.append(Delete("v1", "Pod", pod.pod.name, grace_period_seconds=0))
                self.events_after.append(
                    Event(
                        "Warning",
                        "ForceDeleted",
                        f"{pod.describe()}, {int(pod.overdue)}s past its grace period: force-deleted it "
                        f"so that attempt {self.status.attempt} can start",
                    )
                )
            elif pod.node is not None and not pod.node.lost:
                self.requeue(max(1.0, self.timing.force_delete_after_seconds))
            else:
                self.requeue(max(0.0, self.timing.force_delete_after_seconds - pod.overdue))
        if lingering:
            reason = "PodTerminating"
            message += "; " + "; ".join(pod.describe() for pod in lingering)
            message += (
                f". A pod on a NotReady or unreachable node is force-deleted "
                f"{int(self.timing.force_delete_after_seconds)}s after its grace period"
            )
        refused = self.refused([(("Pod", pod.name)) for pod in stale])
        if refused:
            reason, message = CHILD_REJECTED, f"cannot delete the pods of attempt {previous}: "
            message += describe_refusals(refused)
        self.condition(CREATED, "False", reason, message)

    def backing_off(self) -> bool:
        """Between a failed attempt and the next, wait as Kubernetes Jobs do (10 s, doubling)."""
        last = self.status.failures[-1] if self.status.failures else None
        if self.status.attempt_start_time is not None or last is None or last.attempt != self.status.attempt - 1:
            return False
        failed_attempts = self.status.charged_failures + self.status.platform_failures
        delay = restart_backoff(failed_attempts, self.timing)
        ended = parse_time(last.time)
        if ended is None or self.now >= ended + datetime.timedelta(seconds=delay):
            return False
        remaining = seconds_until(ended + datetime.timedelta(seconds=delay), self.now)
        self.condition(
            CREATED,
            "False",
            "BackoffBeforeRestart",
            f"attempt {self.status.attempt} starts in {int(remaining) + 1}s "
            f"(backoff {int(delay)}s after {failed_attempts} failed attempt(s))",
        )
        self.update(phase="Restarting")
        self.requeue(remaining)
        return True

    def create_attempt(self) -> None:
        attempt = self.status.attempt
        restarting = conditions.is_true(self.status.conditions, RESTARTING)
        if self.status.attempt_start_time is None:
            self.update(attempt_start_time=self.stamp)
            self.requeue(float(self.spec.run_policy.startup_deadline_seconds))
        self.update(phase="Restarting" if restarting else "Pending")
        existing = {pod.name for pod in self.pods}
        children = build.attempt_children(self.job.owner, self.spec, attempt, self.default_image)
        missing = [c for c in children if c["kind"] != "Pod" or c["metadata"]["name"] not in existing]
        creates = [Create(child) for child in missing]
        self.actions.extend(creates)
        refused = self.refused([create.key for create in creates])
        if refused:
            detail = describe_refusals(refused)
            self.condition(CREATED, "False", CHILD_REJECTED, f"the API server refused to create {detail}")
            self.condition(RUNNING, "False", CHILD_REJECTED, detail)
            return
        message = f"head and {self.spec.workers.replicas} worker pod(s) of attempt {attempt} created"
        self.events_after.append(Event("Normal", "PodsCreated", message))
        # Created=True is recorded only once every pod exists.
        before_creation = self.status
        self.condition(CREATED, "True", "PodsCreated", message)
        head = build.head_pod_name(self.job.owner.name)
        self.condition(RUNNING, "False", "HeadStarting", f"waiting for the head pod {head} to run")
        self.update(phase="Restarting" if restarting else "Starting")
        self.status_after, self.status = self.status, before_creation


def _parse_spec(text: str | None) -> TrainingJobSpec | None:
    """The spec a head pod carries; None when absent or unreadable (a pod of an older operator)."""
    if not text:
        return None
    try:
        return TrainingJobSpec.model_validate_json(text)
    except ValueError:
        return None
