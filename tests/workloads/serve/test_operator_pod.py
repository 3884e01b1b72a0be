"""The pod the ModelService operator builds runs this server as it is: the command, the
environment, the probes and the autoscaling metric in the operator's manifests all work
against the real server — over plain HTTP, and over HTTPS with `server.tls`, where the mounted
Secret is a kubelet-style volume that is rotated while clients are connected."""

from __future__ import annotations

import pathlib
import time

import httpx
import numpy as np
import pytest
import requests
import tritonclient.http as triton

from maas_workloads import contract
from tests.workloads.serve.certificates import Authority, SecretVolume, served_serial
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
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text  # as the PodMonitor scrapes: no token
        metric = built["hpa"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert metric in metrics, f"the HPA scales on {metric}, which the server does not export"
        long_header = httpx.get(f"{server.url}/v2/health/live", headers={"x-trace": "t" * 10_000}, timeout=5)
        assert long_header.status_code == 431
    finally:
        assert server.stop() == 0


def test_the_operators_tls_pod_serves_https_to_real_clients(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # How often the server looks for a renewed certificate is the user's to set, too.
    built = operator_pod(digits_dir, {contract.ENV_TLS_RELOAD_SECONDS: "0.2"}, tls=True)
    pod = built["template"]["spec"]
    container = pod["containers"][0]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "maas-tls"]
    assert volume["secret"]["secretName"] == "digits-tls"
    authority = Authority()
    ca_file = authority.write(tmp_path / "ca.crt")
    first = authority.issue()
    secret = SecretVolume(tmp_path / "secret", first)  # mounted as the kubelet mounts it
    env = server_env(container, tmp_path / "cache", secret.directory)

    server = Server(env[contract.ENV_MODEL_URI], tmp_path / "server.log", env, ca_file=ca_file)
    try:
        server.wait_ready()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = container[probe]["httpGet"]
            assert action["scheme"] == "HTTPS" and action["port"] == contract.SERVING_TLS_PORT_NAME
            # The kubelet does not verify a probe's certificate; neither does this request.
            assert httpx.get(server.url + action["path"], timeout=5, verify=False).status_code == 200, probe

        name = env[contract.ENV_MODEL_NAME]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        pixels = np.zeros((1, 64), dtype=np.float32)
        client = triton.InferenceServerClient(
            f"127.0.0.1:{server.port}", ssl=True, ssl_options={"ca_certs": str(ca_file)}
        )
        try:
            inputs = [triton.InferInput("pixels", [1, 64], "FP32")]
            inputs[0].set_data_from_numpy(pixels)
            result = client.infer(name, inputs, headers=dict(headers))  # tritonclient adds to the dict
            assert result.as_numpy("logits").shape == (1, 10)

            with requests.Session() as session:
                session.headers.update(headers)
                # Per request: a Session's own `verify` loses to REQUESTS_CA_BUNDLE (requests' documented rule).
                metadata = session.get(f"{server.url}/v2/models/{name}", timeout=5, verify=str(ca_file))
                assert metadata.json()["name"] == name
                with pytest.raises(requests.exceptions.SSLError):  # another CA's clients do not trust it
                    requests.get(f"{server.url}/v2/health/live", timeout=5, verify=Authority().write(tmp_path / "x"))

                # Renewed while both clients keep their connections: new handshakes get the new certificate.
                second = authority.issue()
                secret.publish(second)
                deadline = time.monotonic() + 30
                while served_serial(server.port, authority) != second.serial:
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.1)
                assert session.get(f"{server.url}/v2/models/{name}", timeout=5, verify=str(ca_file)).status_code == 200
                again = client.infer(name, inputs, headers=dict(headers))
                assert np.array_equal(again.as_numpy("logits"), result.as_numpy("logits"))
        finally:
            client.close()
        metrics = httpx.get(f"{server.url}/metrics", headers=headers, timeout=5, verify=server.verify).text
        assert 'maas_http_tls_reloads_total{result="success"} 1.0' in metrics
    finally:
        assert server.stop() == 0
