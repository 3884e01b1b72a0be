"""The only code that talks to the Kubernetes API server.

A thin, generic layer over kubernetes_asyncio's authenticated HTTP client: manifests in,
dicts out. Writes are idempotent: create treats 409 AlreadyExists as success, delete treats
404 as success, apply is server-side apply (which creates a missing object).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from maas_operator.builders.meta import FIELD_MANAGER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceType:
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}" if self.namespaced else f"{prefix}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


RESOURCE_TYPES: dict[str, ResourceType] = {
    "Pod": ResourceType("v1", "pods"),
    "Service": ResourceType("v1", "services"),
    "Event": ResourceType("v1", "events"),
    "Node": ResourceType("v1", "nodes", namespaced=False),
    "Deployment": ResourceType("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ResourceType("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ResourceType("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ResourceType("networking.k8s.io/v1", "networkpolicies"),
    "TrainingJob": ResourceType("maas.dev/v1alpha1", "trainingjobs"),
    "ModelService": ResourceType("maas.dev/v1alpha1", "modelservices"),
    "Lease": ResourceType("coordination.k8s.io/v1", "leases"),
}


class KubeError(Exception):
    """A refused or failed request: the HTTP status, and the API server's Status reason and message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"HTTP {status}{f' {reason}' if reason else ''}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotLeaderError(Exception):
    """A write refused before it was sent: this replica does not hold the leader Lease (any more)."""


def resource_type(kind: str) -> ResourceType:
    try:
        return RESOURCE_TYPES[kind]
    except KeyError:
        raise ValueError(f"the operator does not manage objects of kind {kind}") from None


class KubeClient:
    """`may_write`: asked before every request that is not a GET; False raises NotLeaderError instead
    of sending it (leader election: only the leader writes, and only until its lease deadline)."""

    def __init__(self, api: client.ApiClient, may_write: Callable[[], bool] | None = None) -> None:
        self._api = api
        self._may_write = may_write

    @classmethod
    async def connect(cls, may_write: Callable[[], bool] | None = None) -> KubeClient:
        """In a pod: the service account. Elsewhere: $KUBECONFIG or ~/.kube/config."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        return cls(client.ApiClient(configuration), may_write)

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        if method != "GET" and self._may_write is not None and not self._may_write():
            raise NotLeaderError(f"{method} {path}: this replica is not the leader")
        try:
            result = await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as error:
            raise _kube_error(error) from None
        return result if isinstance(result, dict) else {}

    async def create(self, manifest: dict[str, Any]) -> bool:
        """True when created, False when it already existed (409). Raises KubeError otherwise."""
        metadata = manifest["metadata"]
        path = resource_type(manifest["kind"]).path(metadata["namespace"])
        try:
            await self._call("POST", path, manifest, query=[("fieldManager", FIELD_MANAGER)])
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def apply(self, manifest: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply (force): `field_manager` then owns exactly the fields in the manifest.

        Creates the object when it is missing; fields this manager applied before and leaves out
        now are removed unless another manager also set them (Kubernetes' Server-Side Apply).
        """
        metadata = manifest["metadata"]
        path = resource_type(manifest["kind"]).path(metadata["namespace"], metadata["name"])
        query = [("fieldManager", field_manager), ("force", "true")]
        return await self._call("PATCH", path, manifest, "application/apply-patch+yaml", query)

    async def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """PUT: the object becomes exactly `manifest`. With metadata.resourceVersion set, the API
        server refuses it (KubeError 409 Conflict) when the object changed since that version."""
        metadata = manifest["metadata"]
        path = resource_type(manifest["kind"]).path(metadata["namespace"], metadata["name"])
        return await self._call("PUT", path, manifest, query=[("fieldManager", FIELD_MANAGER)])

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist. `namespace` is ignored for cluster-scoped kinds."""
        try:
            return await self._call("GET", resource_type(kind).path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str, grace_period_seconds: int | None = None) -> bool:
        """True when deletion started, False when the object was already gone.

        `grace_period_seconds` 0 removes a pod at once, without waiting for its kubelet to confirm
        (what `kubectl delete --force --grace-period=0` does); None keeps the object's own grace.
        """
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        try:
            await self._call("DELETE", resource_type(kind).path(namespace, name), body)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        path = resource_type(kind).path(namespace, name, "status")
        await self._call("PATCH", path, {"status": patch}, "application/merge-patch+json")


def _kube_error(error: ApiException) -> KubeError:
    """The API server's Status (reason, message) when the body has one, else the raw text."""
    raw: object = error.body
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    try:
        status = json.loads(text)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("message"):
        return KubeError(int(error.status or 0), str(status["message"]), str(status.get("reason") or ""))
    return KubeError(int(error.status or 0), text or str(error.reason), str(error.reason or ""))
