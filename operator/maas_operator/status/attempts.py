"""How a TrainingJob attempt ends and how the next one waits: who is to blame for a failed
head, how long to back off before retrying, and which pods of an ended attempt are stuck.

Pure functions of observations and time, used by the TrainingJob planner.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass

from maas_operator.api.trainingjob import ProgressStatus, VariantStatus
from maas_operator.status.plan import parse_time
from maas_operator.status.pods import PLATFORM_POD_REASONS, NodeView, PodView
from maas_workloads.contract import ExitCode, TerminationMessage


@dataclass(frozen=True)
class Timing:
    """The operator's clocks for retries and stuck pods (settings MAAS_OPERATOR_*, see config.py)."""

    restart_backoff_seconds: float = 10.0
    """Wait before attempt N+1, doubled per failed attempt of the run (Kubernetes Jobs: 10 s, doubling)."""
    restart_backoff_max_seconds: float = 360.0
    """At most this long (Kubernetes Jobs cap their pod-failure backoff at 6 minutes)."""
    force_delete_after_seconds: float = 60.0
    """How long past its grace period a pod on a lost node may stay Terminating before it is force-deleted."""


@dataclass(frozen=True)
class HeadFailure:
    reason: str
    message: str
    exit_code: int | None
    charged: bool
    """Counts against backoffLimit; otherwise against runPolicy.maxPlatformRetries."""
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


def variant_statuses(reported: object) -> list[VariantStatus]:
    """`model.variants` of a termination message as status; entries that are not well-formed are skipped."""
    statuses = []
    for entry in reported if isinstance(reported, list) else []:
        try:
            statuses.append(VariantStatus.model_validate(entry))
        except ValueError:
            continue
    return statuses


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


def restart_backoff(failed_attempts: int, timing: Timing) -> float:
    """Seconds between the end of the last failed attempt and the start of the next one."""
    if failed_attempts <= 0:
        return 0.0
    return float(min(timing.restart_backoff_max_seconds, timing.restart_backoff_seconds * 2 ** (failed_attempts - 1)))


@dataclass(frozen=True)
class Lingering:
    """A pod of an ended attempt that is still Terminating past its grace period."""

    pod: PodView
    waited: float
    """Seconds since its deletion was requested."""
    overdue: float
    """Seconds past its grace period."""
    node: NodeView | None
    """Its node, when the operator could read it."""
    force: bool
    """Force-delete it now: its node is lost and it is overdue by more than Timing.force_delete_after_seconds."""

    def describe(self) -> str:
        where = f"on node {self.pod.node}" if self.pod.node else "on no node"
        node = f" (node {self.node.describe()})" if self.node is not None else ""
        return f"pod {self.pod.name} {where} has been terminating for {int(self.waited)}s{node}"


def lingering_pods(
    pods: list[PodView], nodes: Mapping[str, NodeView | None], now: datetime.datetime, timing: Timing
) -> list[Lingering]:
    """Deleted pods still there after their grace period, and whether each may be force-deleted.

    Only a pod whose node is NotReady, Unknown or unreachable (or that never got a node) is
    force-deleted: a live kubelet may still be running its containers.
    """
    found = []
    for pod in pods:
        deadline = parse_time(pod.deletion_timestamp) if pod.deleting else None
        if deadline is None or now < deadline:
            continue
        overdue = (now - deadline).total_seconds()
        node = nodes.get(pod.node) if pod.node else None
        lost = pod.node is None or (node is not None and node.lost)
        force = lost and overdue >= timing.force_delete_after_seconds
        found.append(Lingering(pod, overdue + pod.grace_seconds, overdue, node, force))
    return found
