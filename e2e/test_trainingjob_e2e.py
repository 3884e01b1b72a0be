"""A real API server: the CRDs install, their CEL rules bite, and a TrainingJob runs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from maas_operator.api.trainingjob import MAX_NAME_LENGTH

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAININGJOB_NAME_LIMIT = MAX_NAME_LENGTH


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A namespace under the "restricted" Pod Security profile (conftest installed the CRDs)."""
    name = f"maas-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def trainingjob(name: str, **spec: Any) -> str:
    body = {
        "trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}, "hyperparameters": {"epochs": 3}},
        "workers": {"replicas": 2, "resources": {"cpu": "500m", "memory": "1Gi"}},
        "output": {"uri": "file:///tmp/model"},
        **spec,
    }
    return yaml.safe_dump(
        {"apiVersion": "maas.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}
    )


def test_api_server_refuses_bad_specs(namespace: str) -> None:
    refused = kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=trainingjob("bad", workers={"replicas": 1, "minReplicas": 2}),
        check=False,
    )
    assert refused.returncode != 0
    assert "minReplicas must be less than or equal to replicas" in refused.stderr


@pytest.mark.parametrize("name", ["digits.v2", "2digits", "x" * (TRAININGJOB_NAME_LIMIT + 1)])
def test_names_no_child_could_carry_are_refused_at_admission(namespace: str, name: str) -> None:
    refused = kubectl("apply", "-n", namespace, "-f", "-", stdin=trainingjob(name), check=False)
    assert refused.returncode != 0 and "metadata.name must be" in refused.stderr, refused.stderr


def test_immutable_fields_cannot_be_added(namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=trainingjob("unset", runPolicy={"suspend": True}))
    added = kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=trainingjob("unset", image="example/other:1", runPolicy={"suspend": True}),
        check=False,
    )
    assert added.returncode != 0 and "image is immutable" in added.stderr, added.stderr


def test_immutable_fields(namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=trainingjob("frozen", runPolicy={"suspend": True}))
    changed = kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=trainingjob("frozen", workers={"replicas": 3}, runPolicy={"suspend": True}),
        check=False,
    )
    assert changed.returncode != 0 and "workers is immutable" in changed.stderr


@pytest.mark.skipif(not os.environ.get("MAAS_E2E_IMAGE"), reason="set MAAS_E2E_IMAGE to a built workloads image")
def test_training_run_succeeds(namespace: str) -> None:
    operator = subprocess.Popen(
        [sys.executable, "-m", "maas_operator.cli", "operator", "--namespace", namespace],
        env={
            **os.environ,
            "MAAS_OPERATOR_TRAINING_IMAGE": os.environ["MAAS_E2E_IMAGE"],
            "MAAS_OPERATOR_METRICS_PORT": "0",
            "MAAS_OPERATOR_HEALTH_PORT": "0",
        },
    )
    try:
        kubectl("apply", "-n", namespace, "-f", "-", stdin=trainingjob("digits"))
        deadline = time.monotonic() + 900
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            got = kubectl("get", "trainingjob", "digits", "-n", namespace, "-o", "json")
            status = json.loads(got.stdout).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(5)
        assert status.get("phase") == "Succeeded", status
        assert status["model"]["sha256"]
    finally:
        operator.terminate()
        operator.wait(timeout=30)
