"""The children of a TrainingJob: a Ray head pod, worker pods and the head's Service."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from maas_operator.api.common import StorageLocation
from maas_operator.api.pods import PodOptions
from maas_operator.api.trainingjob import KUEUE_QUEUE_LABEL, TrainingJobSpec
from maas_operator.builders.meta import (
    LABEL_ATTEMPT,
    LABEL_ROLE,
    LABEL_WORKER_INDEX,
    Owner,
    child_metadata,
    selector_labels,
)
from maas_operator.builders.pods import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    SHARED_MEMORY,
    TMP,
    OperatorVolume,
    container_resources,
    env_list,
    placement,
    volumes_and_mounts,
)
from maas_workloads import contract

HEAD = "head"
WORKER = "worker"
MOUNT_ROOT = contract.PVC_MOUNT_ROOT
LAUNCH_COMMAND = ["python", "-m", "maas_workloads.launch"]


def head_pod_name(job: str) -> str:
    return f"{job}-head"


def worker_pod_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def head_service_name(job: str) -> str:
    return f"{job}-head"


def head_host(owner: Owner) -> str:
    return f"{head_service_name(owner.name)}.{owner.namespace}.svc"


@dataclass(frozen=True)
class StorageWiring:
    """How checkpoint and output locations reach the pods."""

    env: dict[str, str] = field(default_factory=dict)
    volumes: list[OperatorVolume] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


def storage_wiring(spec: TrainingJobSpec) -> StorageWiring:
    """Mount each referenced claim once and turn every location into a URI for the workload.

    Volumes are named by position (`maas-pvc-0`, ...): a claim's own name may be too long or
    dotted for a volume name, which must be a DNS-1123 label.
    """
    wiring = StorageWiring()
    claims: list[str] = []
    locations: list[tuple[str, StorageLocation | None]] = [
        (contract.ENV_CHECKPOINT_URI, spec.checkpoint),
        (contract.ENV_OUTPUT_URI, spec.output),
    ]
    for env_name, location in locations:
        if location is None:
            continue
        if location.pvc is not None:
            claim = location.pvc.claim_name
            mount_path = f"{MOUNT_ROOT}/{claim}"
            if claim not in claims:
                volume = {"name": f"maas-pvc-{len(claims)}", "persistentVolumeClaim": {"claimName": claim}}
                wiring.volumes.append(OperatorVolume(volume, mount_path))
                claims.append(claim)
            subpath = location.pvc.path.strip("/")
            wiring.env[env_name] = f"file://{mount_path}" + (f"/{subpath}" if subpath else "")
        elif location.uri is not None:
            wiring.env[env_name] = location.uri
        if location.secret_ref is not None and location.secret_ref.name not in wiring.secrets:
            wiring.secrets.append(location.secret_ref.name)
    dataset_secret = spec.trainer.dataset.secret_ref if spec.trainer else None
    if dataset_secret is not None and dataset_secret.name not in wiring.secrets:
        wiring.secrets.append(dataset_secret.name)
    return wiring


def _identity_env(owner: Owner, spec: TrainingJobSpec, attempt: int, role: str) -> dict[str, str]:
    return {
        contract.ENV_JOB_NAME: owner.name,
        contract.ENV_JOB_NAMESPACE: owner.namespace,
        contract.ENV_JOB_UID: owner.uid,
        contract.ENV_ATTEMPT: str(attempt),
        contract.ENV_ROLE: role,
        contract.ENV_HEAD_ADDRESS: f"{head_host(owner)}:{contract.RAY_GCS_PORT}",
        contract.ENV_WORKERS: str(spec.workers.replicas),
        contract.ENV_MIN_WORKERS: str(spec.workers.effective_min_replicas),
        contract.ENV_TRAININGJOB: json.dumps(spec.to_wire(), separators=(",", ":"), sort_keys=True),
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
    }


def _pod(
    owner: Owner,
    spec: TrainingJobSpec,
    attempt: int,
    role: str,
    name: str,
    options: PodOptions,
    default_image: str,
    ports: list[dict[str, Any]],
    extra_labels: dict[str, str],
) -> dict[str, Any]:
    wiring = storage_wiring(spec)
    volumes, mounts = volumes_and_mounts([TMP, SHARED_MEMORY, *wiring.volumes], options)
    policy = spec.run_policy
    labels = {**options.labels, LABEL_ROLE: role, LABEL_ATTEMPT: str(attempt), **extra_labels}
    if policy.queue_name:
        labels[KUEUE_QUEUE_LABEL] = policy.queue_name
    container: dict[str, Any] = {
        "name": role,
        "image": spec.image or default_image,
        "command": [*LAUNCH_COMMAND, role],
        "env": env_list({**_identity_env(owner, spec, attempt, role), **wiring.env}, options.env),
        "resources": container_resources(options.resources),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": mounts,
        # A crash before the launcher writes its JSON still leaves the log's tail as the reason.
        "terminationMessagePath": contract.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if ports:
        container["ports"] = ports
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if wiring.secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in wiring.secrets]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "containers": [container],
        "volumes": volumes,
        **placement(options),
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [secret.to_wire() for secret in spec.image_pull_secrets]
    if policy.priority_class_name:
        pod_spec["priorityClassName"] = policy.priority_class_name
    if policy.scheduler_name:
        pod_spec["schedulerName"] = policy.scheduler_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": child_metadata(owner, name, f"ray-{role}", labels, options.annotations),
        "spec": pod_spec,
    }


def head_pod(owner: Owner, spec: TrainingJobSpec, attempt: int, default_image: str) -> dict[str, Any]:
    ports = [
        {"name": "gcs", "containerPort": contract.RAY_GCS_PORT},
        {"name": "dashboard", "containerPort": contract.RAY_DASHBOARD_PORT},
        {"name": "client", "containerPort": contract.RAY_CLIENT_PORT},
        {"name": contract.PROGRESS_PORT_NAME, "containerPort": contract.PROGRESS_PORT},
    ]
    return _pod(owner, spec, attempt, HEAD, head_pod_name(owner.name), spec.head, default_image, ports, {})


def worker_pod(owner: Owner, spec: TrainingJobSpec, attempt: int, index: int, default_image: str) -> dict[str, Any]:
    name = worker_pod_name(owner.name, index)
    return _pod(owner, spec, attempt, WORKER, name, spec.workers, default_image, [], {LABEL_WORKER_INDEX: str(index)})


def head_service(owner: Owner) -> dict[str, Any]:
    """Headless, so the head's DNS name resolves to its pod even before it is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, head_service_name(owner.name), "ray-head"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {**selector_labels(owner), LABEL_ROLE: HEAD},
            "ports": [
                {"name": "gcs", "port": contract.RAY_GCS_PORT, "targetPort": "gcs"},
                {"name": "dashboard", "port": contract.RAY_DASHBOARD_PORT, "targetPort": "dashboard"},
                {"name": "client", "port": contract.RAY_CLIENT_PORT, "targetPort": "client"},
                {
                    "name": contract.PROGRESS_PORT_NAME,
                    "port": contract.PROGRESS_PORT,
                    "targetPort": contract.PROGRESS_PORT_NAME,
                },
            ],
        },
    }


def network_policy(owner: Owner) -> dict[str, Any]:
    """Ray's ports have no authentication: only the job's own pods may reach them.

    The progress port (read-only, and writes need the job's UID) stays open to the operator
    and Prometheus, wherever they run; egress (storage, registries) is left alone.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(owner, network_policy_name(owner.name), "ray"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": selector_labels(owner)}}]},
                {"ports": [{"port": contract.PROGRESS_PORT, "protocol": "TCP"}]},
            ],
        },
    }


def network_policy_name(job: str) -> str:
    return f"{job}-ray"


def attempt_children(owner: Owner, spec: TrainingJobSpec, attempt: int, default_image: str) -> list[dict[str, Any]]:
    """Everything one attempt runs on: the NetworkPolicy, the head Service, the head pod, every worker pod."""
    return [
        network_policy(owner),
        head_service(owner),
        head_pod(owner, spec, attempt, default_image),
        *(worker_pod(owner, spec, attempt, i, default_image) for i in range(spec.workers.replicas)),
    ]
