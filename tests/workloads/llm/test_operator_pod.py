"""The pod the operator renders for an LLM ModelService (builtin engine) runs as it is: the init
container's fetch, then the server with the container's environment, probes, token and metric;
with `server.tls`, over HTTPS from the mounted Secret, rotated while the openai client is connected."""

from __future__ import annotations

import os
import pathlib
import ssl
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_workloads import contract
from maas_workloads.artifact import sha256_file
from tests.workloads.llm.conftest import TOKEN, local_env, run_fetch
from tests.workloads.serve.certificates import Authority, SecretVolume, served_serial
from tests.workloads.serve.conftest import ROOT, Server

pytestmark = pytest.mark.slow
OWNER = Owner("ModelService", "assistant", "team-a", "uid-assistant")


def rendered(model_dir: pathlib.Path, **server: Any) -> tuple[dict[str, object], str]:
    spec = ModelServiceSpec.model_validate(
        {
            "model": {"uri": f"file://{model_dir}"},
            "resources": {"cpu": "1", "memory": "2Gi"},
            "generation": {"maxNumSeqs": 4, "kvCacheMemory": "64Mi"},
            "autoscaling": {"maxReplicas": 3},
            "auth": {"tokenSecretRef": {"name": "assistant-token", "key": "token"}},
            "server": server,
        }
    )
    model = ServedModel(uri=f"file://{model_dir}", sha256=sha256_file(model_dir / contract.MANIFEST_FILE))
    template = build.deployment(OWNER, spec, model, "stable", "unused", None)["spec"]["template"]
    assert spec.autoscaling is not None
    hpa = build.horizontal_pod_autoscaler(OWNER, spec.autoscaling, llm_service=spec.is_llm)
    return template, hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]


def test_the_operators_llm_pod_runs_fetch_then_the_server(llama_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    template, metric = rendered(llama_dir)
    pod: dict[str, Any] = template["spec"]  # type: ignore[assignment]
    cache = tmp_path / "cache"
    run_fetch(pod, cache)

    server_container = pod["containers"][0]
    assert server_container["command"] == list(contract.SERVE_COMMAND)
    env = local_env(server_container, cache)
    for name in (contract.ENV_PORT, contract.ENV_HOST):
        env.pop(name, None)
    assert env[contract.ENV_MODEL_URI].startswith(f"file://{cache}/")
    server = Server(env[contract.ENV_MODEL_URI], tmp_path / "server.log", env)
    try:
        server.wait_ready()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = server_container[probe]["httpGet"]["path"]
            assert httpx.get(server.url + path, timeout=5).status_code == 200, probe  # no token for probes
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
        answer = api.chat.completions.create(
            model=OWNER.name, messages=[{"role": "user", "content": "the pod"}], max_tokens=4
        )
        assert answer.usage is not None and answer.usage.completion_tokens == 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        # prometheus-adapter exposes vllm:num_requests_waiting as vllm_num_requests_waiting (README).
        assert metric.replace("vllm_", "vllm:", 1) in metrics
    finally:
        assert server.stop() == 0


def test_the_operators_llm_tls_pod_serves_the_openai_client_over_https(
    llama_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    template, _ = rendered(llama_dir, tls={"secretRef": {"name": "assistant-tls"}})
    pod: dict[str, Any] = template["spec"]  # type: ignore[assignment]
    cache = tmp_path / "cache"
    run_fetch(pod, cache)
    container = pod["containers"][0]
    authority = Authority()
    ca_file = authority.write(tmp_path / "ca.crt")
    secret = SecretVolume(tmp_path / "secret", authority.issue())  # the kubelet's layout of the mounted Secret
    env = {
        name: value.replace(contract.TLS_MOUNT, str(secret.directory))
        for name, value in local_env(container, cache).items()
        if name not in {contract.ENV_PORT, contract.ENV_HOST}
    }
    env[contract.ENV_TLS_RELOAD_SECONDS] = "0.2"
    server = Server(env[contract.ENV_MODEL_URI], tmp_path / "server.log", env, ca_file=ca_file)
    try:
        server.wait_ready()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = container[probe]["httpGet"]
            assert (action["scheme"], action["port"]) == ("HTTPS", contract.SERVING_TLS_PORT_NAME), probe
            # The kubelet does not verify a probe's certificate; neither does this request.
            assert httpx.get(server.url + action["path"], timeout=5, verify=False).status_code == 200, probe

        # The openai client with a custom CA, as its docs say: its own HTTP client, trusting that CA only.
        def client(ca: ssl.SSLContext) -> openai.OpenAI:
            http_client = openai.DefaultHttpxClient(verify=ca)
            return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, http_client=http_client)

        with client(ssl.create_default_context(cafile=str(ca_file))) as api:
            stream = api.chat.completions.create(
                model=OWNER.name,
                messages=[{"role": "user", "content": "tls"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
            (usage,) = [chunk.usage for chunk in stream if chunk.usage is not None]  # the stream's last chunk
            assert usage.completion_tokens == 4
            with (
                client(ssl.create_default_context(cadata=Authority().pem.decode())) as stranger,
                pytest.raises(openai.APIConnectionError),  # a client trusting another CA refuses the server
            ):
                stranger.models.list()

            # Renewed while the client's pooled connection stays open: new handshakes get the new certificate.
            renewed = authority.issue()
            secret.publish(renewed)
            deadline = time.monotonic() + 30
            while served_serial(server.port, authority) != renewed.serial:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            assert [model.id for model in api.models.list()] == [OWNER.name]
        with client(ssl.create_default_context(cafile=str(ca_file))) as fresh:
            answer = fresh.completions.create(model=OWNER.name, prompt="again", max_tokens=2)
            assert answer.usage is not None and answer.usage.completion_tokens == 2
    finally:
        assert server.stop() == 0


def test_fetch_uses_a_verified_cache_and_refuses_a_tampered_artifact(
    llama_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from maas_workloads.fetch import fetch

    destination = tmp_path / "cache" / "model"
    pin = sha256_file(llama_dir / contract.MANIFEST_FILE)
    assert fetch(f"file://{llama_dir}", destination, pin) is True
    assert fetch(f"file://{llama_dir}", destination, pin) is False  # a restart: no second download
    (destination / "model.safetensors").write_bytes(b"corrupted")  # a damaged cache is fetched again
    assert fetch(f"file://{llama_dir}", destination, pin) is True

    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(llama_dir), str(tampered)], check=True)
    (tampered / "config.json").write_text("{}")
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "workloads"),
        contract.ENV_MODEL_URI: str(tampered),
        contract.ENV_FETCH_DESTINATION: str(tmp_path / "cache" / "bad"),
        contract.ENV_TERMINATION_LOG: str(tmp_path / "termination-log"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "maas_workloads.fetch"], env=environment, capture_output=True, check=False
    )
    assert result.returncode == contract.ExitCode.CONFIGURATION_ERROR
    assert "config.json does not match its sha256" in (tmp_path / "termination-log").read_text()
    assert not (tmp_path / "cache" / "bad").exists()  # nothing partial is left for the engine
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]
