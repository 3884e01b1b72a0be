"""The real operator (a `maas operator` process) against the emulated API server.

The test plays the kubelet and the scheduler by patching pod status.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
from typing import Any

import pytest

from maas_operator.builders.meta import LABEL_ATTEMPT
from tests.operator.conftest import ProgressServer
from tests.operator.emulator import Cluster, OperatorProcess, now_rfc3339, wait_for, write_kubeconfig
from tests.operator.validation import assert_valid_objects

pytestmark = pytest.mark.slow

HEAD = "digits-head"
WORKERS = ["digits-worker-0", "digits-worker-1"]


def trainingjob(name: str = "digits", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}},
        "workers": {"replicas": 2},
        "output": {"uri": "s3://models/digits"},
    }
    body.update(spec)
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


async def status_of(cluster: Cluster, name: str = "digits") -> dict[str, Any]:
    job = await cluster.get("TrainingJob", name)
    return (job or {}).get("status") or {}


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), {})


async def wait_status(cluster: Cluster, check: Any, what: str, name: str = "digits", timeout: float = 20) -> Any:
    async def probe() -> dict[str, Any] | None:
        status = await status_of(cluster, name)
        return status if check(status) else None

    return await wait_for(probe, timeout=timeout, what=what)


async def pod_names(cluster: Cluster) -> list[str]:
    return sorted(p["metadata"]["name"] for p in await cluster.list("Pod"))


async def wait_pods(cluster: Cluster, names: list[str], attempt: int | None = None) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        pods = await cluster.list("Pod")
        current = [p for p in pods if attempt is None or p["metadata"]["labels"][LABEL_ATTEMPT] == str(attempt)]
        return pods if sorted(p["metadata"]["name"] for p in current) == sorted(names) else None

    return await wait_for(probe, what=f"pods {names} (attempt {attempt})")


async def start_running(cluster: Cluster, attempt: int = 1) -> None:
    await wait_pods(cluster, [HEAD, *WORKERS], attempt)
    for name in [HEAD, *WORKERS]:
        await cluster.set_pod(name, "Running")
    await wait_status(cluster, lambda s: s.get("phase") == "Running", "phase Running")


async def test_create_makes_children_after_recording_identity(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob())
    pods = await wait_pods(cluster, [HEAD, *WORKERS])
    services = await wait_for(lambda: cluster.list("Service"), what="head service")
    assert [s["metadata"]["name"] for s in services] == [HEAD]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MAAS_ATTEMPT"] == "1"
        assert env["MAAS_HEAD_ADDRESS"] == "digits-head.team-a.svc:6379"
        assert json.loads(env["MAAS_TRAININGJOB"])["workers"]["replicas"] == 2
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
        assert pod["spec"]["restartPolicy"] == "Never"

    status = await wait_status(cluster, lambda s: condition(s, "Created").get("status") == "True", "Created")
    assert status["attempt"] == 1
    assert status["phase"] == "Starting"
    assert status["workers"] == {"desired": 2, "ready": 0}
    assert condition(status, "Running")["reason"] == "HeadStarting"

    # The attempt was recorded in status before the first pod was created.
    patches = [r for r in cluster.requests("PATCH", "/trainingjobs/digits/status")]
    posts = [r for r in cluster.requests("POST", "/pods")]
    assert patches and posts and patches[0].id < posts[0].id
    # One create per child, whatever the watch events made the operator re-evaluate.
    assert len(posts) == 3
    assert len(cluster.requests("POST", "/services")) == 1
    policies = await cluster.list("NetworkPolicy")
    assert [p["metadata"]["name"] for p in policies] == ["digits-ray"]
    assert_valid_objects([*pods, *services, *policies])


async def test_unschedulable_pod_reason_reaches_condition(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob(workers={"replicas": 2, "resources": {"gpu": 1}}))
    await wait_pods(cluster, [HEAD, *WORKERS])
    reason = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    await cluster.set_pod(WORKERS[1], "Pending", unschedulable=reason)
    status = await wait_status(
        cluster, lambda s: condition(s, "Running").get("reason") == "Unschedulable", "Unschedulable"
    )
    assert reason in condition(status, "Running")["message"]
    assert WORKERS[1] in condition(status, "Running")["message"]


async def test_running_then_worker_loss_recreates_worker(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob())
    await start_running(cluster)
    status = await wait_status(cluster, lambda s: s["workers"]["ready"] == 2, "2 ready workers")
    assert condition(status, "Running")["status"] == "True"
    assert status["attemptRunningTime"]

    # A worker fails: it is deleted and recreated under its name, the attempt goes on.
    await cluster.set_pod(WORKERS[0], "Failed", exit_code=137, reason="OOMKilled")
    await wait_status(cluster, lambda s: s["workerRestarts"] == 1, "workerRestarts 1")

    async def recreated() -> bool:
        pod = await cluster.get("Pod", WORKERS[0])  # status is written before the create
        return pod is not None and (pod.get("status") or {}).get("phase") is None

    await wait_for(recreated, what=f"{WORKERS[0]} recreated")
    # A worker disappears: recreated too.
    await cluster.delete("Pod", WORKERS[1])
    status = await wait_status(cluster, lambda s: s["workerRestarts"] == 2, "workerRestarts 2")
    assert status["attempt"] == 1
    await wait_pods(cluster, [HEAD, *WORKERS], attempt=1)
    await wait_for(lambda: cluster.events("WorkerRestarted"), what="Event WorkerRestarted")


async def test_head_failures_until_backoff_limit(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob(runPolicy={"backoffLimit": 1}))
    await start_running(cluster, attempt=1)
    await cluster.set_pod(HEAD, "Failed", exit_code=1, message='{"error": "loss became NaN"}')
    status = await wait_status(cluster, lambda s: s["attempt"] == 2, "attempt 2")
    assert condition(status, "Restarting")["status"] == "True"
    pods = await wait_pods(cluster, [HEAD, *WORKERS], attempt=2)
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["MAAS_ATTEMPT"] == "2"
    await start_running(cluster, attempt=2)
    status = await status_of(cluster)
    assert condition(status, "Restarting")["status"] == "False"

    await cluster.set_pod(HEAD, "Failed", exit_code=1, message='{"error": "loss became NaN"}')
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed")
    assert condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "loss became NaN" in condition(status, "Failed")["message"]
    assert [f["attempt"] for f in status["failures"]] == [1, 2]
    assert all(f["charged"] for f in status["failures"])
    assert status["chargedFailures"] == 2
    # cleanPodPolicy Running (the default): running workers go, the failed head stays for its logs.
    await wait_for(lambda: _only(cluster, [HEAD]), what="only the head left")
    await wait_for(lambda: cluster.events("Failed"), what="Event Failed")


async def _only(cluster: Cluster, names: list[str]) -> bool:
    return await pod_names(cluster) == sorted(names)


async def test_platform_failure_retries_free_after_old_pods_are_gone(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    await cluster.create(trainingjob(runPolicy={"backoffLimit": 0}))
    await start_running(cluster)
    # Keep the old pods terminating for a while, as a real kubelet would.
    for name in [HEAD, *WORKERS]:
        await cluster.patch("Pod", name, {"metadata": {"finalizers": ["test/slow-termination"]}})
    await cluster.set_pod(HEAD, "Failed", exit_code=137, disruption="PreemptionByScheduler")
    status = await wait_status(cluster, lambda s: s["attempt"] == 2, "attempt 2")
    assert status["chargedFailures"] == 0
    assert status["failures"][0]["reason"] == "PreemptionByScheduler"
    assert status["failures"][0]["charged"] is False

    async def all_terminating() -> bool:
        pods = await cluster.list("Pod")
        return len(pods) == 3 and all(p["metadata"].get("deletionTimestamp") for p in pods)

    await wait_for(all_terminating, what="old pods terminating")
    await asyncio.sleep(1.5)  # several resyncs: still no pod of attempt 2 while attempt 1 lingers
    assert {p["metadata"]["labels"][LABEL_ATTEMPT] for p in await cluster.list("Pod")} == {"1"}
    for name in [HEAD, *WORKERS]:
        await cluster.patch("Pod", name, {"metadata": {"finalizers": []}})
    await wait_pods(cluster, [HEAD, *WORKERS], attempt=2)
    await start_running(cluster, attempt=2)


async def test_configuration_error_is_never_retried(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob())
    await start_running(cluster)
    await cluster.set_pod(HEAD, "Failed", exit_code=64, message='{"error": "dataset has no column \'label\'"}')
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed")
    assert condition(status, "Failed")["reason"] == "ConfigurationError"
    assert "no column" in condition(status, "Failed")["message"]
    assert status["attempt"] == 1


async def test_success_publishes_model_and_cleans_up(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob(runPolicy={"ttlSecondsAfterFinished": 2}))
    await start_running(cluster)
    report = {"model": {"uri": "s3://models/digits/v1", "sha256": "ab" * 32, "metrics": {"val_accuracy": 0.97}}}
    await cluster.set_pod(HEAD, "Succeeded", exit_code=0, message=json.dumps(report))
    status = await wait_status(cluster, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    assert status["model"] == report["model"]
    assert status["completionTime"]
    assert condition(status, "Succeeded")["status"] == "True"
    await wait_for(lambda: _only(cluster, [HEAD]), what="workers cleaned up")
    # ttlSecondsAfterFinished deletes the TrainingJob itself.
    await wait_for(lambda: _gone(cluster, "digits"), timeout=15, what="TrainingJob deleted by TTL")


async def _gone(cluster: Cluster, name: str) -> bool:
    return await cluster.get("TrainingJob", name) is None


async def test_active_deadline_fails_and_deletes_pods(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob(runPolicy={"activeDeadlineSeconds": 2}))
    await start_running(cluster)
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed", timeout=15)
    assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
    await wait_for(lambda: _only(cluster, []), what="every pod deleted")


async def test_startup_deadline_names_the_blocker(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob(runPolicy={"startupDeadlineSeconds": 2}))
    await wait_pods(cluster, [HEAD, *WORKERS])
    await cluster.set_pod(HEAD, "Pending", waiting="ImagePullBackOff")
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "Failed", timeout=15)
    failed = condition(status, "Failed")
    assert failed["reason"] == "StartupDeadlineExceeded"
    assert "ImagePullBackOff" in failed["message"]
    await wait_for(lambda: _only(cluster, []), what="every pod deleted")


async def test_suspend_and_resume(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob())
    await start_running(cluster)
    await cluster.patch(
        "TrainingJob", "digits", {"spec": {"runPolicy": {"suspend": True}}, "metadata": {"generation": 2}}
    )
    status = await wait_status(cluster, lambda s: s.get("phase") == "Suspended", "Suspended")
    assert condition(status, "Suspended")["status"] == "True"
    await wait_for(lambda: _only(cluster, []), what="pods deleted while suspended")

    await cluster.patch(
        "TrainingJob", "digits", {"spec": {"runPolicy": {"suspend": False}}, "metadata": {"generation": 3}}
    )
    await wait_pods(cluster, [HEAD, *WORKERS], attempt=2)
    await start_running(cluster, attempt=2)
    status = await status_of(cluster)
    assert status["chargedFailures"] == 0 and status["failures"] == []
    assert condition(status, "Suspended")["reason"] == "Resumed"
    assert status["observedGeneration"] == 3


async def set_suspend(cluster: Cluster, suspend: bool, generation: int) -> None:
    patch = {"spec": {"runPolicy": {"suspend": suspend}}, "metadata": {"generation": generation}}
    await cluster.patch("TrainingJob", "digits", patch)


async def test_invalid_spec_fails_without_pods(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob("bad", workers={"replicas": 1, "minReplicas": 3}))
    await cluster.create(trainingjob("good"))
    status = await wait_status(cluster, lambda s: s.get("phase") == "Failed", "InvalidSpec", name="bad")
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.workers" in failed["message"] and "minReplicas" in failed["message"]
    events = await wait_for(lambda: cluster.events("InvalidSpec"), what="InvalidSpec event")
    assert events[0]["involvedObject"]["name"] == "bad"
    # The operator goes on serving other objects.
    await wait_pods(cluster, ["good-head", "good-worker-0", "good-worker-1"])
    assert not [p for p in await cluster.list("Pod") if p["metadata"]["name"].startswith("bad")]


async def test_progress_is_polled_and_stall_detected(
    cluster: Cluster, operator: OperatorProcess, progress_server: ProgressServer
) -> None:
    await cluster.create(trainingjob(runPolicy={"stallTimeoutSeconds": 10}))
    await start_running(cluster)
    report = {
        "attempt": 1,
        "epoch": 3,
        "step": 420,
        "totalSteps": 1000,
        "metrics": {"loss": 0.25, "val_accuracy": 0.91},
        "lastCheckpoint": "s3://models/digits/checkpoints/step-400",
        "heartbeatTime": now_rfc3339(),
    }
    progress_server.reports["digits"] = report
    status = await wait_status(cluster, lambda s: (s.get("progress") or {}).get("step") == 420, "progress")
    assert status["progress"]["summary"] == "42% (step 420/1000)"
    assert status["progress"]["metrics"] == {"loss": 0.25, "val_accuracy": 0.91}
    assert condition(status, "Stalled")["status"] == "False"

    progress_server.reports["digits"] = {**report, "heartbeatTime": "2020-01-01T00:00:00Z"}
    status = await wait_status(cluster, lambda s: condition(s, "Stalled").get("status") == "True", "Stalled")
    assert "no progress heartbeat" in condition(status, "Stalled")["message"]


async def test_restart_mid_creation_makes_no_duplicates(cluster: Cluster, operator: OperatorProcess) -> None:
    hang = asyncio.Event()

    async def slow_create() -> None:
        await hang.wait()

    (
        cluster.emulator[
            lambda r: (
                str(r.method).upper().endswith("POST")
                and "/pods" in str(r.url)
                and not hang.is_set()
                and r.data.get("metadata", {}).get("name") == WORKERS[1]
            )
        ]
        << slow_create
    )
    await cluster.create(trainingjob())
    await wait_for(lambda: _requested(cluster, WORKERS[1]), what="the last worker's create in flight")
    operator.stop(kill=True)
    hang.set()
    status = await status_of(cluster)
    assert status["attempt"] == 1 and condition(status, "Created")["status"] == "False"

    operator.start()
    status = await wait_status(cluster, lambda s: condition(s, "Created").get("status") == "True", "Created")
    assert status["attempt"] == 1 and status["workerRestarts"] == 0
    assert await pod_names(cluster) == sorted([HEAD, *WORKERS])
    await start_running(cluster)


def _is_post(request: Any) -> bool:
    return str(request.method).upper().endswith("POST")


async def _requested(cluster: Cluster, name: str) -> bool:
    return any(r.data.get("metadata", {}).get("name") == name for r in cluster.requests("POST", "/pods"))


async def test_api_errors_for_a_while_then_converges(cluster: Cluster, operator: OperatorProcess) -> None:
    failing = {"on": True}
    (
        cluster.emulator[lambda r: failing["on"] and str(r.method).upper().endswith("POST") and "/pods" in str(r.url)]
        << 500
    )
    cluster.emulator[lambda r: failing["on"] and "/trainingjobs/digits/status" in str(r.url)] << 409
    await cluster.create(trainingjob())
    await wait_for(lambda: _count(cluster, "POST", "/pods", 3), what="failing creates")
    await asyncio.sleep(1)
    failing["on"] = False
    await wait_status(cluster, lambda s: condition(s, "Created").get("status") == "True", "converged", timeout=30)
    assert await pod_names(cluster) == sorted([HEAD, *WORKERS])
    await start_running(cluster)


async def _count(cluster: Cluster, method: str, path: str, at_least: int) -> bool:
    return len(cluster.requests(method, path)) >= at_least


async def test_steady_state_makes_no_writes(cluster: Cluster, operator: OperatorProcess) -> None:
    await cluster.create(trainingjob())
    await start_running(cluster)
    await asyncio.sleep(1)
    writes_before = _writes(cluster)
    await asyncio.sleep(3)  # six resync periods
    assert _writes(cluster) == writes_before


def _writes(cluster: Cluster) -> int:
    return sum(len(cluster.requests(method)) for method in ("POST", "PATCH", "PUT", "DELETE"))


async def test_metrics_and_liveness_endpoints(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    metrics_port, health_port = free_port(), free_port()
    process = OperatorProcess(
        write_kubeconfig(cluster.url, tmp_path),
        tmp_path / "operator.log",
        {"MAAS_OPERATOR_METRICS_PORT": str(metrics_port), "MAAS_OPERATOR_HEALTH_PORT": str(health_port)},
    )
    process.start()
    try:
        await cluster.create(trainingjob())
        await start_running(cluster)
        await cluster.set_pod(WORKERS[0], "Failed", exit_code=1)
        await wait_status(cluster, lambda s: s["workerRestarts"] == 1, "a worker restart")

        async def scraped() -> str | None:
            async with cluster.session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
            wanted = [
                'maas_reconcile_total{kind="TrainingJob",result="ok"}',
                'maas_objects{kind="TrainingJob",phase="Running"} 1.0',
                "maas_trainingjob_worker_restarts_total 1.0",
                "maas_trainingjob_time_to_running_seconds_count 1.0",
                'maas_reconcile_duration_seconds_bucket{kind="TrainingJob"',
                # Per-object state (state_metrics.py) from the status the operator wrote; labels sorted.
                'maas_trainingjob_status_worker_restarts_total{namespace="team-a",trainingjob="digits"} 1.0',
                'maas_trainingjob_status_condition{namespace="team-a",reason="PodsCreated",status="True",'
                'trainingjob="digits",type="Created"} 1.0',
            ]
            return text if all(w in text for w in wanted) else None

        await wait_for(scraped, what="operator metrics")
        async with cluster.session.get(f"http://127.0.0.1:{health_port}/healthz") as response:
            assert response.status == 200
    finally:
        process.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
