"""A tiny Llama artifact built once per session, and the real server started on it.

`MAAS_TEST_ENGINE=vllm` (with `MAAS_VLLM_PYTHON`, see `make test-vllm`) runs the same client
tests against vLLM started exactly as the operator renders a ModelService with `engine: vllm`:
the init container's fetch, then the container's command, arguments and environment.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_workloads import contract
from maas_workloads.artifact import sha256_file
from tests.workloads.llm import artifacts
from tests.workloads.serve.conftest import ROOT, Server, ServerProcess, free_port

TOKEN = "llm-test-token"
MODEL = "tiny-llama"
ENGINE = os.environ.get("MAAS_TEST_ENGINE", "builtin")
builtin_only = pytest.mark.skipif(ENGINE != "builtin", reason="checks what only the builtin engine does")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("llm") / "tiny-llama"
    artifacts.llama_artifact(directory)
    return directory


def start(model: pathlib.Path | str, log: pathlib.Path, **env: str) -> Server:
    server = Server(
        str(model),
        log,
        {"MAAS_MODEL_NAME": MODEL, "MAAS_AUTH_TOKEN": TOKEN, "MAAS_ACCESS_LOG": "false", **env},
    )
    server.wait_ready()
    return server


def operator_pod(model_dir: pathlib.Path, engine: str) -> dict[str, Any]:
    """The pod spec the operator renders for a CPU ModelService serving this artifact."""
    spec = ModelServiceSpec.model_validate(
        {
            "engine": engine,
            "model": {"uri": f"file://{model_dir}"},
            "resources": {"cpu": "2", "memory": "4Gi"},
            "generation": {"maxNumSeqs": 32, "dtype": "float32"},
            "auth": {"tokenSecretRef": {"name": "token", "key": "token"}},
        }
    )
    model = ServedModel(uri=f"file://{model_dir}", sha256=sha256_file(model_dir / contract.MANIFEST_FILE))
    owner = Owner("ModelService", MODEL, "team-a", "uid")
    return build.deployment(owner, spec, model, "stable", "unused", None)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def local_env(container: dict[str, Any], cache: pathlib.Path) -> dict[str, str]:
    """The container's variables, secrets resolved to the test token, the cache mount mapped here."""
    env: dict[str, str] = {}
    for variable in container["env"]:
        value = TOKEN if "valueFrom" in variable else variable["value"]
        env[variable["name"]] = value.replace(contract.MODEL_CACHE_MOUNT, str(cache))
    return env


def run_fetch(pod: dict[str, Any], cache: pathlib.Path) -> None:
    (init,) = pod["initContainers"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "workloads"), **local_env(init, cache)}
    subprocess.run(init["command"], env=environment, check=True, timeout=300)


class VllmServer(ServerProcess):
    """vLLM's OpenAI server from the operator's rendered container, on a free local port."""

    stop_timeout = 120.0

    def __init__(self, pod: dict[str, Any], cache: pathlib.Path, log_path: pathlib.Path) -> None:
        container = pod["containers"][0]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [arg.replace(contract.MODEL_CACHE_MOUNT, str(cache)) for arg in container["args"]]
        args[args.index("--port") + 1] = str(self.port)
        args[args.index("--host") + 1] = "127.0.0.1"
        command = [os.environ["MAAS_VLLM_PYTHON"], *container["command"][1:], *args]
        environment = {**os.environ, **local_env(container, cache), "HOME": str(cache.parent)}
        environment.pop("PYTHONPATH", None)  # vLLM runs in its own venv
        super().__init__(command, environment, log_path)

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vLLM exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise AssertionError(f"vLLM not ready after {timeout} s")


@pytest.fixture(scope="session")
def llm_server(llama_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server | VllmServer]:
    logs = tmp_path_factory.mktemp("logs")
    server: Server | VllmServer
    if ENGINE == "vllm":
        pod = operator_pod(llama_dir, "vllm")
        cache = tmp_path_factory.mktemp("vllm") / "cache"
        run_fetch(pod, cache)
        server = VllmServer(pod, cache, logs / "vllm.log")
        server.wait_ready()
    else:
        server = start(llama_dir, logs / "llm.log")
    try:
        yield server
    finally:
        server.stop()
