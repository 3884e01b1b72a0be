"""A Kubernetes API to test the operator against: KMock's emulator over real HTTP, taught to
answer like the API server where the operator's correctness depends on it.

KMock stores objects and streams watch events but runs no controllers, so tests play the
kubelet and the Deployment controller by patching status themselves. It ignores label
selectors and resourceVersion. `ApiServer` adds, one switch per behaviour (`Switches`):

- label selectors on lists and watches (equality and existence terms; an object whose labels
  stop matching is not sent to a watch as deleted);
- server-side apply with field managers (tests/operator/ssa.py says what is and is not modelled):
  an apply creates a missing object, and fields a manager stops applying are removed unless
  another manager also set them; metadata.generation counts spec changes;
- admission: 422 for invalid names, labels, annotations, duplicate volumes and mount paths, and
  a PodDisruptionBudget with both bounds (tests/operator/admission.py), 403 for a ResourceQuota
  exceeded by a pod, 403 for an admission webhook's denial of a named object;
- pods on lost nodes: their graceful deletion never finishes (deletionTimestamp set, the pod
  stays) until a delete with gracePeriodSeconds 0 removes it, as with a node whose kubelet is gone.

It also assigns uids and creation timestamps to created objects. The behaviours live in
tests/operator/apiserver.py; tests turn them on and off through `cluster.switches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.web
import kmock

from tests.operator.apiserver import GROUP_VERSION, RESOURCES, ApiServer, Switches, now_rfc3339

NAMESPACE = "team-a"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

PATHS = {
    "Node": "/api/v1/nodes",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "TrainingJob": f"/apis/{GROUP_VERSION}/namespaces/{{ns}}/trainingjobs",
    "ModelService": f"/apis/{GROUP_VERSION}/namespaces/{{ns}}/modelservices",
}


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    for key, info in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(
            kind=info["kind"],
            namespaced=info["namespaced"],
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            subresources=info.get("subresources", set()),
        )


def write_kubeconfig(url: str, directory: pathlib.Path, token: str = "test-token") -> pathlib.Path:
    """A kubeconfig for the emulator; `token` tells requests of several operator processes apart."""
    path = directory / ("kubeconfig" if token == "test-token" else f"kubeconfig-{token}")
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters:\n- name: emulator\n  cluster:\n    server: {url}\n"
        f"users:\n- name: tester\n  user:\n    token: {token}\n"
        "contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: tester\n"
        f"    namespace: {NAMESPACE}\n"
    )
    return path


class Cluster:
    """Test-side access to the emulator, over HTTP like any other client."""

    def __init__(self, emulator: kmock.KubernetesEmulator, url: str, session: aiohttp.ClientSession) -> None:
        self.emulator = emulator
        self.url = url.rstrip("/")
        self.session = session

    @property
    def switches(self) -> Switches:
        switches: Switches = self.emulator.switches
        return switches

    def path(self, kind: str, name: str | None = None, namespace: str = NAMESPACE) -> str:
        base = self.url + PATHS[kind].format(ns=namespace)  # Node's path has no {ns}
        return f"{base}/{name}" if name else base

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        metadata = manifest.setdefault("metadata", {})
        if manifest["kind"] != "Node":
            metadata.setdefault("namespace", NAMESPACE)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", now_rfc3339())
        metadata.setdefault("generation", 1)
        metadata.setdefault("resourceVersion", "1")  # kopf guards its JSON patches with it
        path = self.path(manifest["kind"], namespace=metadata.get("namespace", NAMESPACE))
        async with self.session.post(path, json=manifest) as r:
            assert r.status in (200, 201), await r.text()
            result: dict[str, Any] = await r.json()
            return result

    async def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        async with self.session.get(self.path(kind, name, namespace)) as response:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    async def list(self, kind: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        async with self.session.get(self.path(kind)) as response:
            assert response.status == 200, await response.text()
            items: list[dict[str, Any]] = (await response.json()).get("items", [])
        wanted = labels or {}
        return [
            item for item in items if all((item["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def patch(
        self,
        kind: str,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
        field_manager: str = "kubectl-edit",
    ) -> None:
        """A merge patch, as `kubectl edit`/`patch` or a controller (`field_manager`) makes it."""
        url = self.path(kind, name) + (f"/{subresource}" if subresource else "")
        headers = {"Content-Type": "application/merge-patch+json"}
        params = {"fieldManager": field_manager}
        async with self.session.patch(url, json=patch, headers=headers, params=params) as response:
            assert response.status == 200, await response.text()

    async def apply(self, manifest: dict[str, Any], field_manager: str) -> tuple[int, dict[str, Any]]:
        """A server-side apply (forced), as `kubectl apply --server-side` makes it: (HTTP status, body)."""
        url = self.path(manifest["kind"], manifest["metadata"]["name"])
        headers = {"Content-Type": "application/apply-patch+yaml"}
        params = {"fieldManager": field_manager, "force": "true"}
        async with self.session.patch(url, json=manifest, headers=headers, params=params) as response:
            return response.status, await response.json()

    async def add_node(self, name: str, ready: bool = True, unreachable: bool = False) -> None:
        """A Node as the node lifecycle controller reports it (NotReady/Unknown and tainted once lost)."""
        condition = {"type": "Ready", "status": "True" if ready else "Unknown"}
        if not ready:
            condition["message"] = "Kubelet stopped posting node status."
        taints = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}] if unreachable else []
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        await self.create({**node, "spec": {"taints": taints}, "status": {"conditions": [condition]}})

    async def delete(self, kind: str, name: str) -> bool:
        async with self.session.delete(self.path(kind, name)) as response:
            return response.status == 200

    async def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        # Events are read from the requests: the emulator ignores generateName, so it stores one.
        events = [request.data for request in self.requests("POST", "/events")]
        return [e for e in events if reason is None or e.get("reason") == reason]

    def requests(self, method: str | None = None, path_part: str = "") -> list[Any]:
        """Requests the emulator received (for counting the operator's writes)."""
        return [
            request
            for request in list(self.emulator)
            if (method is None or str(request.method).upper().endswith(method)) and path_part in str(request.url)
        ]

    def applies(self, path_part: str, field_manager: str = "maas-operator") -> list[Any]:
        """Server-side applies of objects (not subresources) by `field_manager`, oldest first."""
        return [
            request
            for request in self.requests("PATCH", path_part)
            if "apply-patch" in request.headers.get("Content-Type", "")
            and request.params.get("fieldManager") == field_manager
            and request.subresource is None
        ]

    # --- playing the kubelet ----------------------------------------------------------
    async def set_pod(self, name: str, phase: str, **kwargs: Any) -> None:
        await self.patch("Pod", name, {"status": pod_status(phase, **kwargs)}, "status")


def pod_status(
    phase: str,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    pod_reason: str | None = None,
    disruption: str | None = None,
    unschedulable: str | None = None,
    waiting: str | None = None,
) -> dict[str, Any]:
    """A pod status as the kubelet and scheduler would report it."""
    stamp = now_rfc3339()
    conditions: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    else:
        conditions.append({"type": "PodScheduled", "status": "True"})
    conditions.append({"type": "Ready", "status": "True" if phase == "Running" else "False"})
    if disruption:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if phase == "Running":
        state = {"running": {"startedAt": stamp}}
    elif phase in ("Succeeded", "Failed"):
        terminated: dict[str, Any] = {"exitCode": exit_code if exit_code is not None else 0, "finishedAt": stamp}
        terminated["reason"] = reason or ("Completed" if phase == "Succeeded" else "Error")
        if message is not None:
            terminated["message"] = message
        state = {"terminated": terminated}
    elif waiting:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} for the test image"}}
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": [{"name": "main", "ready": phase == "Running", "restartCount": 0, "state": state}],
    }
    if pod_reason:
        status["reason"] = pod_reason
    return status


async def wait_for(
    condition: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll until the condition returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}; last value: {last!r}")


class OperatorProcess:
    """The real operator (`maas operator`) as a child process, restartable mid-test."""

    def __init__(
        self, kubeconfig: pathlib.Path, log_path: pathlib.Path, extra_env: dict[str, str], verbose: bool = True
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_env = extra_env
        self.verbose = verbose
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "workloads")]),
            "MAAS_OPERATOR_RESYNC_SECONDS": "0.5",
            "MAAS_OPERATOR_RESTART_BACKOFF_SECONDS": "0.2",
            "MAAS_OPERATOR_FORCE_DELETE_AFTER_SECONDS": "1",
            "MAAS_OPERATOR_METRICS_PORT": "0",
            "MAAS_OPERATOR_HEALTH_PORT": "0",
            **self.extra_env,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maas_operator.cli", "operator", *(["--verbose"] if self.verbose else [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        async with aiohttp.ClientSession() as session:
            yield Cluster(emulator, str(server.url), session)
