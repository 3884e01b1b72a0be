"""The pod the ModelService operator builds runs this server as it is: the command, the
environment, the probes and the autoscaling metric in the operator's manifests all work
against the real server."""

from __future__ import annotations

import pathlib

import httpx
import pytest

from maas_workloads import contract
from tests.workloads.serve.conftest import Server
from tests.workloads.serve.pods import TOKEN, operator_pod, server_env

pytestmark = pytest.mark.slow


def test_the_operators_pod_spec_runs_the_server(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # The connection limits are the user's to set, through the ModelService's env.
    built = operator_pod(digits_dir, {contract.ENV_MAX_HEADER_BYTES: "8192"})
    container = built["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "maas_workloads.serve"]  # what Server runs
    env = server_env(container, tmp_path / "cache")

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
        metric = built["hpa"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert metric in metrics, f"the HPA scales on {metric}, which the server does not export"
        long_header = httpx.get(f"{server.url}/v2/health/live", headers={"x-trace": "t" * 10_000}, timeout=5)
        assert long_header.status_code == 431
    finally:
        assert server.stop() == 0
