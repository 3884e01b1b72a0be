"""The training workload's parts, without Ray: data, models, artifacts, checkpoints, progress, config."""

from __future__ import annotations

import json
import pathlib
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import yaml

from maas_operator.api.trainer import DatasetSpec, ModelOptions
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_workloads import artifact, contract, storage
from maas_workloads.termination import write_termination_message
from maas_workloads.train import datasets, models, publish
from maas_workloads.train.builtin import steps_per_epoch
from maas_workloads.train.checkpoints import CheckpointStore
from maas_workloads.train.config import JobContext
from maas_workloads.train.errors import ConfigurationError
from maas_workloads.train.progress import JOB_UID_HEADER, ProgressServer, ProgressState, post_progress
from tests.workloads.train.cluster import REPO, spec


def test_bundled_and_synthetic_datasets() -> None:
    digits = datasets.load(DatasetSpec(uri="sklearn:digits"))
    assert digits.features.shape == (1797, 64)
    assert digits.image_shape == (1, 8, 8)
    assert digits.num_classes == 10
    train, validation = digits.split(0.2, seed=0)
    assert validation is not None
    assert len(train.labels) + len(validation.labels) == 1797
    synthetic = datasets.load(DatasetSpec(uri="synthetic:classification?samples=300&features=6&classes=3"))
    assert synthetic.features.shape == (300, 6)
    assert set(synthetic.labels.tolist()) == {0, 1, 2}
    with pytest.raises(ConfigurationError, match="unknown scikit-learn dataset 'mnist'"):
        datasets.load(DatasetSpec(uri="sklearn:mnist"))
    with pytest.raises(ConfigurationError, match="unknown option 'rows'"):
        datasets.load(DatasetSpec(uri="synthetic:classification?rows=3"))


def test_csv_dataset_columns_are_checked(tmp_path: pathlib.Path) -> None:
    csv = tmp_path / "flowers.csv"
    csv.write_text("a,b,name,species\n1,2,x,setosa\n3,4,y,virginica\n5,6,z,setosa\n")
    loaded = datasets.load(DatasetSpec(uri=csv.as_uri(), label_column="species", feature_columns=["a", "b"]))
    assert loaded.label_names == ["setosa", "virginica"]
    assert loaded.labels.tolist() == [0, 1, 0]
    with pytest.raises(ConfigurationError, match=r"labelColumn: column 'kind' is not in .*columns: a, b, name"):
        datasets.load(DatasetSpec(uri=csv.as_uri(), label_column="kind"))
    with pytest.raises(ConfigurationError, match="featureColumns: name are not numeric"):
        datasets.load(DatasetSpec(uri=csv.as_uri(), label_column="species"))
    with pytest.raises(ConfigurationError, match="featureColumns: c not in"):
        datasets.load(DatasetSpec(uri=csv.as_uri(), label_column="species", feature_columns=["a", "c"]))
    with pytest.raises(ConfigurationError, match="does not exist"):
        datasets.load(DatasetSpec(uri=(tmp_path / "missing.csv").as_uri(), label_column="species"))


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_models_export_to_a_verified_artifact(name: str, tmp_path: pathlib.Path) -> None:
    data = datasets.load(DatasetSpec(uri="sklearn:digits"))
    model = models.build(name, ModelOptions(hidden_size=16, layers=1), data.features, 10, data.image_shape)
    example = torch.from_numpy(data.features[:3])
    manifest, digest = publish.export(
        model,
        example,
        tmp_path / "artifact",
        source=artifact.Source(namespace="ns", name="job", uid="u", attempt=2),
        metrics={"val_accuracy": 0.5},
        labels=data.label_names,
        output_name="logits",
    )
    assert manifest.inputs == [artifact.TensorSpec(name="input", datatype="FP32", shape=[-1, 64])]
    assert manifest.outputs == [artifact.TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])]
    assert set(manifest.files) == {"model.pt", "model.safetensors"}
    assert manifest.source.attempt == 2
    assert {"torch", "python", "ray"} <= set(manifest.framework_versions)
    verified = artifact.verify(tmp_path / "artifact", digest)
    loaded = torch.jit.load(str(tmp_path / "artifact" / verified.model_file))
    batch = torch.from_numpy(data.features[:5])
    assert torch.allclose(loaded(batch), model.eval()(batch), atol=1e-5)


