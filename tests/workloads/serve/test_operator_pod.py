"""The pod the ModelService operator builds runs this server as it is: the command, the
environment, the probes and the autoscaling metric in the operator's manifests all work
against the real server."""

from __future__ import annotations

import pathlib

import httpx

from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_workloads import contract
from maas_workloads.artifact import sha256_file
from tests.workloads.serve.conftest import Server

OWNER = Owner("ModelService", "digits", "team-a", "uid-digits")
TOKEN = "s3cr3t-token"
# Where the pod and this machine differ: the port is free here, the cache lives under tmp.
LOCAL_ONLY = {contract.ENV_PORT, contract.ENV_MODEL_CACHE_DIR, contract.ENV_HOST}


def operator_pod(model_dir: pathlib.Path) -> dict[str, object]:
    spec = ModelServiceSpec.model_validate(
        {
            "model": {"uri": f"file://{model_dir}"},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "inflight"},
            "auth": {"tokenSecretRef": {"name": "digits-token", "key": "token"}},
        }
    )
    model = ServedModel(uri=f"file://{model_dir}", sha256=sha256_file(model_dir / contract.MANIFEST_FILE))
    deployment = build.deployment(OWNER, spec, model, "stable", "unused", None)
    assert spec.autoscaling is not None
    hpa = build.horizontal_pod_autoscaler(OWNER, spec.autoscaling)
    return {"template": deployment["spec"]["template"], "hpa": hpa}


def test_the_operators_pod_spec_runs_the_server(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    built = operator_pod(digits_dir)
    container = built["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["command"] == ["python", "-m", "maas_workloads.serve"]  # what Server runs
    env: dict[str, str] = {}
    for variable in container["env"]:
        if variable["name"] in LOCAL_ONLY:
            continue
        secret = variable.get("valueFrom", {}).get("secretKeyRef")
        env[variable["name"]] = TOKEN if secret else variable["value"]
    env[contract.ENV_MODEL_CACHE_DIR] = str(tmp_path / "cache")

    server = Server(env[contract.ENV_MODEL_URI], tmp_path / "server.log", env)
    try:
        server.wait_ready()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            assert httpx.get(server.url + path, timeout=5).status_code == 200, probe  # probes carry no token
        infer = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
        url = f"{server.url}/v2/models/{env[contract.ENV_MODEL_NAME]}/infer"
        assert httpx.post(url, json=infer, timeout=10).status_code == 401
        answer = httpx.post(url, json=infer, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
        metric = built["hpa"]["spec"]["metrics"][0]["pods"]["metric"]["name"]  # type: ignore[index]
        assert metric in metrics, f"the HPA scales on {metric}, which the server does not export"
    finally:
        assert server.stop() == 0
