"""A real API server and controllers: ModelService CEL rules, and the operator's children
admitted under the "restricted" Pod Security profile with a real Deployment controller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from e2e.test_trainingjob_e2e import REPO, kubectl, namespace  # noqa: F401  (fixture)


def modelservice(name: str, **spec: Any) -> str:
    body = {"model": {"uri": "https://models.example/digits"}, "replicas": 1, **spec}
    return yaml.safe_dump(
        {"apiVersion": "maas.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name}, "spec": body}
    )


def test_api_server_refuses_bad_modelservices(namespace: str) -> None:  # noqa: F811
    kubectl("wait", "--for=condition=Established", "crd/modelservices.maas.dev", "--timeout=60s")
    refused = kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=modelservice("bad", autoscaling={"maxReplicas": 2}), check=False
    )
    assert refused.returncode != 0 and "set replicas or autoscaling, not both" in refused.stderr


def test_a_dotted_name_is_refused_at_admission(namespace: str) -> None:  # noqa: F811
    refused = kubectl("apply", "-n", namespace, "-f", "-", stdin=modelservice("digits.v2"), check=False)
    assert refused.returncode != 0 and "metadata.name must be a DNS-1035 label" in refused.stderr, refused.stderr


def test_quantities_and_labels_are_checked_at_admission(namespace: str) -> None:  # noqa: F811
    for spec, says in [
        ({"resources": {"cpu": -1}}, "must be a positive Kubernetes quantity"),
        ({"resources": {"memory": "0"}}, "must be a positive Kubernetes quantity"),
        ({"labels": {"app.kubernetes.io/name": "x"}}, "are set by the operator"),
    ]:
        refused = kubectl("apply", "-n", namespace, "-f", "-", stdin=modelservice("checked", **spec), check=False)
        assert refused.returncode != 0 and says in refused.stderr, refused.stderr
    accepted = kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=modelservice("forms", resources={"cpu": "1e-1", "memory": "1.5Gi"})
    )
    assert accepted.returncode == 0


@pytest.mark.skipif(not os.environ.get("MAAS_E2E_IMAGE"), reason="set MAAS_E2E_IMAGE to a built workloads image")
def test_children_are_admitted_and_rolled_out(namespace: str) -> None:  # noqa: F811
    operator = subprocess.Popen(
        [sys.executable, "-m", "maas_operator.cli", "operator", "--namespace", namespace],
        env={**os.environ, "MAAS_OPERATOR_SERVING_IMAGE": os.environ["MAAS_E2E_IMAGE"]},
        cwd=REPO,
    )
    try:
        kubectl("apply", "-n", namespace, "-f", "-", stdin=modelservice("e2e"))
        deadline = time.monotonic() + 120
        deployment: dict[str, Any] = {}
        while time.monotonic() < deadline:
            found = kubectl("get", "deployment", "e2e", "-n", namespace, "-o", "json", check=False)
            if found.returncode == 0:
                deployment = json.loads(found.stdout)
                if (deployment.get("status") or {}).get("observedGeneration"):
                    break
            time.sleep(2)
        assert deployment, "the operator created no Deployment"
        # A model that cannot be fetched never gets ready: the ModelService says so instead of lying.
        status = json.loads(kubectl("get", "ms", "e2e", "-n", namespace, "-o", "json").stdout)["status"]
        assert status["phase"] in ("Progressing", "Degraded")
    finally:
        operator.terminate()
        operator.wait(timeout=30)
