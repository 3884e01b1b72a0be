"""A Kubernetes API to test the operator against: KMock's emulator over real HTTP.

The emulator stores objects and streams watch events but runs no controllers, so tests
play the kubelet and the Deployment controller by patching status themselves. It ignores
label selectors, resourceVersion and field managers, and does not assign uids or
timestamps: the helpers below fill in what the operator relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
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
import kmock

NAMESPACE = "team-a"
GROUP_VERSION = "maas.dev/v1alpha1"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

RESOURCES: dict[str, dict[str, Any]] = {
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition", "namespaced": False},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status"}},
    "v1/services": {"kind": "Service", "namespaced": True},
    "v1/events": {"kind": "Event", "namespaced": True},
    "v1/secrets": {"kind": "Secret", "namespaced": True},
    "apps/v1/deployments": {"kind": "Deployment", "namespaced": True, "subresources": {"status", "scale"}},
    "autoscaling/v2/horizontalpodautoscalers": {"kind": "HorizontalPodAutoscaler", "namespaced": True},
    "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget", "namespaced": True},
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy", "namespaced": True},
    f"{GROUP_VERSION}/trainingjobs": {"kind": "TrainingJob", "namespaced": True, "subresources": {"status"}},
    f"{GROUP_VERSION}/modelservices": {"kind": "ModelService", "namespaced": True, "subresources": {"status"}},
}
PATHS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "TrainingJob": f"/apis/{GROUP_VERSION}/namespaces/{{ns}}/trainingjobs",
    "ModelService": f"/apis/{GROUP_VERSION}/namespaces/{{ns}}/modelservices",
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    for key, info in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(
            kind=info["kind"],
            namespaced=info["namespaced"],
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            subresources=info.get("subresources", set()),
        )


def write_kubeconfig(url: str, directory: pathlib.Path) -> pathlib.Path:
    path = directory / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters:\n- name: emulator\n  cluster:\n    server: {url}\n"
        "users:\n- name: tester\n  user:\n    token: test-token\n"
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

    def path(self, kind: str, name: str | None = None, namespace: str = NAMESPACE) -> str:
        base = self.url + PATHS[kind].format(ns=namespace)
        return f"{base}/{name}" if name else base

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        metadata = manifest.setdefault("metadata", {})
        metadata.setdefault("namespace", NAMESPACE)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", now_rfc3339())
        metadata.setdefault("generation", 1)
        metadata.setdefault("resourceVersion", "1")  # kopf guards its JSON patches with it
        async with self.session.post(self.path(manifest["kind"], namespace=metadata["namespace"]), json=manifest) as r:
            assert r.status in (200, 201), await r.text()
            result: dict[str, Any] = await r.json()
            return result

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        async with self.session.get(self.path(kind, name)) as response:
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

    async def patch(self, kind: str, name: str, patch: dict[str, Any], subresource: str | None = None) -> None:
        url = self.path(kind, name) + (f"/{subresource}" if subresource else "")
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(url, json=patch, headers=headers) as response:
            assert response.status == 200, await response.text()

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

    def __init__(self, kubeconfig: pathlib.Path, log_path: pathlib.Path, extra_env: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_env = extra_env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "workloads")]),
            "MAAS_OPERATOR_RESYNC_SECONDS": "0.5",
            "MAAS_OPERATOR_METRICS_PORT": "0",
            "MAAS_OPERATOR_HEALTH_PORT": "0",
            **self.extra_env,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maas_operator.cli", "operator", "--verbose"],
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
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        async with aiohttp.ClientSession() as session:
            yield Cluster(emulator, str(server.url), session)
