"""The two conditions kstatus reads, `Reconciling` and `Stalled`, derived from what a planner decided.

kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, behind Flux's `healthChecks` and `wait`,
`kpt live status` and cli-utils' appliers) judges a custom resource by four rules only
(`checkGenericProperties` in generic.go): `metadata.deletionTimestamp` set -> Terminating;
`status.observedGeneration` != `metadata.generation` -> InProgress; a condition
`Reconciling=True` -> InProgress; `Stalled=True` -> Failed; otherwise Current. It reads no
`Ready` condition and knows nothing of our phases, so without these two every TrainingJob and
ModelService would look Current from the moment the operator first wrote its status.

Both are "abnormal-true" (absent means False) and never True together. For a TrainingJob,
`Stalled` is also the missing-heartbeat condition the planner sets: a stall is exactly what
kstatus means by Failed ("insufficient progress"), and so is a failed run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from maas_operator.api import conditions
from maas_operator.api.common import Condition, ConditionStatus
from maas_operator.api.modelservice import ModelServiceStatus
from maas_operator.api.trainingjob import TrainingJobStatus

RECONCILING = "Reconciling"
STALLED = "Stalled"
# ModelResolved reasons that only a change of the spec (or the TrainingJob) can fix.
_UNRESOLVABLE = frozenset({"TrainingJobFailed", "ChecksumMismatch"})
StatusT = TypeVar("StatusT", TrainingJobStatus, ModelServiceStatus)


@dataclass(frozen=True)
class Verdict:
    """Where the object stands for kstatus: still working, stuck until someone acts, or done."""

    state: Literal["reconciling", "stalled", "current"]
    reason: str
    message: str


def trainingjob_verdict(status: TrainingJobStatus) -> Verdict:
    """A run is in progress until it ends: Current once it succeeded (or is suspended), Failed
    (Stalled=True) when it failed or stopped reporting progress — as kstatus judges a batch Job."""
    found = {c.type: c for c in status.conditions}
    if status.phase == "Failed" and "Failed" in found:
        return Verdict("stalled", found["Failed"].reason, found["Failed"].message)
    if status.phase == "Succeeded":
        return Verdict("current", "Succeeded", "the run succeeded")
    if status.phase == "Suspended":
        return Verdict("current", "Suspended", "suspended by runPolicy.suspend")
    stall = found.get(STALLED)
    if stall is not None and stall.status == "True" and stall.reason == "NoHeartbeat":
        return Verdict("stalled", stall.reason, stall.message)
    running = found.get("Running")
    if running is not None and running.status == "False":
        return Verdict("reconciling", running.reason, running.message)
    summary = status.progress.summary if status.progress else None
    return Verdict("reconciling", status.phase or "Pending", f"training: {summary or 'in progress'}")


def modelservice_verdict(status: ModelServiceStatus) -> Verdict:
    """Current once the spec's model is rolled out and healthy (or deliberately scaled to zero);
    Failed (Stalled=True) when only a change can help: an invalid spec, a failed rollout, a model
    that can never be resolved, a failed canary; in progress otherwise."""
    found = {c.type: c for c in status.conditions}

    def state(condition_type: str) -> tuple[str, str, str]:
        condition = found.get(condition_type)
        return (condition.status, condition.reason, condition.message) if condition else ("Unknown", "", "")

    ready, progressing, degraded = state("Ready"), state("Progressing"), state("Degraded")
    resolved, rolled_back = state("ModelResolved"), state("RolledBack")
    if status.phase == "Failed":
        return Verdict("stalled", ready[1] or "Failed", ready[2])
    if rolled_back[0] == "True":
        return Verdict("stalled", rolled_back[1], rolled_back[2])
    if resolved[0] == "False" and resolved[1] in _UNRESOLVABLE:
        return Verdict("stalled", resolved[1], resolved[2])
    if degraded[0] == "True" and degraded[1] != "InsufficientReplicas":
        return Verdict("stalled", degraded[1], degraded[2])
    if status.canary is not None and status.canary.phase == "Failed":
        return Verdict("stalled", "CanaryFailed", status.canary.message or "the canary failed")
    settled = progressing[1] == "RolloutComplete" and degraded[0] == "False" and resolved[0] == "True"
    canary_moving = status.canary is not None and status.canary.phase == "Progressing"
    if settled and not canary_moving and (ready[0] == "True" or ready[1] == "ScaledToZero"):
        return Verdict("current", ready[1], ready[2])
    for condition in (progressing, resolved, ready):
        if condition[0] in ("True", "False") and condition[1] not in ("RolloutComplete", "Available", "UriSet"):
            return Verdict("reconciling", condition[1], condition[2])
    return Verdict("reconciling", "Reconciling", "the operator is bringing the children to the spec")


def with_kstatus(current: list[Condition], verdict: Verdict, stamp: str, generation: int | None) -> list[Condition]:
    """`current` with Reconciling and Stalled set from `verdict`.

    Reconciling always tells the verdict's reason. A Stalled=False that is already there is left
    as it is: for a TrainingJob the heartbeat check owns it (Stalled=False Heartbeat).
    """
    reconciling: ConditionStatus = "True" if verdict.state == "reconciling" else "False"
    updated = conditions.set_condition(
        current, RECONCILING, reconciling, verdict.reason, verdict.message, stamp, generation
    )
    stalled = conditions.find(updated, STALLED)
    if verdict.state == "stalled":
        return conditions.set_condition(updated, STALLED, "True", verdict.reason, verdict.message, stamp, generation)
    if stalled is None or stalled.status != "False":
        reason = "Progressing" if verdict.state == "reconciling" else verdict.reason
        message = "the operator is making progress" if verdict.state == "reconciling" else verdict.message
        return conditions.set_condition(updated, STALLED, "False", reason, message, stamp, generation)
    return updated


def judged(status: StatusT, stamp: str, generation: int | None) -> StatusT:
    """`status` with its kstatus conditions brought in line with the rest of it (planners call
    this on every status they hand back)."""
    verdict = trainingjob_verdict(status) if isinstance(status, TrainingJobStatus) else modelservice_verdict(status)
    return status.model_copy(update={"conditions": with_kstatus(status.conditions, verdict, stamp, generation)})
