"""Supervising a TrainingJob attempt once its pods exist: a lost head ends it (a retry), lost or
failed workers are recreated under their names, and the Running and Stalled conditions and the
progress follow what the pods and the head report. A layer of the TrainingJob planner
(status/trainingjob.py) over OutcomePlanner. Pure: no I/O, no clocks.
"""

from __future__ import annotations

from maas_operator.api import conditions
from maas_operator.api.trainingjob import ProgressStatus, WorkersStatus
from maas_operator.builders import trainingjob as build
from maas_operator.status.attempts import HeadFailure, classify_head_failure, progress_summary
from maas_operator.status.plan import Create, Event, describe_refusals, parse_time
from maas_operator.status.pods import PodView
from maas_operator.status.trainingjob_outcome import (
    CHILD_REJECTED,
    RESTARTING,
    RUNNING,
    STALLED,
    OutcomePlanner,
)


class SupervisionPlanner(OutcomePlanner):
    """Watches over the current attempt (`supervise_attempt`); see the module docstring."""

    def supervise_attempt(self) -> None:
        current = [pod for pod in self.pods if pod.attempt == self.status.attempt]
        head = next((pod for pod in current if pod.role == build.HEAD), None)
        if head is None:
            self.retry(HeadFailure("HeadPodLost", "the head pod disappeared", None, charged=False))
            return
        if head.deleting and not head.terminal:
            self.retry(HeadFailure("HeadPodDeleted", f"pod {head.name} was deleted", None, charged=False))
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
                create = Create(manifest)
                self.actions.append(create)
                if self.refused([create.key]):
                    continue  # a retry of a refused create: counted and announced the first time
                self.update(worker_restarts=self.status.worker_restarts + 1)
                self.events_after.append(Event("Warning", "WorkerRestarted", f"recreated worker pod {create.name}"))
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
            refused = self.refused()
            if refused:
                message += f"; the API server refuses {describe_refusals(refused)}"
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

    def why_not_running(self, head: PodView, current: list[PodView], running: int, minimum: int) -> tuple[str, str]:
        refused = self.refused()
        if refused:
            return CHILD_REJECTED, describe_refusals(refused)
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
