"""The only code that talks to the Kubernetes API server.

A thin, generic layer over aiohttp: manifests in, dicts out. kubernetes_asyncio loads the
configuration (in-cluster service account or kubeconfig) and refreshes its credentials;
requests go straight through one aiohttp session. Its own HTTP layer would re-serialise every
body, and trusts the environment on every request (a netrc lookup and a proxy lookup, each in a
thread), which together cost more CPU than the rest of a reconcile in a burst; the proxy the
environment names is looked up once, at start. Writes are idempotent: create treats 409
AlreadyExists as success, delete treats 404 as success, apply is server-side apply (which
creates a missing object).
"""

from __future__ import annotations

import logging
import os
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config

from maas_operator.builders.meta import FIELD_MANAGER

REQUEST_TIMEOUT_SECONDS = 30.0
"""A request the API server has not answered in this long fails (and is retried with backoff)."""
MAX_CONNECTIONS = 100
"""Connections to the API server at most (kubernetes_asyncio's default pool size)."""

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

    def __init__(
        self,
        configuration: client.Configuration,
        session: aiohttp.ClientSession,
        proxy: str | None,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self._configuration = configuration
        self._session = session
        self._proxy = proxy
        self._host = str(configuration.host).rstrip("/")
        self._may_write = may_write

    @classmethod
    async def connect(cls, may_write: Callable[[], bool] | None = None) -> KubeClient:
        """In a pod: the service account. Elsewhere: $KUBECONFIG or ~/.kube/config."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        return cls.from_configuration(configuration, may_write)

    @classmethod
    def from_configuration(
        cls, configuration: client.Configuration, may_write: Callable[[], bool] | None = None
    ) -> KubeClient:
        """A client for the API server and credentials of a loaded kubernetes_asyncio configuration."""
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=_ssl_context(configuration))
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            trust_env=False,
            read_bufsize=2**21,  # objects up to etcd's 1.5 MiB request limit
        )
        proxy = configuration.proxy or _environment_proxy(str(configuration.host))
        return cls(configuration, session, proxy, may_write)

    async def close(self) -> None:
        await self._session.close()

    async def _headers(self, content_type: str) -> dict[str, str]:
        """The credentials as of now: refreshed by kubernetes_asyncio (service account tokens rotate)."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for setting in (await self._configuration.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """The decoded answer. Raises KubeError for an answer other than 2xx, or none (status 0), and
        NotLeaderError, before sending, for a write `may_write` forbids."""
        if method != "GET" and self._may_write is not None and not self._may_write():
            raise NotLeaderError(f"{method} {path}: this replica is not the leader")
        headers = await self._headers(content_type)
        options: dict[str, Any] = {"params": query or [], "headers": headers, "proxy": self._proxy}
        if body is not None:
            options["data"] = orjson.dumps(body)
        if self._configuration.tls_server_name:
            options["server_hostname"] = self._configuration.tls_server_name
        try:
            async with self._session.request(method, self._host + path, **options) as response:
                text = await response.read()
                if response.status >= 300:
                    raise _kube_error(response.status, response.reason or "", text.decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(0, f"{method} {path}: {error!r}") from error
        try:
            result = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            return {}
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
        """JSON merge patch of the status subresource with `patch` (the changed fields of status)."""
        path = resource_type(kind).path(namespace, name, "status")
        await self._call("PATCH", path, {"status": patch}, "application/merge-patch+json")


def _kube_error(status: int, reason: str, text: str) -> KubeError:
    """The API server's Status (reason, message) when the body has one, else the raw text."""
    try:
        decoded = orjson.loads(text)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("message"):
        return KubeError(status, str(decoded["message"]), str(decoded.get("reason") or ""))
    return KubeError(status, text or reason, reason)


def _ssl_context(configuration: client.Configuration) -> ssl.SSLContext:
    """As kubernetes_asyncio builds it: the cluster's CA, the client certificate if any."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _environment_proxy(host: str) -> str | None:
    """The proxy HTTPS_PROXY/HTTP_PROXY name for the API server, unless NO_PROXY exempts it."""
    url = urllib.parse.urlparse(host)
    if not url.hostname or urllib.request.proxy_bypass(url.hostname):
        return None
    return urllib.request.getproxies().get(url.scheme or "https")
