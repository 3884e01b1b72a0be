"""The only code that talks to the Kubernetes API server.

A thin, generic layer over kubernetes_asyncio's authenticated HTTP client: manifests in,
dicts out. Every write is idempotent: create treats 409 as success, delete treats 404 as
success, apply is server-side apply with our field manager.
"""

from __future__ import annotations

import logging
import os
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

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


RESOURCE_TYPES: dict[str, ResourceType] = {
    "Pod": ResourceType("v1", "pods"),
    "Service": ResourceType("v1", "services"),
    "Event": ResourceType("v1", "events"),
    "Deployment": ResourceType("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ResourceType("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ResourceType("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ResourceType("networking.k8s.io/v1", "networkpolicies"),
    "TrainingJob": ResourceType("maas.dev/v1alpha1", "trainingjobs"),
    "ModelService": ResourceType("maas.dev/v1alpha1", "modelservices"),
}


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def resource_type(kind: str) -> ResourceType:
    try:
        return RESOURCE_TYPES[kind]
    except KeyError:
        raise ValueError(f"the operator does not manage objects of kind {kind}") from None


class KubeClient:
    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    async def connect(cls) -> KubeClient:
        """In a pod: the service account. Elsewhere: $KUBECONFIG or ~/.kube/config."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        return cls(client.ApiClient(configuration))

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
            raise KubeError(int(error.status or 0), _message(error)) from None
        return result if isinstance(result, dict) else {}

    async def create(self, manifest: dict[str, Any]) -> bool:
        """True when created, False when it already existed."""
        metadata = manifest["metadata"]
        path = resource_type(manifest["kind"]).path(metadata["namespace"])
        try:
            await self._call("POST", path, manifest, query=[("fieldManager", FIELD_MANAGER)])
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: we own exactly the fields in the manifest."""
        metadata = manifest["metadata"]
        path = resource_type(manifest["kind"]).path(metadata["namespace"], metadata["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return await self._call("PATCH", path, manifest, "application/apply-patch+yaml", query)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", resource_type(kind).path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """True when deletion started, False when the object was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
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

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch: an update by our field manager, separate from its applies."""
        path = resource_type(kind).path(namespace, name)
        query = [("fieldManager", FIELD_MANAGER)]
        return await self._call("PATCH", path, patch, "application/merge-patch+json", query)


def _message(error: ApiException) -> str:
    raw: object = error.body
    body = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    return f"{error.reason}: {body}" if body else str(error.reason)
