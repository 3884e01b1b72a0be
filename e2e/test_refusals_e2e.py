"""A real API server refusing the operator's writes: a ResourceQuota that refuses a worker pod
ends the run by its startup deadline with the quota's message; an invalid label edit of a
running ModelService is never reported as applied. Pods need not run: no image is required."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from e2e.test_trainingjob_e2e import REPO, kubectl, namespace, trainingjob  # noqa: F401  (fixture)


@contextlib.contextmanager
def operator(namespace: str) -> Iterator[None]:  # noqa: F811
    process = subprocess.Popen(
        [sys.executable, "-m", "maas_operator.cli", "operator", "--namespace", namespace],
        env={**os.environ, "MAAS_OPERATOR_METRICS_PORT": "0", "MAAS_OPERATOR_HEALTH_PORT": "0"},
        cwd=REPO,
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def get(kind: str, name: str, namespace: str) -> dict[str, Any]:  # noqa: F811
    found = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else {}


def wait(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def condition(obj: dict[str, Any], condition_type: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == condition_type), {})


def when(kind: str, name: str, where: str, check: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
    """A probe for `wait`: the object once `check` holds for it."""

    def probe() -> dict[str, Any] | None:
        found = get(kind, name, where)
        return found if found and check(found) else None

    return probe


def test_a_quota_that_refuses_a_worker_ends_the_run_with_its_message(namespace: str) -> None:  # noqa: F811
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "two-pods"},
        "spec": {"hard": {"pods": "2"}},
    }
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(quota))
    with operator(namespace):
        job_yaml = trainingjob("quota", runPolicy={"startupDeadlineSeconds": 30})
        kubectl("apply", "-n", namespace, "-f", "-", stdin=job_yaml)
        refused = when(
            "trainingjob", "quota", namespace, lambda j: condition(j, "Running").get("reason") == "ChildRejected"
        )
        message = condition(wait(refused, 120, "Running=False ChildRejected"), "Running")["message"]
        assert message.startswith("pod quota-worker-1: ") and "exceeded quota: two-pods" in message
        failed_job = when("trainingjob", "quota", namespace, lambda j: j["status"].get("phase") == "Failed")
        failed = condition(wait(failed_job, 120, "Failed"), "Failed")
        assert failed["reason"] == "StartupDeadlineExceeded" and "exceeded quota: two-pods" in failed["message"]
        events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=ChildRejected", "-o", "json")
        assert len(json.loads(events.stdout)["items"]) == 1, "one Warning per distinct refusal"
        wait(
            lambda: not json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"],
            120,
            "the started pods released",
        )


def test_an_invalid_label_edit_of_a_running_service_is_not_reported_as_applied(namespace: str) -> None:  # noqa: F811
    service: dict[str, Any] = {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "labelled"},
        "spec": {"model": {"uri": "https://models.example/digits"}, "replicas": 1},
    }
    with operator(namespace):
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(service))
        wait(lambda: get("deployment", "labelled", namespace), 120, "the Deployment")
        in_effect = when("ms", "labelled", namespace, lambda m: m.get("status", {}).get("observedGeneration") == 1)
        wait(in_effect, 120, "generation 1 in effect")
        service["spec"]["labels"] = {"team": "bad value!"}
        edit = kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(service), check=False)
        if edit.returncode != 0:  # refused at admission (the CRD's rules), naming the field
            assert "labels" in edit.stderr, edit.stderr
        else:
            rejected = when(
                "ms", "labelled", namespace, lambda m: condition(m, "Ready").get("reason") == "ChildRejected"
            )
            found = wait(rejected, 120, "Ready=False ChildRejected")
            assert found["status"]["observedGeneration"] == 1, "generation 2 is not in effect"
            assert 'Deployment.apps "labelled" is invalid' in condition(found, "Ready")["message"]
        labels = get("deployment", "labelled", namespace)["spec"]["template"]["metadata"]["labels"]
        assert "team" not in labels, "the running pods' template is unchanged"
