"""The leader election Lease (coordination.k8s.io/v1) on the API server: read, create, replace.

Three verbs on one object, which is what the chart's Role grants (get and update on this Lease by
name, create on leases): no list, no watch, no delete.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

from maas_operator.election import LeaseRecord
from maas_operator.kube.client import KubeClient, KubeError

SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""The pod's own namespace, as the kubelet mounts it with the service account token."""


def micro_time(value: datetime.datetime | None) -> str | None:
    """A Kubernetes MicroTime: RFC 3339 in UTC with exactly six fractional digits."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_record(lease: dict[str, Any]) -> LeaseRecord:
    """The record a Lease object holds (missing fields read as their zero values)."""
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_micro_time(spec.get("acquireTime")),
        renew_time=parse_micro_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
    )


class LeaseClient:
    """One Lease, `namespace`/`name`. Raises KubeError for any answer but the ones each method names."""

    def __init__(self, kube: KubeClient, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name

    def describe(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def manifest(self, record: LeaseRecord) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if record.resource_version:
            metadata["resourceVersion"] = record.resource_version
        spec = {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.lease_duration_seconds,
            "acquireTime": micro_time(record.acquire_time),
            "renewTime": micro_time(record.renew_time),
            "leaseTransitions": record.transitions,
        }
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {key: value for key, value in spec.items() if value is not None},
        }

    async def get(self) -> LeaseRecord | None:
        """The Lease's record; None when there is no Lease."""
        found = await self.kube.get("Lease", self.namespace, self.name)
        return lease_record(found) if found is not None else None

    async def create(self, record: LeaseRecord) -> LeaseRecord | None:
        """Create the Lease; None when another candidate created it first (409 AlreadyExists).

        Returns the stored record read back (its resourceVersion is what the next renew needs), or
        `record` itself, without a resourceVersion, when that read fails.
        """
        if not await self.kube.create(self.manifest(record)):
            return None
        try:
            stored = await self.get()
        except KubeError:
            stored = None
        return stored if stored is not None else record

    async def update(self, record: LeaseRecord) -> LeaseRecord | None:
        """Replace the Lease if its resourceVersion is still `record.resource_version`.

        Returns the stored record; None when the Lease changed since (409 Conflict) or is gone (404).
        """
        if not record.resource_version:
            raise ValueError("a Lease update needs the resourceVersion it was read at")
        try:
            stored = await self.kube.replace(self.manifest(record))
        except KubeError as error:
            if error.status in (404, 409):
                return None
            raise
        return lease_record(stored)


def pod_namespace() -> str | None:
    """The namespace this pod runs in (None outside a pod)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None
