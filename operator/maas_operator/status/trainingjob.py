"""The TrainingJob state machine: (spec, observed pods, progress, now) -> status and writes.

Pure: no I/O, no clocks. The handler gathers the observations, calls `plan_trainingjob`, and
carries the plan out. Every decision a TrainingJob makes lives here, so every transition can
be unit-tested by building inputs by hand.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field

from maas_operator.api import conditions
from maas_operator.api.trainingjob import (
    MAX_FAILURES_KEPT,
    Failure,
    ModelStatus,
    Phase,
    ProgressStatus,
    TrainingJobSpec,
    TrainingJobStatus,
    WorkersStatus,
)
from maas_operator.builders import trainingjob as build
from maas_operator.status import kstatus
from maas_operator.status.plan import Create, Delete, DeleteOwner, Plan, parse_time
from maas_operator.status.pods import PLATFORM_POD_REASONS, PodView
from maas_operator.status.view import ObjectView, StatusPlanner
from maas_workloads.contract import ExitCode, ProgressReport, TerminationMessage

CREATED = "Created"
RUNNING = "Running"
RESTARTING = "Restarting"
SUSPENDED = "Suspended"
STALLED = "Stalled"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL_PHASES: frozenset[Phase] = frozenset({"Succeeded", "Failed"})
# Failures that end a run with every pod removed, whatever cleanPodPolicy says.
REMOVE_ALL_PODS_REASONS = frozenset({"DeadlineExceeded", "StartupDeadlineExceeded", "InvalidSpec"})


TrainingJobView = ObjectView[TrainingJobSpec, TrainingJobStatus]


@dataclass(frozen=True)
class Observed:
    pods: list[PodView] = field(default_factory=list)
    progress: ProgressReport | None = None
    """The head's latest progress report, when it could be fetched."""


@dataclass(frozen=True)
class HeadFailure:
    reason: str
    message: str
    exit_code: int | None
    charged: bool
    """Counts against backoffLimit."""
    permanent: bool = False
    """Retrying can never help (a configuration error)."""


def parse_termination_message(text: str | None) -> TerminationMessage:
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"error": text.strip()[-1000:]}
    return parsed if isinstance(parsed, dict) else {"error": text.strip()[-1000:]}  # type: ignore[return-value]


def classify_head_failure(head: PodView) -> HeadFailure:
    """Who is to blame for a failed head: the platform (free retry) or the application (charged)."""
    reported = parse_termination_message(head.message).get("error")
    code = head.exit_code
    detail = reported or (f"exit code {code}" if code is not None else "no exit code")
    if head.disruption:
        return HeadFailure(head.disruption, f"the platform ended pod {head.name} ({head.disruption})", code, False)
    if head.reason in PLATFORM_POD_REASONS:
        return HeadFailure(head.reason or "Evicted", f"pod {head.name} was {head.reason}: {detail}", code, False)
    if code == ExitCode.CONFIGURATION_ERROR:
        return HeadFailure("ConfigurationError", detail, code, charged=True, permanent=True)
    if code == ExitCode.INFRASTRUCTURE_ERROR:
        return HeadFailure("InfrastructureError", detail, code, charged=False)
    if head.reason == "OOMKilled":
        return HeadFailure("OOMKilled", f"the head ran out of memory (exit code {code})", code, charged=True)
    return HeadFailure("ApplicationError", detail, code, charged=True)


def progress_summary(progress: ProgressStatus) -> str | None:
    if progress.step is not None and progress.total_steps:
        percent = min(100, int(100 * progress.step / progress.total_steps))
        return f"{percent}% (step {progress.step}/{progress.total_steps})"
    if progress.epoch is not None:
        return f"epoch {progress.epoch}, step {progress.step or 0}"
    return None


def plan_trainingjob(
    job: TrainingJobView, observed: Observed, now: datetime.datetime, default_image: str
) -> Plan[TrainingJobStatus]:
    return _Planner(job, observed, now, default_image).plan()


