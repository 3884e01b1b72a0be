"""Variants of a digits classifier at publish: files and checksums, the accuracy recorded and
recomputed here through the server's loader, the refusal over maxAccuracyDrop, and readers
that verify and fetch one variant alone."""

from __future__ import annotations

import copy
import functools
import http.server
import json
import pathlib
import shutil
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from maas_operator.api.trainer import ModelOptions
from maas_workloads import artifact, contract
from maas_workloads.contract import MANIFEST_FILE
from maas_workloads.serve import model as loader
from maas_workloads.serve import settings, sources
from maas_workloads.termination import write_termination_message
from maas_workloads.train import models, publish
from maas_workloads.variants.tensor import Validation
from tests.workloads.variants.artifacts import digits_split, evaluation_batches, export, trained_mlp

ALL = ("int8", "fp16", "bf16", "onnx")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, artifact.TensorManifest, str]:
    directory = tmp_path_factory.mktemp("variants") / "digits"
    manifest, digest = export(trained_mlp(), directory, ALL)
    return directory, manifest, digest


def served_accuracy(directory: pathlib.Path, digest: str, variant: str | None) -> tuple[float, np.ndarray]:
    """Accuracy and logits on the validation split, through the server's loader (checksums verified)."""
    _, validation = digits_split()
    model = loader.load(directory, expected_sha256=digest, device="cpu", variant=variant)
    batches = [model.predict({"input": batch})["logits"] for batch in evaluation_batches(validation.features)]
    logits = np.concatenate(batches)
    return float((logits.argmax(axis=1) == validation.labels).mean()), logits


def test_every_variant_is_listed_with_checksums_size_datatypes_and_recomputed_accuracy(
    published: tuple[pathlib.Path, artifact.TensorManifest, str],
) -> None:
    directory, manifest, digest = published
    on_disk = artifact.parse_manifest((directory / MANIFEST_FILE).read_bytes())
    assert on_disk == manifest and artifact.sha256_file(directory / MANIFEST_FILE) == digest
    assert sorted(manifest.variants) == sorted(ALL) and not manifest.rejected_variants
    assert not any(path.startswith("variants/") for path in manifest.files)  # the full model's files alone
    full_accuracy, full_logits = served_accuracy(directory, digest, None)
    assert manifest.metrics["val_accuracy"] == full_accuracy > 0.9
    expected = {"int8": ["INT8", "FP32"], "fp16": ["FP16"], "bf16": ["BF16"], "onnx": ["FP32"]}
    for name, variant in manifest.variants.items():
        assert variant.datatypes == expected[name]
        for relative, entry in variant.files.items():
            assert relative.startswith(f"variants/{name}/")
            assert artifact.sha256_file(directory / relative) == entry.sha256
            assert (directory / relative).stat().st_size == entry.size
        assert variant.size_bytes == sum(entry.size for entry in variant.files.values())
        accuracy, logits = served_accuracy(directory, digest, name)
        assert variant.metrics["val_accuracy"] == accuracy, name
        assert variant.metrics["val_accuracy_drop"] == pytest.approx((full_accuracy - accuracy) * 100, abs=1e-4)
        assert variant.metrics["max_abs_logit_diff"] == pytest.approx(float(np.abs(logits - full_logits).max()))
        assert variant.summary is not None and f"{accuracy:.4f} vs {full_accuracy:.4f}" in variant.summary
    assert manifest.variants["onnx"].format == "onnx" and manifest.variants["int8"].format == "torchscript"


def overflowing_in_fp16() -> torch.nn.Module:
    """The trained MLP with its hidden layer scaled by 1e6 and the output layer by 1e-6: the same
    function in float32 and bfloat16 (ReLU is positively homogeneous), but weights past float16's
    largest finite value (65504) turn into inf, so the fp16 variant answers NaN."""
    model = copy.deepcopy(trained_mlp())
    hidden, output = model.net[1], model.net[4]
    with torch.no_grad():
        hidden.weight.mul_(1e6)
        hidden.bias.mul_(1e6)
        output.weight.mul_(1e-6)
    return model


