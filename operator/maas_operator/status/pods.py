"""What the operator needs to know about one pod, read from its manifest and status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maas_operator.builders.meta import LABEL_ATTEMPT, LABEL_ROLE, LABEL_WORKER_INDEX

# Pod-level reasons the kubelet or control plane sets when the platform, not the workload, ended a pod.
PLATFORM_POD_REASONS = frozenset(
    {"Evicted", "Preempting", "NodeLost", "NodeShutdown", "Shutdown", "Terminated", "UnexpectedAdmissionError"}
)
# Container waiting reasons that mean the pod will not start without the user's help.
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)


@dataclass(frozen=True)
class PodView:
    name: str
    role: str
    """head or worker (TrainingJob); the component for other owners."""
    attempt: int
    index: int | None
    phase: str
    """Pending, Running, Succeeded, Failed or Unknown."""
    ready: bool = False
    deleting: bool = False
    exit_code: int | None = None
    reason: str | None = None
    """The container's termination reason (OOMKilled, Error, ...) or the pod's (Evicted, ...)."""
    message: str | None = None
    """The container's termination message, or the pod's status message."""
    disruption: str | None = None
    """The reason of a DisruptionTarget condition: the platform is ending this pod."""
    unschedulable: str | None = None
    """The scheduler's explanation while the pod cannot be placed."""
    waiting_reason: str | None = None
    waiting_message: str | None = None
    restarts: int = 0

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting

    @property
    def stuck(self) -> bool:
        return self.waiting_reason in STUCK_WAITING_REASONS


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _condition(status: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == condition_type), None)


def pod_view(pod: dict[str, Any]) -> PodView:
    """Summarise a pod manifest as the operator sees it (works on partial emulator objects)."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    main = statuses[0] if statuses else {}
    state = main.get("state") or {}
    terminated = state.get("terminated") or (main.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}

    scheduled = _condition(status, "PodScheduled")
    unschedulable = None
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = scheduled.get("message") or "the scheduler cannot place the pod"
    disruption = _condition(status, "DisruptionTarget")
    ready = _condition(status, "Ready")

    return PodView(
        name=metadata.get("name", ""),
        role=labels.get(LABEL_ROLE, ""),
        attempt=_int(labels.get(LABEL_ATTEMPT)) or 0,
        index=_int(labels.get(LABEL_WORKER_INDEX)),
        phase=status.get("phase") or "Pending",
        ready=bool(ready and ready.get("status") == "True"),
        deleting=bool(metadata.get("deletionTimestamp")),
        exit_code=_int(terminated.get("exitCode")),
        reason=status.get("reason") if status.get("reason") in PLATFORM_POD_REASONS else terminated.get("reason"),
        message=terminated.get("message") or status.get("message"),
        disruption=disruption.get("reason") if disruption and disruption.get("status") == "True" else None,
        unschedulable=unschedulable,
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        restarts=_int(main.get("restartCount")) or 0,
    )
