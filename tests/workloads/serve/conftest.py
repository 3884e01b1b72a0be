"""Artifacts built once per session, and the real server started as a subprocess."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

from tests.workloads.serve import artifacts

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # Two shared cores: the servers under test need them more than the test process does.
    torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A server started as a subprocess, its output in `log_path`; `stop` sends SIGTERM (the drain
    under test) and kills it only after `stop_timeout` seconds."""

    stop_timeout = 60.0

    def __init__(self, command: list[str], environment: dict[str, str], log_path: pathlib.Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=environment, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Server(ServerProcess):
    """`python -m maas_workloads.serve` on a free port, its log in a file.

    `ca_file`: the server speaks HTTPS (its env names the certificate) with a certificate this CA signed.
    """

    def __init__(
        self,
        model: str,
        log_path: pathlib.Path,
        env: dict[str, str] | None = None,
        *args: str,
        ca_file: pathlib.Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "workloads"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "MAAS_HOST": "127.0.0.1",
            "MAAS_DRAIN_DELAY_SECONDS": "0",
            "MAAS_PORT": str(self.port),
            "MAAS_MODEL_URI": model,
            **(env or {}),
        }
        super().__init__([sys.executable, "-m", "maas_workloads.serve", *args], environment, log_path)

    def wait_live(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/live", timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not live after {timeout} s:\n{self.log()}")

    def failed_load_reason(self, path: str, timeout: float = 60) -> str:
        """The reason `path` (a readiness endpoint, always 503 meanwhile) gives once the model failed to load."""
        deadline = time.monotonic() + timeout
        reason = ""
        while "failed to load" not in reason and time.monotonic() < deadline:
            answer = httpx.get(f"{self.url}{path}", timeout=5, verify=self.verify)
            assert answer.status_code == 503
            reason = answer.json()["reason"]
            time.sleep(0.1)
        return reason

    def wait_ready(self, timeout: float = 90) -> None:
        self.wait_live(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/v2/health/ready", timeout=2, verify=self.verify).status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def digits_dir(artifact_root: pathlib.Path) -> pathlib.Path:
    directory = artifact_root / "digits"
    artifacts.digits_artifact(directory)
    return directory


@pytest.fixture(scope="session")
def multi_dir(artifact_root: pathlib.Path) -> pathlib.Path:
    directory = artifact_root / "multi"
    artifacts.two_in_two_out_artifact(directory)
    return directory


@pytest.fixture(scope="session")
def slow_dir(artifact_root: pathlib.Path) -> pathlib.Path:
    directory = artifact_root / "slow"
    artifacts.slow_artifact(directory)
    return directory


@pytest.fixture(scope="session")
def echo_dir(artifact_root: pathlib.Path) -> pathlib.Path:
    directory = artifact_root / "echo"
    artifacts.echo_artifact(directory)
    return directory


@pytest.fixture(scope="session")
def digits_server(digits_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(str(digits_dir), tmp_path_factory.mktemp("logs") / "digits.log", {"MAAS_MAX_DELAY_MS": "5"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def multi_server(multi_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(str(multi_dir), tmp_path_factory.mktemp("logs") / "multi.log", {"MAAS_MODEL_NAME": "multi"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
