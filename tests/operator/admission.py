"""What the Kubernetes API server refuses at admission, modelled for the test emulator
(tests/operator/emulator.py), in the API server's own words.

Modelled: object names (DNS-1035 labels for Services, DNS-1123 subdomains for the rest), label
keys and values and annotation keys (apimachinery's validation), duplicate pod volume names,
duplicate mount paths and mounts of undeclared volumes (core/v1 pod validation), a
PodDisruptionBudget with both minAvailable and maxUnavailable, and a ResourceQuota's hard
limits on pods and integer pod requests (extended resources such as nvidia.com/gpu).
Not modelled: every other field rule, CEL rules of CRDs, quotas on cpu/memory quantities.
"""

from __future__ import annotations

import re
from typing import Any

LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS_LABEL_1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
LABEL_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    f"validation is '({LABEL_NAME})?')"
)
NAME_HELP = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    f"alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{LABEL_NAME}')"
)
DNS_1035_HELP = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    f"validation is '{DNS_LABEL_1035}')"
)
DNS_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{DNS_SUBDOMAIN}')"
)
PDB_BOTH_BOUNDS = "minAvailable and maxUnavailable cannot be both set"
GROUPS = {
    "Deployment": "apps",
    "HorizontalPodAutoscaler": "autoscaling",
    "PodDisruptionBudget": "policy",
    "NetworkPolicy": "networking.k8s.io",
    "TrainingJob": "maas.dev",
    "ModelService": "maas.dev",
}


def qualified_name_errors(field: str, key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not re.fullmatch(DNS_SUBDOMAIN, prefix)):
        errors.append(f'{field}: Invalid value: "{key}": prefix part {DNS_SUBDOMAIN_HELP}')
    if not name or len(name) > 63 or not re.fullmatch(LABEL_NAME, name):
        errors.append(f'{field}: Invalid value: "{key}": {NAME_HELP}')
    return errors


def label_errors(field: str, labels: Any) -> list[str]:
    errors = []
    for key, value in (labels or {}).items():
        errors += qualified_name_errors(field, key)
        text = str(value)
        if len(text) > 63 or (text and not re.fullmatch(LABEL_NAME, text)):
            errors.append(f'{field}: Invalid value: "{text}": {LABEL_VALUE_HELP}')
    return errors


def pod_spec_errors(field: str, spec: dict[str, Any]) -> list[str]:
    errors = []
    declared: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        name = volume.get("name")
        if name in declared:
            errors.append(f'{field}.volumes[{index}].name: Duplicate value: "{name}"')
        declared.add(name)
    for group in ("initContainers", "containers"):
        for c_index, container in enumerate(spec.get(group) or []):
            paths: set[str] = set()
            for m_index, mount in enumerate(container.get("volumeMounts") or []):
                where = f"{field}.{group}[{c_index}].volumeMounts[{m_index}]"
                if mount.get("name") not in declared:
                    errors.append(f'{where}.name: Not found: "{mount.get("name")}"')
                if mount.get("mountPath") in paths:
                    errors.append(f'{where}.mountPath: Invalid value: "{mount.get("mountPath")}": must be unique')
                paths.add(mount.get("mountPath"))
    return errors


def object_errors(kind: str, obj: dict[str, Any], creating: bool) -> list[str]:
    """Field errors the API server reports for this write (empty: admitted)."""
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name") or "")
    errors = []
    if creating and kind == "Service" and (len(name) > 63 or not re.fullmatch(DNS_LABEL_1035, name)):
        errors.append(f'metadata.name: Invalid value: "{name}": {DNS_1035_HELP}')
    elif creating and (len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN, name)):
        errors.append(f'metadata.name: Invalid value: "{name}": {DNS_SUBDOMAIN_HELP}')
    errors += label_errors("metadata.labels", metadata.get("labels"))
    for key in metadata.get("annotations") or {}:
        errors += qualified_name_errors("metadata.annotations", key)
    spec = obj.get("spec") or {}
    if kind == "Pod":
        errors += pod_spec_errors("spec", spec)
    if kind == "Deployment":
        template = spec.get("template") or {}
        errors += label_errors("spec.template.metadata.labels", (template.get("metadata") or {}).get("labels"))
        errors += pod_spec_errors("spec.template.spec", template.get("spec") or {})
    if kind == "PodDisruptionBudget" and "minAvailable" in spec and "maxUnavailable" in spec:
        errors.append(
            "spec: Invalid value: policy.PodDisruptionBudgetSpec: minAvailable and maxUnavailable cannot be both set"
        )
    return errors


def invalid_message(kind: str, name: str, errors: list[str]) -> str:
    """E.g. `Deployment.apps "digits" is invalid: spec.template.metadata.labels: Invalid value: ...`."""
    group = GROUPS.get(kind)
    qualified = f"{kind}.{group}" if group else kind
    detail = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    return f'{qualified} "{name}" is invalid: {detail}'


def _pod_request(pod: dict[str, Any], resource: str) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(resource, (resources.get("limits") or {}).get(resource, 0))
        total += int(value)
    return total


def quota_refusal(quota: str, hard: dict[str, int], pods: list[dict[str, Any]], pod: dict[str, Any]) -> str | None:
    """The ResourceQuota admission plugin's refusal of creating `pod` beside the non-terminal `pods`."""
    active = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    over = []
    for resource, limit in sorted(hard.items()):
        if resource == "pods":
            requested, used = 1, len(active)
        else:
            name = resource.removeprefix("requests.")
            requested, used = _pod_request(pod, name), sum(_pod_request(p, name) for p in active)
        if requested and used + requested > limit:
            over.append((resource, requested, used, limit))
    if not over:
        return None
    name = (pod.get("metadata") or {}).get("name", "")
    requested = ",".join(f"{r}={q}" for r, q, _, _ in over)
    used = ",".join(f"{r}={u}" for r, _, u, _ in over)
    limited = ",".join(f"{r}={limit}" for r, _, _, limit in over)
    return (
        f'pods "{name}" is forbidden: exceeded quota: {quota}, requested: {requested}, used: {used}, limited: {limited}'
    )
