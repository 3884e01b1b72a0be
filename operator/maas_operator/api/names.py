"""Which names a TrainingJob or ModelService may have: those whose every derived child name is valid.

The operator names children after their owner: `<name>-head` (Pod and headless Service),
`<name>-worker-<i>` (Pods), `<name>-ray` (NetworkPolicy) for a TrainingJob; `<name>` (Deployment,
Service, HorizontalPodAutoscaler, PodDisruptionBudget) and `<name>-canary` (Deployment) for a
ModelService. A Service name must be a DNS-1035 label (a letter
first, no dots, at most 63 characters: Kubernetes' IsDNS1035Label), so every child name is held to
that: the custom resource's own name must be a DNS-1035 label short enough for its longest child.
"""

from __future__ import annotations

from maas_operator.api.validation import DNS1035_LABEL, DNS_LABEL_MAX_LENGTH, Rule, cel_matches, full_match


def max_name_length(longest_suffix: str) -> int:
    """The longest owner name whose `<name><longest_suffix>` still fits a DNS label."""
    return DNS_LABEL_MAX_LENGTH - len(longest_suffix)


def name_rules(kind: str, longest_suffix: str) -> list[Rule]:
    """Rules on `metadata.name`, for the CRD's root (`self.metadata.name`) and for the operator."""
    limit = max_name_length(longest_suffix)
    example = f"<name>{longest_suffix}"
    return [
        Rule(
            cel_matches("self.metadata.name", DNS1035_LABEL),
            f"metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter "
            f"and ending with a letter or digit (e.g. digits-v2, not digits.v2 or 2digits), because the "
            f"operator names the {kind}'s pods and Services after it",
            lambda name: full_match(DNS1035_LABEL, name),
        ),
        Rule(
            f"size(self.metadata.name) <= {limit}",
            f"metadata.name must be at most {limit} characters, so that the longest child name ({example}) "
            f"fits in {DNS_LABEL_MAX_LENGTH}",
            lambda name: len(name) <= limit,
        ),
    ]


def name_error(rules: list[Rule], name: str) -> str | None:
    """The message of the first rule `name` breaks (the API server would report it), or None."""
    return next((rule.message for rule in rules if not rule.check(name)), None)