class _Planner(StatusPlanner[TrainingJobStatus]):
    def __init__(self, job: TrainingJobView, observed: Observed, now: datetime.datetime, default_image: str) -> None:
        super().__init__(job.status, job.generation, now)
        self.job = job
        self.pods = observed.pods
        self.progress = observed.progress
        self.default_image = default_image
        self.actions: list[Create | Delete | DeleteOwner] = []
        self.status_after: TrainingJobStatus | None = None

    # --- small helpers ------------------------------------------------------------------
    def delete_pods(self, pods: list[PodView]) -> None:
        self.actions.extend(Delete("v1", "Pod", pod.name) for pod in pods if not pod.deleting)

    def result(self) -> Plan[TrainingJobStatus]:
        after = kstatus.judged(self.status_after, self.stamp, self.generation) if self.status_after else None
        return Plan(kstatus.judged(self.status, self.stamp, self.generation), list(self.actions), self.events, after)

    @property
    def spec(self) -> TrainingJobSpec:
        assert self.job.spec is not None
        return self.job.spec

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
            self.delete_pods(stale)
            self.update(phase="Restarting")
            return self.result()

        if not conditions.is_true(self.status.conditions, CREATED):
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
        if deadline and started and self.now >= started + datetime.timedelta(seconds=deadline):
            self.fail("DeadlineExceeded", f"the run took longer than activeDeadlineSeconds ({deadline}s)")
            return True
        attempt_started = parse_time(self.status.attempt_start_time)
        if attempt_started and self.status.attempt_running_time is None:
            limit = datetime.timedelta(seconds=policy.startup_deadline_seconds)
            if self.now >= attempt_started + limit and conditions.is_true(self.status.conditions, CREATED):
                waiting = conditions.find(self.status.conditions, RUNNING)
                why = f": {waiting.message}" if waiting and waiting.status == "False" and waiting.message else ""
                self.fail(
                    "StartupDeadlineExceeded",
                    f"the pods of attempt {self.status.attempt} were not running within "
                    f"startupDeadlineSeconds ({policy.startup_deadline_seconds}s){why}",
                )
                return True
        return False

    def create_attempt(self) -> None:
        attempt = self.status.attempt
        restarting = conditions.is_true(self.status.conditions, RESTARTING)
        if self.status.attempt_start_time is None:
            self.update(attempt_start_time=self.stamp)
        self.update(phase="Restarting" if restarting else "Pending")
        existing = {pod.name for pod in self.pods}
        children = build.attempt_children(self.job.owner, self.spec, attempt, self.default_image)
        missing = [c for c in children if c["kind"] != "Pod" or c["metadata"]["name"] not in existing]
        self.actions.extend(Create(child) for child in missing)
        message = f"head and {self.spec.workers.replicas} worker pod(s) of attempt {attempt} created"
        self.event("PodsCreated", message)
        # Created=True is recorded only once every pod exists.
        before_creation = self.status
        self.condition(CREATED, "True", "PodsCreated", message)
        self.update(phase="Restarting" if restarting else "Starting")
        self.status_after, self.status = self.status, before_creation

    def supervise_attempt(self) -> None:
        current = [pod for pod in self.pods if pod.attempt == self.status.attempt]
        head = next((pod for pod in current if pod.role == build.HEAD), None)
        if head is None:
            self.retry(HeadFailure("HeadPodLost", "the head pod disappeared", None, charged=False))
            return
        if head.deleting and not head.terminal:
            self.retry(HeadFailure("HeadPodDeleted", f"pod {head.name} was deleted", None, charged=False))
            return
        if head.phase == "Succeeded":
            self.succeed(head)
            return
        if head.phase == "Failed":
            self.retry(classify_head_failure(head))
            return
        workers = {pod.index: pod for pod in current if pod.role == build.WORKER}
        self.heal_workers(workers)
        self.observe_running(head, current)
        self.observe_progress()

    def heal_workers(self, workers: dict[int | None, PodView]) -> None:
        """A lost or failed worker is recreated under its name; the attempt goes on."""
        for index in range(self.spec.workers.replicas):
            worker = workers.get(index)
            if worker is None:
                manifest = build.worker_pod(self.job.owner, self.spec, self.status.attempt, index, self.default_image)
                self.actions.append(Create(manifest))
                self.update(worker_restarts=self.status.worker_restarts + 1)
                self.event("WorkerRestarted", f"recreated worker pod {manifest['metadata']['name']}", warning=True)
            elif worker.terminal and not worker.deleting:
                how = f"exit code {worker.exit_code}" if worker.exit_code is not None else worker.phase
                reason = f", {worker.disruption or worker.reason}" if (worker.disruption or worker.reason) else ""
                self.event("WorkerFailed", f"worker pod {worker.name} ended ({how}{reason}); replacing it", True)
                self.delete_pods([worker])

    def observe_running(self, head: PodView, current: list[PodView]) -> None:
        workers = [pod for pod in current if pod.role == build.WORKER]
        running = sum(1 for pod in workers if pod.running)
        ready = sum(1 for pod in workers if pod.running and pod.ready)
        minimum = self.spec.workers.effective_min_replicas
        replicas = self.spec.workers.replicas
        self.update(workers=WorkersStatus(desired=replicas, ready=ready))
        if head.running and running >= minimum:
            message = f"the head and {running}/{replicas} workers are running"
            if self.condition(RUNNING, "True", "Running", message):
                self.event("Running", f"attempt {self.status.attempt}: {message}")
            if self.status.attempt_running_time is None:
                self.update(attempt_running_time=self.stamp)
            if conditions.is_true(self.status.conditions, RESTARTING):
                self.condition(RESTARTING, "False", "Recovered", f"attempt {self.status.attempt} is running")
            self.update(phase="Running")
            return
        reason, message = self.why_not_running(head, current, running, minimum)
        self.condition(RUNNING, "False", reason, message)
        if conditions.is_true(self.status.conditions, RESTARTING):
            self.update(phase="Restarting")
        else:
            # An attempt that ran keeps its phase while a worker is replaced; the condition says why.
            self.update(phase="Running" if self.status.attempt_running_time else "Starting")

    @staticmethod
    def why_not_running(head: PodView, current: list[PodView], running: int, minimum: int) -> tuple[str, str]:
        for pod in current:
            if pod.unschedulable and not pod.running:
                return "Unschedulable", f"pod {pod.name} cannot be scheduled: {pod.unschedulable}"
        for pod in current:
            if pod.stuck:
                detail = f": {pod.waiting_message}" if pod.waiting_message else ""
                return pod.waiting_reason or "ContainerWaiting", f"pod {pod.name} is {pod.waiting_reason}{detail}"
        if not head.running:
            return "HeadStarting", f"waiting for the head pod {head.name} to run"
        return (
            "NotEnoughWorkers",
            f"{running} worker(s) running, at least {minimum} (workers.minReplicas) needed",
        )

    def observe_progress(self) -> None:
        report = self.progress
        if report is not None and report.get("attempt", self.status.attempt) == self.status.attempt:
            progress = ProgressStatus(
                epoch=report.get("epoch"),
                step=report.get("step"),
                total_steps=report.get("totalSteps"),
                metrics=dict(report.get("metrics") or {}),
                last_checkpoint=report.get("lastCheckpoint"),
                heartbeat_time=report.get("heartbeatTime"),
            )
            self.update(progress=progress.model_copy(update={"summary": progress_summary(progress)}))
        self.observe_stall()

    def observe_stall(self) -> None:
        timeout = self.spec.run_policy.stall_timeout_seconds
        running_since = parse_time(self.status.attempt_running_time)
        if timeout is None or running_since is None:
            return
        heartbeat = parse_time(self.status.progress.heartbeat_time) if self.status.progress else None
        last_sign = max(heartbeat, running_since) if heartbeat else running_since
        silent = (self.now - last_sign).total_seconds()
        if silent >= timeout:
            message = f"no progress heartbeat for {int(silent)}s (stallTimeoutSeconds is {timeout})"
            if self.condition(STALLED, "True", "NoHeartbeat", message):
                self.event("Stalled", message, warning=True)
        else:
            self.condition(STALLED, "False", "Heartbeat", "the head reports progress")

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
        self.update(
            failures=[*self.status.failures, record][-MAX_FAILURES_KEPT:],
            charged_failures=charged,
        )
        limit = self.spec.run_policy.backoff_limit
        if failure.permanent:
            self.fail(failure.reason, f"attempt {attempt}: {failure.message} (not retried: fix the spec)")
            return
        if charged > limit:
            self.fail(
                "BackoffLimitExceeded",
                f"{charged} application failure(s), more than backoffLimit ({limit}); "
                f"last: {failure.reason}: {failure.message}",
            )
            return
        following = attempt + 1
        charge = f"charged {charged}/{limit}" if failure.charged else "not charged"
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
            model = ModelStatus(
                uri=str(report["uri"]),
                sha256=str(report["sha256"]),
                metrics={str(k): float(v) for k, v in (report.get("metrics") or {}).items()},
            )
            message = f"attempt {self.status.attempt} finished; model published at {model.uri}"
        else:
            message = f"attempt {self.status.attempt} finished, but the head reported no model artifact"
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
        if ttl is not None and finished_at and self.now >= finished_at + datetime.timedelta(seconds=ttl):
            self.actions.append(DeleteOwner())
