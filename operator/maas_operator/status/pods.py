"""What the operator needs to know about one pod, read from its manifest and status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maas_operator.builders.meta import LABEL_ATTEMPT, LABEL_ROLE, LABEL_WORKER_INDEX
from maas_operator.builders.trainingjob import HEAD
from maas_workloads.contract import ENV_TRAININGJOB

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


DEFAULT_GRACE_SECONDS = 30
"""terminationGracePeriodSeconds when a pod does not set it (the Kubernetes default)."""
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
"""The node lifecycle controller's taint once a node stops reporting."""


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
    node: str | None = None
    """spec.nodeName: where the pod was scheduled."""
    deletion_timestamp: str | None = None
    """metadata.deletionTimestamp: the time by which a graceful deletion should be over."""
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    """The deletion's grace period (metadata.deletionGracePeriodSeconds, else the pod's own)."""
    trainingjob_spec: str | None = None
    """A TrainingJob head's MAAS_TRAININGJOB: the spec (JSON) its attempt was built from. Heads only,
    so the operator keeps one copy per job."""

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
    spec = pod.get("spec") or {}
    grace = _int(metadata.get("deletionGracePeriodSeconds"))
    if grace is None:
        grace = _int(spec.get("terminationGracePeriodSeconds"))

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
        node=spec.get("nodeName") or None,
        deletion_timestamp=metadata.get("deletionTimestamp"),
        grace_seconds=DEFAULT_GRACE_SECONDS if grace is None else grace,
        trainingjob_spec=_env(spec, ENV_TRAININGJOB) if labels.get(LABEL_ROLE) == HEAD else None,
    )


def _env(pod_spec: dict[str, Any], name: str) -> str | None:
    """A literal env value of the pod's first container."""
    containers = pod_spec.get("containers") or [{}]
    return next((e.get("value") for e in containers[0].get("env") or [] if e.get("name") == name), None)


@dataclass(frozen=True)
class NodeView:
    """Whether a node's kubelet can still confirm that its pods are gone."""

    name: str
    ready: bool | None
    """The Ready condition: True, False, or None when Unknown (the kubelet stopped reporting)."""
    message: str = ""
    unreachable: bool = False
    """Tainted node.kubernetes.io/unreachable by the node lifecycle controller."""

    @property
    def lost(self) -> bool:
        """NotReady, Unknown or unreachable: pods there will not finish terminating by themselves."""
        return self.ready is not True or self.unreachable

    def describe(self) -> str:
        state = "Ready" if self.ready else ("NotReady" if self.ready is False else "Unknown")
        if self.unreachable:
            state += ", unreachable"
        return f"{state}{f': {self.message}' if self.message else ''}"


def node_view(node: dict[str, Any]) -> NodeView:
    status = node.get("status") or {}
    ready = _condition(status, "Ready") or {}
    taints = (node.get("spec") or {}).get("taints") or []
    flag = ready.get("status")
    return NodeView(
        name=(node.get("metadata") or {}).get("name", ""),
        ready=True if flag == "True" else (False if flag == "False" else None),
        message=ready.get("message") or "",
        unreachable=any(t.get("key") == UNREACHABLE_TAINT for t in taints),
    )
