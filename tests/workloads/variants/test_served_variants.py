"""A real training run (`maas run`: the operator's specs, the launcher on a local Ray cluster,
shared with tests/test_local_run.py) publishes the digits model with every variant; its
ModelService serves one by name; each is then served and queried with tritonclient, its
accuracy recomputed and its outputs compared with the full model's."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton

from maas_workloads import artifact
from maas_workloads.contract import MANIFEST_FILE
from maas_workloads.serve import model as loader
from tests.workloads.serve.conftest import Server
from tests.workloads.variants.artifacts import digits_split, evaluation_batches, export, trained_mlp

pytestmark = pytest.mark.slow

TOLERANCE_ULPS = 4
"""fp16 and bf16 variants compute in that format: each logit carries the rounding of the input cast,
two matmuls and the bias adds, a few units in the last place (ulp) of the largest logit. Four ulps
(2**-10 relative for fp16, 2**-7 for bf16) bound what was measured (about one) with room for
summation order, and are far below what a wrong cast or layer would cost."""
ULP = {"fp16": 2.0**-10, "bf16": 2.0**-7}
ONNX_RELATIVE = 1e-5
"""ONNX Runtime runs the same float32 graph as TorchScript: only summation order differs."""


def flips_only_within_the_margin(full: np.ndarray, variant: np.ndarray) -> bool:
    """int8 quantizes each batch's activations to 255 steps of its range, so its logits move by a
    sizeable fraction of a step and no ulp-like bound applies. What does: when no logit moves by more
    than D (the largest difference, measured), the predicted class can change only on rows where
    the full model's two best logits are within 2 D of each other."""
    moved = float(np.abs(variant - full).max())
    ordered = np.sort(full, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    flipped = variant.argmax(axis=1) != full.argmax(axis=1)
    return bool(np.all(margin[flipped] <= 2 * moved))


@pytest.fixture(scope="module")
def trained(local_run: tuple[pathlib.Path, subprocess.CompletedProcess[str]]) -> tuple[pathlib.Path, str]:
    """The session's real training run (tests/local_run.py): the artifact directory and the output."""
    workdir, result = local_run
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir / "run" / "volumes" / "store" / "tiny" / "model", result.stdout


@pytest.fixture(scope="module")
def servers(trained: tuple[pathlib.Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Every variant in its own server, and one asked for a variant its artifact lacks, started together."""
    directory, _ = trained
    logs = tmp_path_factory.mktemp("logs")
    lacking = tmp_path_factory.mktemp("lacking") / "digits"
    export(trained_mlp(epochs=1), lacking, ["onnx"])
    started: dict[str, Server] = {}
    try:
        for name in ("int8", "fp16", "bf16", "onnx"):
            env = {"MAAS_MODEL_NAME": "digits", "MAAS_MAX_BATCH_SIZE": "512", "MAAS_MODEL_VARIANT": name}
            started[name] = Server(str(directory), logs / f"{name}.log", env)
        started["lacking"] = Server(str(lacking), logs / "lacking.log", {"MAAS_MODEL_VARIANT": "int8"})
        for name, server in started.items():
            if name != "lacking":
                server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def infer(server: Server, rows: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    request = triton.InferInput("input", list(rows.shape), "FP32")
    request.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32), binary_data=True)
    result = client.infer("digits", [request], outputs=[triton.InferRequestedOutput("logits", binary_data=True)])
    return np.asarray(result.as_numpy("logits"))


def test_the_run_publishes_every_variant_and_serves_the_named_one(trained: tuple[pathlib.Path, str]) -> None:
    directory, stdout = trained
    manifest = artifact.verify(directory)
    assert isinstance(manifest, artifact.TensorManifest)
    assert sorted(manifest.variants) == ["bf16", "fp16", "int8", "onnx"]
    for name in manifest.variants:
        artifact.verify(directory, None, name)  # every variant's files against their sha256
    for name in manifest.variants:  # the head's report (status.model.variants), as `maas run` prints it
        assert f"variant {name}: published: val_accuracy " in stdout
    assert "held out from training: predicted" in stdout  # the ModelService's onnx variant answered


def test_each_served_variant_has_its_recorded_accuracy_and_agrees_with_the_full_model(
    trained: tuple[pathlib.Path, str], servers: dict[str, Server]
) -> None:
    directory, _ = trained
    manifest = artifact.parse_manifest((directory / MANIFEST_FILE).read_bytes())
    assert isinstance(manifest, artifact.TensorManifest)
    _, validation = digits_split()
    # One request per batch the publisher measured, sent one at a time: the same forward passes.
    batches = evaluation_batches(validation.features)
    full = loader.load(directory, expected_sha256=None, device="cpu")  # the full model, in-process
    logits = {"full": np.concatenate([full.predict({"input": batch})["logits"] for batch in batches])}
    for name, server in servers.items():
        if name != "lacking":
            logits[name] = np.concatenate([infer(server, batch) for batch in batches])
    accuracy = {name: float((values.argmax(axis=1) == validation.labels).mean()) for name, values in logits.items()}
    assert accuracy["full"] == manifest.metrics["val_accuracy"] > 0.5  # two epochs: a model, if not a good one
    largest = float(np.abs(logits["full"]).max())
    for name, variant in manifest.variants.items():
        assert accuracy[name] == variant.metrics["val_accuracy"], name
        difference = float(np.abs(logits[name] - logits["full"]).max())
        assert difference == pytest.approx(variant.metrics["max_abs_logit_diff"], rel=1e-5, abs=1e-6), name
        if name in ULP:
            assert difference <= TOLERANCE_ULPS * ULP[name] * largest, (name, difference, largest)
        elif name == "onnx":
            assert difference <= ONNX_RELATIVE * largest, difference
        else:
            assert flips_only_within_the_margin(logits["full"], logits[name])


def test_a_variant_the_artifact_lacks_keeps_the_server_unready_with_the_names(servers: dict[str, Server]) -> None:
    server = servers["lacking"]
    reason = server.failed_load_reason("/v2/health/ready", timeout=90)
    expected = "the artifact has no variant 'int8' (spec.model.variant); it has: full (the default), onnx"
    assert expected in reason and expected in server.log()
