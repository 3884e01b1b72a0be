"""kstatus' verdict on a custom resource, for tests: the rules of sigs.k8s.io/cli-utils
pkg/kstatus/status (`Compute` in status.go, `checkGenericProperties` and `checkGeneration` in
generic.go) as they apply to a kind with no built-in rule, which is all Flux's `healthChecks`,
`kpt live status` and cli-utils' appliers look at for ours. Go cannot run here; these four
rules are the whole decision for custom resources."""

from __future__ import annotations

from typing import Any, Literal

KStatus = Literal["InProgress", "Failed", "Current", "Terminating"]


def compute(obj: dict[str, Any]) -> KStatus:
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return "Terminating"
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"  # LatestGenerationNotObserved
    for condition in status.get("conditions") or []:  # the first abnormal-true condition decides
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress"
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed"
    return "Current"
