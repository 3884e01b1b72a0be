"""A TrainingJob's pods as local processes: the real launcher, head and workers, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import psutil

from maas_workloads import contract

REPO = pathlib.Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spec(**overrides: Any) -> dict[str, Any]:
    """A small TrainingJob spec (camelCase, as the operator passes it): digits, MLP, 2 workers."""
    base: dict[str, Any] = {
        "trainer": {
            "model": "mlp",
            "dataset": {"uri": "sklearn:digits"},
            "hyperparameters": {"epochs": 2, "batchSize": 64, "learningRate": 0.003},
            "modelOptions": {"hiddenSize": 64, "layers": 1},
        },
        "workers": {"replicas": 2, "resources": {"cpu": "1"}},
        "output": {"uri": "file:///unused"},
        "runPolicy": {"startupDeadlineSeconds": 120},
    }
    base.update(overrides)
    return base


def torchrun(script: pathlib.Path, arguments: list[str], workers: int) -> float:
    """Run `script` under `torchrun --standalone --nproc_per_node workers`, one torch thread per rank as
    our workers have, until it exits (CalledProcessError when it fails); returns when it started
    (time.time()), the peers' start for their time to the first step."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={workers}",
        str(script),
        *arguments,
    ]
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return started


class LocalJob:
    """One attempt of a TrainingJob: a head process and worker processes started with the pods' env."""

    def __init__(
        self,
        workdir: pathlib.Path,
        job_spec: dict[str, Any],
        *,
        output_uri: str,
        checkpoint_uri: str | None = None,
        attempt: int = 1,
        uid: str = "uid-1",
        workers: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.gcs_port = free_port()
        self.progress_port = free_port()
        self.workers = workers if workers is not None else job_spec["workers"]["replicas"]
        self.base_env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("workloads", "operator", ".")),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "0",
            # Fewer helper actors: each is a Python process to start on a 2-core machine.
            "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "PYTHONUNBUFFERED": "1",
            contract.ENV_TRAININGJOB: json.dumps(job_spec),
            contract.ENV_JOB_NAME: "test",
            contract.ENV_JOB_NAMESPACE: "default",
            contract.ENV_JOB_UID: uid,
            contract.ENV_ATTEMPT: str(attempt),
            contract.ENV_HEAD_ADDRESS: f"127.0.0.1:{self.gcs_port}",
            contract.ENV_WORKERS: str(job_spec["workers"]["replicas"]),
            contract.ENV_MIN_WORKERS: str(job_spec["workers"].get("minReplicas", job_spec["workers"]["replicas"])),
            contract.ENV_OUTPUT_URI: output_uri,
            contract.ENV_PROGRESS_PORT: str(self.progress_port),
        }
        if checkpoint_uri:
            self.base_env[contract.ENV_CHECKPOINT_URI] = checkpoint_uri
        self.head: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        self.temp_dirs: list[str] = []

    def _ray_args(self, head: bool) -> str:
        # Ray nodes on one machine race for socket names in a shared temp dir: give each its own
        # (short: AF_UNIX paths are limited to 107 bytes).
        self.temp_dirs.append(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        args = [
            f"--temp-dir={self.temp_dirs[-1]}",
            "--node-ip-address=127.0.0.1",
            "--object-store-memory=100000000",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        if head:
            args += ["--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
        return " ".join(args)

    def _start(self, role: str, name: str) -> subprocess.Popen[bytes]:
        env = {
            **self.base_env,
            contract.ENV_ROLE: role,
            contract.ENV_RAY_START_ARGS: self._ray_args(role == "head"),
            contract.ENV_TERMINATION_LOG: str(self.workdir / f"{name}.termination-log"),
        }
        log = (self.workdir / f"{name}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "maas_workloads.launch", role], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def start(self, head: bool = True) -> LocalJob:
        if head:
            self.head = self._start("head", "head")
        for index in range(self.workers):
            self.worker_processes.append(self._start("worker", f"worker-{index}"))
        return self

    def wait(self, timeout: float = 240) -> int:
        assert self.head is not None
        try:
            code = self.head.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the head did not finish in {timeout}s; log:\n{self.log('head')[-4000:]}") from None
        return code

    def wait_workers(self, timeout: float = 60) -> list[int]:
        return [process.wait(timeout=timeout) for process in self.worker_processes]

    def termination_message(self, name: str = "head") -> dict[str, Any]:
        return json.loads((self.workdir / f"{name}.termination-log").read_text())  # type: ignore[no-any-return]

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def progress(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.progress_port}{contract.PROGRESS_PATH}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def wait_for_checkpoint(self, timeout: float = 180) -> dict[str, Any]:
        """The head's progress once it names a checkpoint; fails early if the head exits."""
        assert self.head is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.head.poll() is not None:
                raise AssertionError(f"the head exited with {self.head.returncode}:\n{self.log('head')[-3000:]}")
            progress = self.progress()
            if progress and progress.get("lastCheckpoint"):
                return progress
            time.sleep(0.2)
        raise AssertionError(f"no checkpoint within {timeout}s:\n{self.log('head')[-3000:]}")

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.progress_port}{contract.METRICS_PATH}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def train_worker_processes(self) -> list[psutil.Process]:
        """Ray Train worker actors started under this job's worker nodes."""
        found = []
        for launcher in self.worker_processes:
            try:
                children = psutil.Process(launcher.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    if "RayTrainWorker" in " ".join(child.cmdline()):
                        found.append(child)
                except psutil.NoSuchProcess:
                    continue
        return found

    def stop(self) -> None:
        """Stop every process this job started (the launchers stop their Ray nodes)."""
        for process in [self.head, *self.worker_processes]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in [self.head, *self.worker_processes]:
            if process is None:
                continue
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for directory in self.temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)
