"""Loading artifacts in-process: verification, devices, and outputs checked against the manifest."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import torch

from maas_workloads.artifact import (
    ArtifactError,
    TensorManifest,
    TensorSpec,
    describe_files,
    load_manifest,
    write_manifest,
)
from maas_workloads.serve.model import load, select_device


def _rewrite_manifest(directory: pathlib.Path, **changes: object) -> str:
    manifest, _ = load_manifest(directory)
    data = manifest.model_dump(by_alias=True)
    data.update(changes)
    updated = TensorManifest.model_validate(data)
    return write_manifest(directory, updated.model_copy(update={"files": describe_files(directory)}))


def test_load_verifies_warms_up_and_predicts(digits_dir: pathlib.Path) -> None:
    _, digest = load_manifest(digits_dir)
    model = load(digits_dir, expected_sha256=digest, device="cpu")
    assert model.manifest_sha256 == digest
    assert model.device == torch.device("cpu")
    assert model.load_seconds > 0
    outputs = model.predict({"pixels": np.zeros((3, 64), dtype=np.float32)})
    assert outputs["logits"].shape == (3, 10)
    assert outputs["logits"].dtype == np.float32


def test_manifest_that_lies_about_outputs_is_refused(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    wrong_shape = tmp_path / "shape"
    shutil.copytree(digits_dir, wrong_shape)
    _rewrite_manifest(wrong_shape, outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 9]).model_dump()])
    with pytest.raises(ArtifactError, match=r"output 'logits' has shape \[1, 10\], the manifest says \[-1, 9\]"):
        load(wrong_shape, expected_sha256=None, device="cpu")

    wrong_type = tmp_path / "type"
    shutil.copytree(digits_dir, wrong_type)
    _rewrite_manifest(wrong_type, outputs=[TensorSpec(name="logits", datatype="FP64", shape=[-1, 10]).model_dump()])
    with pytest.raises(ArtifactError, match="output 'logits' is float32, the manifest says FP64"):
        load(wrong_type, expected_sha256=None, device="cpu")


def test_unsupported_formats_and_devices_are_named(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    onnx = tmp_path / "onnx"
    shutil.copytree(digits_dir, onnx)
    _rewrite_manifest(onnx, format="onnx")
    # A TorchScript file labelled onnx: ONNX Runtime (the onnx engine) refuses it, by name.
    with pytest.raises(ArtifactError, match=r"model\.pt is not a model ONNX Runtime can load"):
        load(onnx, expected_sha256=None, device="cpu")
    with pytest.raises(ArtifactError, match="not supported; use auto, cpu, cuda"):
        select_device("mps")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ArtifactError, match="no CUDA device"):
            select_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inference_matches_cpu(digits_dir: pathlib.Path) -> None:
    pixels = np.random.default_rng(0).uniform(0, 16, size=(4, 64)).astype(np.float32)
    on_cpu = load(digits_dir, expected_sha256=None, device="cpu").predict({"pixels": pixels})
    on_gpu = load(digits_dir, expected_sha256=None, device="cuda").predict({"pixels": pixels})
    np.testing.assert_allclose(on_gpu["logits"], on_cpu["logits"], rtol=1e-4, atol=1e-4)


def test_serves_what_the_trainer_publishes(tmp_path: pathlib.Path) -> None:
    from maas_workloads.artifact import Source
    from maas_workloads.train.publish import export

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    labels = [str(n) for n in range(10)]
    _, digest = export(
        module, torch.zeros(2, 64), tmp_path / "digits", source=Source(name="digits"), metrics={}, labels=labels
    )
    model = load(tmp_path / "digits", expected_sha256=digest, device="cpu")
    pixels = np.random.default_rng(0).uniform(0, 16, size=(3, 64)).astype(np.float32)
    outputs = model.predict({"input": pixels})
    with torch.no_grad():
        expected = module(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(outputs["output"], expected, rtol=1e-5, atol=1e-6)
    assert model.manifest.labels == labels
