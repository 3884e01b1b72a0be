"""Identity, labels and ownership shared by every child object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maas_workloads.contract import API_GROUP, API_VERSION

MANAGED_BY = "maas-operator"
FIELD_MANAGER = "maas-operator"
REPLICAS_FIELD_MANAGER = "maas-operator-replicas"
"""Co-owns an autoscaled Deployment's spec.replicas so that our main apply can leave the field out
without the API server resetting it (Server-Side Apply's "transferring ownership" recipe)."""
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_TRAININGJOB = f"{API_GROUP}/trainingjob"
LABEL_MODELSERVICE = f"{API_GROUP}/modelservice"
LABEL_ROLE = f"{API_GROUP}/role"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
LABEL_WORKER_INDEX = f"{API_GROUP}/worker-index"


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns a child object."""

    kind: str
    name: str
    namespace: str
    uid: str

    @property
    def api_version(self) -> str:
        return f"{API_GROUP}/{API_VERSION}"

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def owner_label(owner: Owner) -> str:
    return LABEL_TRAININGJOB if owner.kind == "TrainingJob" else LABEL_MODELSERVICE


def selector_labels(owner: Owner) -> dict[str, str]:
    """The labels that identify an owner's children (stable: used in selectors)."""
    return {LABEL_MANAGED_BY: MANAGED_BY, owner_label(owner): owner.name}


def child_labels(owner: Owner, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **(extra or {}),
        LABEL_NAME: owner.kind.lower(),
        LABEL_INSTANCE: owner.name,
        LABEL_COMPONENT: component,
        **selector_labels(owner),
    }


def child_metadata(
    owner: Owner,
    name: str,
    component: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner, component, labels),
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata
