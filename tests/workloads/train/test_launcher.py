"""The real launcher as a TrainingJob's pods would run it: head and workers as processes on 127.0.0.1."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from maas_workloads import artifact, contract, storage
from tests.workloads.train.cluster import REPO, LocalJob, free_port, spec
from tests.workloads.train.conftest import S3Server


@pytest.fixture
def jobs() -> Iterator[Callable[..., LocalJob]]:
    """Start LocalJobs; every process they started is stopped after the test."""
    started: list[LocalJob] = []

    def start(*args: Any, head: bool = True, **kwargs: Any) -> LocalJob:
        job = LocalJob(*args, **kwargs).start(head=head)
        started.append(job)
        return job

    yield start
    for job in started:
        job.stop()


def _wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- Configuration and infrastructure errors: decided before any Ray process starts -----------------


def _head_only(tmp_path: pathlib.Path, job_spec: dict[str, Any], **kwargs: Any) -> LocalJob:
    kwargs.setdefault("output_uri", (tmp_path / "out" / "model").as_uri())
    job = LocalJob(tmp_path / "run", job_spec, workers=0, **kwargs).start()
    job.wait(timeout=120)
    return job


def test_unknown_model_is_a_configuration_error(tmp_path: pathlib.Path) -> None:
    job = _head_only(tmp_path, spec(trainer={"model": "resnet", "dataset": {"uri": "sklearn:digits"}}))
    assert job.head is not None and job.head.returncode == contract.ExitCode.CONFIGURATION_ERROR
    assert "spec.trainer.model" in job.termination_message()["error"]


def test_missing_label_column_is_a_configuration_error(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("x1,x2,y\n1,2,0\n3,4,1\n")
    trainer = {"model": "mlp", "dataset": {"uri": data.as_uri(), "labelColumn": "label"}}
    job = _head_only(tmp_path, spec(trainer=trainer))
    assert job.head is not None and job.head.returncode == contract.ExitCode.CONFIGURATION_ERROR
    assert "labelColumn: column 'label' is not in" in job.termination_message()["error"]


def test_unreachable_storage_is_an_infrastructure_error(tmp_path: pathlib.Path, s3_server: S3Server) -> None:
    env = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    job = _head_only(tmp_path, spec(), output_uri="s3://models/digits", env=env)
    assert job.head is not None and job.head.returncode == contract.ExitCode.INFRASTRUCTURE_ERROR
    assert "output storage is unreachable" in job.termination_message()["error"]


def test_missing_bucket_is_a_configuration_error(tmp_path: pathlib.Path, s3_server: S3Server) -> None:
    job = _head_only(tmp_path, spec(), output_uri="s3://no-such-bucket/digits", env=s3_server.env)
    assert job.head is not None and job.head.returncode == contract.ExitCode.CONFIGURATION_ERROR
    assert "spec.output" in job.termination_message()["error"]


# --- Real Ray clusters ------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_that_never_join_end_the_attempt_for_a_retry(tmp_path: pathlib.Path) -> None:
    job = _head_only(tmp_path, spec(runPolicy={"startupDeadlineSeconds": 2}))
    assert job.head is not None and job.head.returncode == contract.ExitCode.INFRASTRUCTURE_ERROR
    assert "only 0 of the 2 required workers joined" in job.termination_message()["error"]


@pytest.mark.slow
def test_digits_on_two_workers_survives_a_killed_worker(tmp_path: pathlib.Path, jobs: Callable[..., LocalJob]) -> None:
    """>= 0.9 validation accuracy; a Ray Train worker killed mid-run is restored from the checkpoint."""
    trainer = {
        "model": "mlp",
        "dataset": {"uri": "sklearn:digits"},
        "hyperparameters": {"epochs": 8, "batchSize": 32, "learningRate": 0.01},
        "modelOptions": {"hiddenSize": 64, "layers": 1},
    }
    output = tmp_path / "out" / "digits"
    job = jobs(
        tmp_path / "run",
        spec(trainer=trainer, checkpoint={"uri": "file:///unused", "everyEpochs": 1, "keep": 2}),
        output_uri=output.as_uri(),
        checkpoint_uri=(tmp_path / "checkpoints").as_uri(),
    )
    progress = job.wait_for_checkpoint()
    assert progress["attempt"] == 1
    assert progress["totalSteps"] == 8 * 23  # 1437 training samples, 2 workers, 32 per step
    assert progress["step"] >= 23
    assert "val_accuracy" in progress["metrics"]
    assert "maas_train_checkpoint_duration_seconds_count" in job.metrics_text()
    victims = _wait_for(job.train_worker_processes, 30, "the Ray Train worker processes")
    victims[0].send_signal(signal.SIGKILL)
    assert job.wait() == contract.ExitCode.SUCCESS, job.log("head")[-3000:]

    # The restarted worker group restored the latest checkpoint rather than starting over.
    assert re.search(r"resuming from file://\S+/checkpoint-\d+ \(epoch [1-9]\d*, step [1-9]\d*\)", job.log("head"))
    model = job.termination_message()["model"]
    assert model["uri"] == output.as_uri()
    assert model["metrics"]["val_accuracy"] >= 0.9
    manifest = artifact.verify(output, expected_sha256=model["sha256"])
    assert manifest.labels == [str(d) for d in range(10)]
    assert manifest.inputs[0].shape == [-1, 64]
    assert manifest.source.uid == "uid-1"
    checkpoints = storage.open_location((tmp_path / "checkpoints").as_uri()).list_keys()
    assert len({key.split("/")[0] for key in checkpoints}) == 2  # keep: 2
    assert job.wait_workers(timeout=60) == [0, 0]  # the workers leave once the head is gone


@pytest.mark.slow
def test_shipped_user_code_example_resumes_in_a_second_attempt_from_s3(
    tmp_path: pathlib.Path, jobs: Callable[..., LocalJob], s3_env: S3Server
) -> None:
    """User-code mode, S3 checkpoints and artifact, and attempt 2 continuing attempt 1's steps."""
    bucket = s3_env.create_bucket("resume")
    job_spec = spec(
        command=[sys.executable, str(REPO / "examples" / "custom_driver.py")],
        args=["--epochs", "30"],
        workers={"replicas": 1, "resources": {"cpu": "1"}},
        checkpoint={"uri": f"s3://{bucket}/checkpoints", "keep": 100},
    )
    del job_spec["trainer"]
    locations = {"output_uri": f"s3://{bucket}/model", "checkpoint_uri": f"s3://{bucket}/checkpoints"}
    first = jobs(tmp_path / "attempt-1", job_spec, attempt=1, env=s3_env.env, **locations)
    first.wait_for_checkpoint()
    assert first.head is not None
    first.head.send_signal(signal.SIGTERM)  # the platform ends the attempt (e.g. the head's node is drained)
    assert first.wait() == contract.SIGNAL_EXIT_BASE + signal.SIGTERM
    assert "terminated by SIGTERM" in first.termination_message()["error"]
    store = storage.open_location(f"s3://{bucket}/checkpoints")

    def markers() -> list[dict[str, Any]]:
        return [json.loads(store.read_bytes(k)) for k in store.list_keys() if k.endswith("checkpoint.json")]

    first_steps = sorted(m["step"] for m in markers())
    assert first_steps and first_steps[-1] < 30
    assert not storage.open_location(f"s3://{bucket}").list_keys("model")

    second = jobs(tmp_path / "attempt-2", job_spec, attempt=2, env=s3_env.env, **locations)
    assert second.wait() == contract.ExitCode.SUCCESS, second.log("head")[-3000:]
    second_steps = sorted(m["step"] for m in markers() if m["attempt"] == 2)
    # Attempt 2 continued where attempt 1 stopped: no epoch was trained twice, none skipped.
    assert second_steps == list(range(first_steps[-1] + 1, 31))
    model = second.termination_message()["model"]
    assert model["uri"] == f"s3://{bucket}/model"
    assert model["metrics"]["val_accuracy"] > 0.8
    downloaded = tmp_path / "downloaded"
    storage.open_location(f"s3://{bucket}").download_directory("model", downloaded)
    manifest = artifact.verify(downloaded, expected_sha256=model["sha256"])
    assert manifest.source.attempt == 2
    assert manifest.labels == ["opposite signs", "same sign"]
    assert manifest.inputs[0].shape == [-1, 8]
