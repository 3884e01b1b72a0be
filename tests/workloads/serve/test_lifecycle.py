"""Startup errors and the drain on SIGTERM under continuous load."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from maas_operator.cli import main as render_main
from tests.workloads.serve.conftest import ROOT, Server

pytestmark = pytest.mark.slow
REQUEST = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [1.0] * 128}]}


def test_bad_setting_exits_64_naming_it(digits_dir: pathlib.Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "workloads"),
        "MAAS_MODEL_URI": str(digits_dir),
        "MAAS_MAX_BATCH_SIZE": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "maas_workloads.serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 64
    assert "--max-batch-size (MAAS_MAX_BATCH_SIZE) must be at least 1" in result.stderr


async def test_sigterm_drains_every_accepted_request(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    settings = {"MAAS_MAX_DELAY_MS": "20", "MAAS_DRAIN_DELAY_SECONDS": "1", "MAAS_DRAIN_SECONDS": "20"}
    server = Server(str(digits_dir), tmp_path / "drain.log", settings)
    server.wait_ready()
    outcomes: list[tuple[float, int | str]] = []
    signalled = asyncio.Event()

    async def caller(client: httpx.AsyncClient) -> None:
        while server.process.poll() is None:
            sent = time.monotonic()
            try:
                response = await client.post("/v2/models/digits/infer", json=REQUEST)
                outcomes.append((sent, response.status_code))
            except httpx.TransportError as error:
                outcomes.append((sent, type(error).__name__))
                if signalled.is_set():
                    return
                await asyncio.sleep(0.01)

    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        httpx.AsyncClient(base_url=server.url) as probe,
    ):
        callers = [asyncio.ensure_future(caller(client)) for _ in range(6)]
        await asyncio.sleep(1.5)
        signal_time = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        signalled.set()
        await asyncio.sleep(0.3)
        readiness = await probe.get("/v2/health/ready")
        assert readiness.status_code == 503
        assert readiness.json() == {"ready": False, "reason": "the server is shutting down"}
        await asyncio.wait_for(asyncio.gather(*callers), timeout=60)
    assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log()
    server.stop()

    before = [outcome for sent, outcome in outcomes if sent < signal_time]
    after = [outcome for sent, outcome in outcomes if sent >= signal_time]
    assert len(before) > 20
    assert [outcome for outcome in before if outcome != 200] == []
    assert 200 in after, "requests kept being answered during the drain delay"
    assert "draining" in server.log()


MODELSERVICE = """
apiVersion: maas.dev/v1alpha1
kind: ModelService
metadata: {name: digits, namespace: team-a}
spec:
  model: {uri: "file:///models/digits"}
  resources: {cpu: "2", memory: 1Gi}
  auth: {tokenSecretRef: {name: digits-token, key: token}}
"""


def test_runs_as_the_operator_deploys_it(
    digits_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pod the operator renders (command, env, port, probes) starts this server unchanged."""
    spec_file = tmp_path / "modelservice.yaml"
    spec_file.write_text(MODELSERVICE)
    assert render_main(["render", "-f", str(spec_file)]) == 0
    rendered = capsys.readouterr().out
    deployment = next(o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "maas_workloads.serve"]
    assert not container.get("args")
    assert container["ports"][0]["name"] == "http"
    probes = {kind: container[kind]["httpGet"]["path"] for kind in ("readinessProbe", "livenessProbe")}

    pod_env = {item["name"]: item.get("value", "") for item in container["env"]}
    token = "from-the-secret"
    pod_env["MAAS_AUTH_TOKEN"] = token  # the kubelet would resolve the secretKeyRef
    pod_env["MAAS_MODEL_URI"] = f"file://{digits_dir}"
    pod_env["MAAS_MODEL_CACHE_DIR"] = str(tmp_path / "cache")
    pod_env.pop("MAAS_PORT")
    server = Server(pod_env["MAAS_MODEL_URI"], tmp_path / "pod.log", pod_env)
    try:
        server.wait_live()
        deadline = time.monotonic() + 60
        while httpx.get(server.url + probes["readinessProbe"], timeout=10).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert httpx.get(server.url + probes["livenessProbe"], timeout=10).status_code == 200
        infer = httpx.post(
            f"{server.url}/v2/models/{pod_env['MAAS_MODEL_NAME']}/infer",
            json=REQUEST,
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert infer.status_code == 200, infer.text
    finally:
        assert server.stop() == 0
