"""Pieces of pod specs shared by training and serving pods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maas_operator.api.pods import SCRATCH_MOUNT_PATHS, EnvVar, PodOptions, Resources

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


@dataclass(frozen=True)
class OperatorVolume:
    """A volume the operator adds to a pod, and where the main container mounts it."""

    volume: dict[str, Any]
    mount_path: str
    mount_options: dict[str, Any] = field(default_factory=dict)

    @property
    def mount(self) -> dict[str, Any]:
        return {"name": self.volume["name"], "mountPath": self.mount_path, **self.mount_options}


# With a read-only root filesystem, scratch space comes from these volumes.
TMP = OperatorVolume({"name": "maas-tmp", "emptyDir": {}}, "/tmp")
SHARED_MEMORY = OperatorVolume({"name": "maas-shm", "emptyDir": {"medium": "Memory"}}, "/dev/shm")
GPU_TOLERATION: dict[str, Any] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def volumes_and_mounts(
    own: list[OperatorVolume], options: PodOptions
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the main container's mounts: the operator's, then the user's.

    A user's mount at one of the operator's scratch paths (/tmp, /dev/shm, the model cache)
    replaces the operator's volume there (a bigger /dev/shm, a persistent cache); admission
    refuses user volumes named like the operator's and mounts at its other paths, so the result
    never holds two volumes of one name or two mounts at one path.
    """
    taken = {mount.mount_path for mount in options.volume_mounts}
    kept = [v for v in own if not (v.mount_path in taken and v.mount_path in SCRATCH_MOUNT_PATHS)]
    volumes = [v.volume for v in kept] + [volume.to_wire() for volume in options.volumes]
    mounts = [v.mount for v in kept] + [mount.to_wire() for mount in options.volume_mounts]
    return volumes, mounts


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
