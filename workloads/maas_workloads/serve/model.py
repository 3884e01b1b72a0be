"""Loading an artifact into a callable model: verify, load, warm up, then serve.

A model is called with one batch, every input's first dimension being the batch, positional
in manifest order; it returns a tensor, a tuple/list in manifest order, or a dict by name.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maas_workloads.artifact import ArtifactError, TensorManifest, TensorSpec, load_manifest, verify
from maas_workloads.serve import datatypes
from maas_workloads.serve.oip import Tensor
from maas_workloads.serve.onnx_engine import OnnxModule

log = logging.getLogger(__name__)


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"device {requested!r} was asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ArtifactError(f"device {requested!r} is not supported; use auto, cpu, cuda or cuda:<n>")
    return device


@dataclass(frozen=True)
class LoadedModel:
    manifest: TensorManifest
    manifest_sha256: str
    module: Any
    device: torch.device
    load_seconds: float

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    def predict(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One forward pass over a batch; blocking, so the server calls it from a worker thread."""
        arguments = [self._to_torch(inputs[spec.name], spec) for spec in self.inputs]
        with torch.inference_mode():
            result = self.module(*arguments)
        return self._outputs_of(result)

    def _to_torch(self, array: Tensor, spec: TensorSpec) -> torch.Tensor:
        if spec.datatype == "BYTES":
            raise ArtifactError(f"input {spec.name!r} is BYTES, which a torch model cannot take")
        if not array.flags.writeable:
            array = array.copy()
        return torch.from_numpy(array).to(self.device, datatypes.TORCH_DTYPES[spec.datatype], non_blocking=True)

    def _outputs_of(self, result: object) -> dict[str, Tensor]:
        if isinstance(result, torch.Tensor):
            values: list[object] = [result]
        elif isinstance(result, tuple | list):
            values = list(result)
        elif isinstance(result, dict):
            missing = [spec.name for spec in self.outputs if spec.name not in result]
            if missing:
                raise ArtifactError(f"the model returned no output named {', '.join(missing)}")
            values = [result[spec.name] for spec in self.outputs]
        else:
            raise ArtifactError(f"the model returned {type(result).__name__}, not tensors")
        if len(values) != len(self.outputs):
            raise ArtifactError(f"the model returned {len(values)} outputs, the manifest lists {len(self.outputs)}")
        arrays: dict[str, Tensor] = {}
        for spec, value in zip(self.outputs, values, strict=True):
            if not isinstance(value, torch.Tensor):
                raise ArtifactError(f"output {spec.name!r} is {type(value).__name__}, not a tensor")
            tensor = value.detach().cpu()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            arrays[spec.name] = tensor.numpy()
        return arrays


def load(
    directory: pathlib.Path, *, expected_sha256: str | None, device: str, variant: str | None = None
) -> LoadedModel:
    """Verify every file of the full model (or of `variant`) against the manifest, load it and run
    one warm-up batch. Raises ArtifactError, listing the variants there are, for a missing variant."""
    started = time.perf_counter()
    full = verify(directory, expected_sha256, variant)
    if not isinstance(full, TensorManifest):
        raise ArtifactError(f"a {full.format} artifact is not a tensor model: the OIP server cannot serve it")
    manifest = full.select(variant)
    _, manifest_sha256 = load_manifest(directory)
    target = select_device(device)
    path = directory / manifest.model_file
    try:
        module = load_module(manifest, path, target)
    except (RuntimeError, ValueError, OSError) as error:
        raise ArtifactError(f"{manifest.model_file} cannot be loaded as {manifest.format}: {error}") from error
    model = LoadedModel(manifest, manifest_sha256, module, target, 0.0)
    _warm_up(model)
    seconds = time.perf_counter() - started
    log.info("model loaded", extra={"format": manifest.format, "device": str(target), "seconds": round(seconds, 3)})
    return dataclasses.replace(model, load_seconds=seconds)


def load_module(manifest: TensorManifest, path: pathlib.Path, device: torch.device) -> Any:
    """The callable model in `path`, as `manifest.format` says: TorchScript, torch.export or ONNX (ONNX Runtime)."""
    if manifest.format == "torchscript":
        module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        module.eval()
        return module
    if manifest.format == "torch.export":
        return torch.export.load(str(path)).module().to(device)
    module = OnnxModule(path, device)
    module.check_names([spec.name for spec in manifest.inputs], [spec.name for spec in manifest.outputs])
    return module


def _warm_up(model: LoadedModel) -> None:
    """One batch of zeros: compiles lazy paths and proves the outputs match the manifest."""
    inputs: dict[str, Tensor] = {}
    for spec in model.inputs:
        if spec.datatype == "BYTES":
            raise ArtifactError(f"input {spec.name!r} is BYTES, which a torch model cannot take")
        shape = [1 if dimension == -1 else dimension for dimension in spec.shape]
        inputs[spec.name] = np.zeros(shape, dtype=datatypes.NUMPY_DTYPES[spec.datatype])
    try:
        outputs = model.predict(inputs)
    except ArtifactError:
        raise
    except Exception as error:
        raise ArtifactError(f"the warm-up inference failed: {error}") from error
    for spec in model.outputs:
        array = outputs[spec.name]
        expected_dtype = datatypes.NUMPY_DTYPES[spec.datatype]
        if array.dtype != expected_dtype:
            raise ArtifactError(f"output {spec.name!r} is {array.dtype}, the manifest says {spec.datatype}")
        if len(array.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        ):
            raise ArtifactError(f"output {spec.name!r} has shape {list(array.shape)}, the manifest says {spec.shape}")