def test_cnn_needs_images() -> None:
    with pytest.raises(ConfigurationError, match="cnn needs image data"):
        models.build("cnn", ModelOptions(), np.zeros((4, 10), dtype=np.float32), 2)


def test_tampered_artifact_is_detected(tmp_path: pathlib.Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    _, digest = publish.export(
        model, torch.zeros(1, 4), tmp_path / "a", source=artifact.Source(), metrics={}, labels=["no", "yes"]
    )
    store = storage.open_location((tmp_path / "store").as_uri())
    publish.publish(tmp_path / "a", (tmp_path / "store" / "model").as_uri())
    manifest, published_digest = publish.read_published((tmp_path / "store" / "model").as_uri())
    assert published_digest == digest
    assert manifest.labels == ["no", "yes"]
    weights = tmp_path / "store" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(artifact.ArtifactError, match=r"model\.safetensors does not match"):
        artifact.verify(store.child("model").root)  # type: ignore[attr-defined]


def test_checkpoint_store_commits_keeps_and_ignores_partial_and_foreign(tmp_path: pathlib.Path, bucket: str) -> None:
    for location in (storage.open_location((tmp_path / "ckpt").as_uri()), storage.open_location(f"s3://{bucket}/c")):
        store = CheckpointStore(location, keep=2, job_uid="me")
        assert store.latest() is None
        foreign = CheckpointStore(location, keep=2, job_uid="someone-else")
        source = tmp_path / "src"
        source.mkdir(exist_ok=True)
        (source / "state.bin").write_bytes(b"x")
        foreign.save(source, step=1000, epoch=9, attempt=1, metrics={})
        location.write_bytes("checkpoint-000000000007/state.bin", b"interrupted write, no marker")
        for step in (5, 10, 15):
            (source / "state.bin").write_bytes(str(step).encode())
            _, seconds = store.save(source, step=step, epoch=step // 5, attempt=2, metrics={"loss": 1.0 / step})
            assert seconds >= 0
        latest = store.latest()
        assert latest is not None
        assert (latest.step, latest.epoch, latest.attempt, latest.metrics) == (15, 3, 2, {"loss": 1 / 15})
        assert [c.step for c in store.committed()] == [10, 15]
        assert not any(k.startswith("checkpoint-000000000007/") for k in location.list_keys())
        assert foreign.latest() is not None and foreign.latest().step == 1000  # type: ignore[union-attr]
        restored = store.download(latest, tmp_path / f"restored-{type(location).__name__}")
        assert (restored / "state.bin").read_bytes() == b"15"
        assert not (source / "checkpoint.json").exists()


def test_progress_server_serves_reports_and_metrics() -> None:
    state = ProgressState(attempt=3)
    server = ProgressServer(state, 0, job_uid="uid-7", host="127.0.0.1")
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert not post_progress(base + contract.PROGRESS_PATH, "wrong-uid", {"step": 5})
        update = {
            "step": 40,
            "epoch": 2,
            "totalSteps": 100,
            "metrics": {"loss": 0.25, "samples_per_second": 900.0},
            "lastCheckpoint": "s3://b/c/checkpoint-000000000040",
            "checkpointSeconds": 0.3,
        }
        assert post_progress(base + contract.PROGRESS_PATH, "uid-7", update)
        with urllib.request.urlopen(base + contract.PROGRESS_PATH) as response:
            report = json.loads(response.read())
        assert report["attempt"] == 3
        assert (report["epoch"], report["step"], report["totalSteps"]) == (2, 40, 100)
        assert report["metrics"] == {"loss": 0.25, "samples_per_second": 900.0}
        assert report["lastCheckpoint"] == "s3://b/c/checkpoint-000000000040"
        assert report["heartbeatTime"].endswith("Z")
        with urllib.request.urlopen(base + contract.METRICS_PATH) as response:
            text = response.read().decode()
        for line in (
            "maas_train_step 40.0",
            "maas_train_steps_total 40.0",
            "maas_train_loss 0.25",
            "maas_train_samples_per_second 900.0",
            "maas_train_checkpoint_duration_seconds_count 1.0",
            'maas_train_metric{name="loss"} 0.25',
        ):
            assert line in text
        request = urllib.request.Request(
            base + contract.PROGRESS_PATH, data=b"[1]", method="POST", headers={JOB_UID_HEADER: "uid-7"}
        )
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(request)
        assert bad.value.code == 400
    finally:
        server.stop()


def _env(**extra: str) -> dict[str, str]:
    return {
        contract.ENV_TRAININGJOB: json.dumps(spec()),
        contract.ENV_OUTPUT_URI: "file:///tmp/out",
        contract.ENV_HEAD_ADDRESS: "job-head.ns.svc:6379",
        **extra,
    }


def test_job_context_reads_the_pod_environment() -> None:
    context = JobContext.from_env(_env(**{contract.ENV_ATTEMPT: "2", contract.ENV_MIN_WORKERS: "1"}))
    assert (context.attempt, context.workers, context.min_workers) == (2, 2, 1)
    assert context.progress_url == "http://job-head.ns.svc:8090/progress"
    assert context.cpus_per_worker == 1
    with pytest.raises(ConfigurationError, match=r"spec\.trainer\.model"):
        JobContext.from_env(_env(**{contract.ENV_TRAININGJOB: json.dumps(spec(trainer={"model": "rnn"}))}))
    with pytest.raises(ConfigurationError, match="MAAS_ATTEMPT='zero' is not an integer"):
        JobContext.from_env(_env(**{contract.ENV_ATTEMPT: "zero"}))
    with pytest.raises(ConfigurationError, match="MAAS_OUTPUT_URI is not set"):
        JobContext.from_env({k: v for k, v in _env().items() if k != contract.ENV_OUTPUT_URI})


def test_steps_per_epoch_pads_every_shard_equally() -> None:
    assert steps_per_epoch(1437, 64, 2) == 12
    assert steps_per_epoch(10, 64, 3) == 1


def test_termination_message_stays_under_the_limit(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(path))
    write_termination_message({"error": "x" * 10_000})
    assert len(path.read_bytes()) <= contract.TERMINATION_MESSAGE_MAX_BYTES
    metrics = {f"metric_{i}": float(i) for i in range(500)}
    write_termination_message({"model": {"uri": "s3://b/m", "sha256": "ab", "metrics": metrics}})
    assert json.loads(path.read_text()) == {"model": {"uri": "s3://b/m", "sha256": "ab"}}


def test_example_trainingjob_is_valid() -> None:
    document = yaml.safe_load((REPO / "examples" / "trainingjob-custom.yaml").read_text())
    parsed = TrainingJobSpec.model_validate(document["spec"])
    assert parsed.command[-1].endswith("custom_driver.py")


def test_training_failures_are_blamed_on_their_root_cause() -> None:
    from ray.train import WorkerGroupError

    from maas_workloads.train.driver import classify_training_failure
    from maas_workloads.train.errors import ApplicationError, InfrastructureError

    def failed(error: Exception) -> WorkerGroupError:
        try:
            raise RuntimeError("wrapped by Ray") from error
        except RuntimeError as wrapped:
            return WorkerGroupError("rank 0 failed", {0: wrapped})

    unreachable = classify_training_failure(failed(storage.StorageUnavailableError("s3 timed out")))
    assert isinstance(unreachable, InfrastructureError)
    assert "s3 timed out" in str(unreachable)
    assert isinstance(classify_training_failure(failed(ConfigurationError("bad option"))), ConfigurationError)
    bug = classify_training_failure(failed(ZeroDivisionError("division by zero")))
    assert isinstance(bug, ApplicationError)
    assert str(bug) == "training failed: ZeroDivisionError: division by zero"