def test_a_variant_over_max_accuracy_drop_is_not_published_and_says_by_how_much(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "digits"
    manifest, digest = export(overflowing_in_fp16(), directory, ["fp16", "bf16"], max_accuracy_drop=1.0)
    assert list(manifest.variants) == ["bf16"] and list(manifest.rejected_variants) == ["fp16"]
    assert not (directory / "variants" / "fp16").exists()
    rejected = manifest.rejected_variants["fp16"]
    full_accuracy, _ = served_accuracy(directory, digest, None)
    drop = rejected.metrics["val_accuracy_drop"]
    assert drop == pytest.approx((full_accuracy - rejected.metrics["val_accuracy"]) * 100, abs=1e-4) and drop > 50
    assert rejected.message == (
        f"val_accuracy {rejected.metrics['val_accuracy']:.4f} vs {full_accuracy:.4f} for the full model, "
        f"a drop of {drop:.2f} points, more than maxAccuracyDrop 1: not published"
    )
    with pytest.raises(artifact.ArtifactError, match=r"no variant 'fp16' \(spec.model.variant\); it has: full"):
        loader.load(directory, expected_sha256=digest, device="cpu", variant="fp16")
    assert served_accuracy(directory, digest, "bf16")[0] >= full_accuracy - 0.01


def test_a_manifest_without_variants_reads_as_before(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "digits"
    manifest, _ = export(trained_mlp(epochs=1), directory, [])
    written = json.loads((directory / MANIFEST_FILE).read_text())
    assert "variants" not in json.dumps(written) or written["variants"] == {}
    old = {key: value for key, value in written.items() if key not in ("variants", "rejectedVariants")}
    (directory / MANIFEST_FILE).write_text(json.dumps(old))
    parsed = artifact.verify(directory)
    assert isinstance(parsed, artifact.TensorManifest) and parsed.variants == {} and parsed.select(None) is parsed
    assert artifact.selected_files(parsed, None) == manifest.files


def test_a_reader_verifies_only_its_variant_and_refuses_an_altered_one(
    published: tuple[pathlib.Path, artifact.TensorManifest, str], tmp_path: pathlib.Path
) -> None:
    source, _, digest = published
    directory = tmp_path / "copy"
    shutil.copytree(source, directory)
    int8 = directory / "variants" / "int8" / "model.pt"
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    int8.write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match=r"variants/int8/model\.pt does not match its sha256"):
        artifact.verify(directory, digest, "int8")
    for intact in (None, "onnx"):
        artifact.verify(directory, digest, intact)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_artifact(published: tuple[pathlib.Path, artifact.TensorManifest, str]) -> Iterator[str]:
    directory = published[0]
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_remote_variant_is_fetched_alone(http_artifact: str, tmp_path: pathlib.Path) -> None:
    fetched = sources.resolve(http_artifact, tmp_path / "cache", variant="onnx")
    files = sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file())
    assert files == [MANIFEST_FILE, "variants/onnx/model.onnx"]
    assert loader.load(fetched, expected_sha256=None, device="cpu", variant="onnx").manifest.format == "onnx"


def test_the_server_flag_names_the_variants() -> None:
    parsed = settings.parse(["--model", "/m", "--variant", "onnx"], {})
    assert parsed.model_variant == "onnx"
    with pytest.raises(settings.SettingsError, match=r"--variant \(MAAS_MODEL_VARIANT\) must be one of int8, fp16"):
        settings.parse(["--model", "/m"], {"MAAS_MODEL_VARIANT": "int4"})


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_every_built_in_model_publishes_int8_and_onnx(name: str, tmp_path: pathlib.Path) -> None:
    """The conversions that depend on the model's layers (the casts do not): PyTorch's Transformer
    layers keep float Linear layers under int8, and the dynamo exporter takes every model."""
    train, validation = digits_split()
    options = ModelOptions(hidden_size=16, layers=1)
    model = models.build(name, options, train.features, train.num_classes, train.image_shape).eval()
    manifest, digest = publish.export(
        model,
        torch.from_numpy(train.features[:2]),
        tmp_path / name,
        source=artifact.Source(),
        metrics={},
        variants=["int8", "onnx"],
        validation=Validation(validation.features[:64], validation.labels[:64]),
    )
    assert sorted(manifest.variants) == ["int8", "onnx"] and not manifest.rejected_variants
    for variant in manifest.variants:
        loader.load(tmp_path / name, expected_sha256=digest, device="cpu", variant=variant)


def test_the_termination_message_keeps_every_variant_outcome_under_the_limit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_TERMINATION_LOG", str(tmp_path / "log"))
    variants: list[contract.VariantReport] = [
        {"name": name, "published": name != "int8", "message": "m" * 300, "metrics": {f"x{i}": 1.0 for i in range(100)}}
        for name in ALL
    ]
    write_termination_message({"model": {"uri": "s3://b/m", "sha256": "ab", "metrics": {}, "variants": variants}})
    written = json.loads((tmp_path / "log").read_text())
    assert len((tmp_path / "log").read_bytes()) <= contract.TERMINATION_MESSAGE_MAX_BYTES
    assert [(v["name"], v["published"], v["metrics"]) for v in written["model"]["variants"]] == [
        (name, name != "int8", {}) for name in ALL
    ]
