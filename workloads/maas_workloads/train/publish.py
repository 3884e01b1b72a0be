"""Export a trained model as a verified artifact (artifact.py's format) and publish it to the output location."""

from __future__ import annotations

import pathlib
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata

import torch
from safetensors.torch import save_file
from torch import nn

from maas_workloads import artifact, contract, storage
from maas_workloads.storage_s3 import S3Location
from maas_workloads.variants.tensor import Validation, add_variants

MODEL_FILE = "model.pt"
ADAPTER_DIRECTORY = "adapter"
"""A LoRA fine-tune's adapter, published below the merged model it was merged into."""
WEIGHTS_FILE = "model.safetensors"
_DATATYPES: dict[torch.dtype, artifact.Datatype] = {
    torch.float32: "FP32",
    torch.float16: "FP16",
    torch.bfloat16: "BF16",
    torch.float64: "FP64",
    torch.int64: "INT64",
    torch.int32: "INT32",
    torch.int16: "INT16",
    torch.int8: "INT8",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.bool: "BOOL",
}


def _datatype(tensor: torch.Tensor, what: str) -> artifact.Datatype:
    try:
        return _DATATYPES[tensor.dtype]
    except KeyError as error:
        raise ValueError(f"{what} has dtype {tensor.dtype}, which the artifact format cannot describe") from error


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for distribution in ("ray", "safetensors", "maas-operator"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (or any wrapper with `.module`)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def export(
    model: nn.Module,
    example_input: torch.Tensor,
    directory: pathlib.Path,
    *,
    source: artifact.Source,
    metrics: dict[str, float],
    labels: list[str] | None = None,
    input_name: str = "input",
    output_name: str = "output",
    variants: Sequence[artifact.VariantName] = (),
    validation: Validation | None = None,
    max_accuracy_drop: float | None = None,
) -> tuple[artifact.TensorManifest, str]:
    """Write model.pt (TorchScript), model.safetensors, the requested optimized variants (measured
    on `validation`, see variants.tensor) and manifest.json (last); returns it and its sha256.

    Raises ValueError when variants are requested without validation data to measure them on."""
    if variants and validation is None:
        raise ValueError(
            "spec.output.variants needs validation data to measure them on: set "
            "trainer.hyperparameters.validationSplit above 0, or pass validation= to save_model"
        )
    module = unwrap(model).to("cpu").eval()
    example = example_input.detach().to("cpu")
    if example.dim() < 1 or example.shape[0] < 1:
        raise ValueError("example_input needs a batch dimension with at least one sample")
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.jit.trace(module, example, check_trace=False)  # type: ignore[no-untyped-call]
        output = program(example)
    if not isinstance(output, torch.Tensor):
        raise ValueError("save_model supports models that return one tensor")
    program.save(str(directory / MODEL_FILE))
    weights = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in module.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS_FILE))
    if labels is not None and (output.dim() < 2 or len(labels) != output.shape[-1]):
        raise ValueError(f"{len(labels)} labels do not match the model's output shape {tuple(output.shape)}")
    manifest = artifact.TensorManifest(
        format="torchscript",
        model_file=MODEL_FILE,
        weights_file=WEIGHTS_FILE,
        inputs=[
            artifact.TensorSpec(
                name=input_name, datatype=_datatype(example, "example_input"), shape=[-1, *example.shape[1:]]
            )
        ],
        outputs=[
            artifact.TensorSpec(
                name=output_name, datatype=_datatype(output, "the model's output"), shape=[-1, *output.shape[1:]]
            )
        ],
        files=artifact.describe_files(directory),
        source=source,
        metrics=metrics,
        framework_versions=_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        labels=labels,
    )
    if variants and validation is not None:
        manifest = add_variants(directory, manifest, module, example, variants, validation, max_accuracy_drop)
    digest = artifact.write_manifest(directory, manifest)
    for name in (None, *manifest.variants):
        artifact.verify(directory, digest, name)
    return manifest, digest


def split_output_uri(output_uri: str) -> tuple[storage.Location, str]:
    """(parent location, name): the artifact is published as the directory `name` inside the parent."""
    location = storage.open_location(output_uri)
    if isinstance(location, S3Location):
        parent_key, _, name = location.prefix.rpartition("/")
        if name:
            return S3Location(location.bucket, parent_key), name
    elif isinstance(location, storage.LocalLocation) and location.root.parent != location.root:
        return storage.LocalLocation(location.root.parent), location.root.name
    raise storage.StorageConfigError(
        f"output {output_uri!r} must name a directory below the bucket or filesystem root, e.g. s3://models/digits"
    )


def publish(directory: pathlib.Path, output_uri: str) -> None:
    """Make the artifact visible at the output URI, manifest last."""
    parent, name = split_output_uri(output_uri)
    parent.publish_directory(directory, name, contract.MANIFEST_FILE)


def read_published(output_uri: str) -> tuple[artifact.ArtifactManifest, str]:
    """The published manifest and its sha256, read back from the output location."""
    parent, name = split_output_uri(output_uri)
    data = parent.read_bytes(f"{name}/{contract.MANIFEST_FILE}")
    try:
        manifest = artifact.parse_manifest(data)
    except artifact.ArtifactError as error:
        raise artifact.ArtifactError(f"{output_uri}/{contract.MANIFEST_FILE}: {error}") from error
    return manifest, artifact.sha256_bytes(data)


def published_adapter(output_uri: str) -> contract.ArtifactReport | None:
    """The adapter published below a merged model (`<output>/adapter`), if any."""
    parent, name = split_output_uri(output_uri)
    try:
        data = parent.read_bytes(f"{name}/{ADAPTER_DIRECTORY}/{contract.MANIFEST_FILE}")
    except storage.ObjectNotFoundError:
        return None
    return {"uri": f"{output_uri.rstrip('/')}/{ADAPTER_DIRECTORY}", "sha256": artifact.sha256_bytes(data)}
