"""Pieces of pod specs shared by training and serving pods."""

from __future__ import annotations

from typing import Any

from maas_operator.api.common import EnvVar, PodOptions, Resources

GPU_RESOURCE = "nvidia.com/gpu"
RUN_AS_USER = 1000

# The "restricted" Pod Security Standard, at pod and container level.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# With a read-only root filesystem, scratch space comes from these volumes.
SCRATCH_VOLUMES: list[dict[str, Any]] = [
    {"name": "tmp", "emptyDir": {}},
    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
]
SCRATCH_MOUNTS: list[dict[str, Any]] = [
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "dshm", "mountPath": "/dev/shm"},
]
GPU_TOLERATION: dict[str, Any] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def container_resources(resources: Resources) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if resources.cpu is not None:
        requests["cpu"] = resources.cpu
    if resources.memory is not None:
        requests["memory"] = limits["memory"] = resources.memory
    if resources.ephemeral_storage is not None:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = resources.ephemeral_storage
    if resources.gpu:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = resources.gpu
    result: dict[str, Any] = {}
    if requests:
        result["requests"] = requests
    if limits:
        result["limits"] = limits
    return result


def env_list(fixed: dict[str, str], user: list[EnvVar]) -> list[dict[str, Any]]:
    """Operator-provided variables first; a user's variable of the same name wins."""
    user_names = {var.name for var in user}
    rendered = [{"name": name, "value": value} for name, value in fixed.items() if name not in user_names]
    return rendered + [var.to_wire() for var in user]


def tolerations(options: PodOptions) -> list[dict[str, Any]]:
    rendered = [toleration.to_wire() for toleration in options.tolerations]
    if options.resources.gpu and not any(t.key == GPU_RESOURCE for t in options.tolerations):
        rendered.append(dict(GPU_TOLERATION))
    return rendered


def placement(options: PodOptions) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity, leaving out what is empty."""
    spec: dict[str, Any] = {}
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    rendered_tolerations = tolerations(options)
    if rendered_tolerations:
        spec["tolerations"] = rendered_tolerations
    if options.affinity:
        spec["affinity"] = dict(options.affinity)
    return spec
