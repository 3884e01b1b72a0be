"""Variants of a tensor model: int8 (dynamic quantization of Linear layers), fp16, bf16 (a cast) and
ONNX (PyTorch's dynamo exporter, run by ONNX Runtime), each written under `variants/<name>/`.

Every variant keeps the full model's interface (FP32 inputs and outputs, the same names), so a
client does not change when a ModelService switches variant. Each is measured by loading its file
with the server's own loader (`serve.model.load_module`) and classifying the validation split, as
is the full model's TorchScript file in the same call: the accuracies compared are those served.
"""

from __future__ import annotations

import copy
import logging
import math
import pathlib
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from maas_workloads import artifact
from maas_workloads.variants import gate

log = logging.getLogger(__name__)
EVAL_BATCH = 256
"""Validation rows per forward pass when measuring a variant."""
INT8_QUANTIZATION = "torch.ao.quantization.quantize_dynamic(Linear, qint8): int8 weights, activations per batch"
"""torch.ao's eager dynamic quantization is deprecated in favour of torchao, but on x86 CPUs it
runs on fbgemm's int8 kernels: several times the float32 rate of the heavy MLP, where torchao
0.18's Int8DynamicActivationInt8WeightConfig ran below float32 and cannot be traced to
TorchScript (the `kernels` rates of benchmarks/variants.py, in the README)."""


@dataclass(frozen=True)
class Validation:
    """The job's held-out rows: features (N, F) float32 and class indices (N,)."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]


class _Cast(nn.Module):
    """Runs `module` (already cast to `dtype`) on inputs cast to `dtype`; returns float32, as the full model."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Written:
    format: artifact.TensorFormat
    model_file: str
    datatypes: list[artifact.Datatype]
    quantization: str | None


def _trace(module: nn.Module, example: torch.Tensor, path: pathlib.Path) -> None:
    with torch.no_grad():
        program = torch.jit.trace(module, example, check_trace=False)  # type: ignore[no-untyped-call]
    program.save(str(path))


def quantizable_linears(module: nn.Module) -> set[str]:
    """Names of the Linear layers dynamic quantization can replace: all but those of PyTorch's
    Transformer layers, whose forward reads `linear.weight` as a tensor (a quantized Linear's
    `weight` is a method) and whose attention projections are not quantizable Linear modules."""
    skipped = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
    inside = {f"{name}.{child}" for name, owner in module.named_modules() if isinstance(owner, skipped)
              for child, _ in owner.named_children()}  # fmt: skip
    return {name for name, layer in module.named_modules() if isinstance(layer, nn.Linear) and name not in inside}


def _int8(module: nn.Module, example: torch.Tensor, folder: pathlib.Path, names: tuple[str, str]) -> _Written:
    layers = quantizable_linears(module)
    if not layers:
        raise ValueError("the model has no Linear layer dynamic int8 quantization can replace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see INT8_QUANTIZATION for why this API
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)  # the same deprecation
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(module), {name: torch.ao.quantization.default_dynamic_qconfig for name in layers}
        )
        _trace(quantized, example, folder / "model.pt")
    return _Written("torchscript", "model.pt", ["INT8", "FP32"], INT8_QUANTIZATION)


def _half(dtype: torch.dtype, datatype: artifact.Datatype) -> Callable[..., _Written]:
    def write(module: nn.Module, example: torch.Tensor, folder: pathlib.Path, names: tuple[str, str]) -> _Written:
        _trace(_Cast(copy.deepcopy(module).to(dtype), dtype).eval(), example, folder / "model.pt")
        return _Written("torchscript", "model.pt", [datatype], f"weights and activations cast to {dtype}")

    return write


def _onnx(module: nn.Module, example: torch.Tensor, folder: pathlib.Path, names: tuple[str, str]) -> _Written:
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(folder / "model.onnx"))
    return _Written("onnx", "model.onnx", ["FP32"], None)


CONVERTERS: dict[str, Callable[[nn.Module, torch.Tensor, pathlib.Path, tuple[str, str]], _Written]] = {
    "int8": _int8,
    "fp16": _half(torch.float16, "FP16"),
    "bf16": _half(torch.bfloat16, "BF16"),
    "onnx": _onnx,
}


def logits_of(manifest: artifact.TensorManifest, path: pathlib.Path, validation: Validation) -> npt.NDArray[np.float32]:
    """The model file's outputs on every validation row, through the server's loader: (N, classes)."""
    from maas_workloads.serve.model import load_module

    module = load_module(manifest, path, torch.device("cpu"))
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(validation.labels), EVAL_BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(validation.features[start : start + EVAL_BATCH]))
            result = module(batch)
            tensor = result[0] if isinstance(result, tuple | list) else result
            outputs.append(tensor.float().numpy())
    return np.concatenate(outputs)


def accuracy(logits: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    """Share of rows whose largest logit is the label's (0..1)."""
    return float((logits.argmax(axis=1) == labels).mean())


def add_variants(
    directory: pathlib.Path,
    manifest: artifact.TensorManifest,
    module: nn.Module,
    example: torch.Tensor,
    requested: Sequence[artifact.VariantName],
    validation: Validation,
    max_accuracy_drop: float | None,
) -> artifact.TensorManifest:
    """Convert, measure and judge each requested variant of the full model already in `directory`.

    Returns the manifest with `variants` (and `rejectedVariants`) filled in, not yet written. A
    rejected variant's files are removed. The full model's
    `val_accuracy` in the returned metrics is the one measured here, next to the variants'.
    """
    full_logits = logits_of(manifest, directory / manifest.model_file, validation)
    full_accuracy = accuracy(full_logits, validation.labels)
    names = (manifest.inputs[0].name, manifest.outputs[0].name)
    variants: dict[artifact.VariantName, artifact.Variant] = {}
    rejected: dict[artifact.VariantName, artifact.RejectedVariant] = {}
    for name in requested:
        folder = directory / artifact.VARIANTS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            written = CONVERTERS[name](module, example, folder, names)
            view = manifest.model_copy(update={"format": written.format, "model_file": written.model_file})
            logits = logits_of(view, folder / written.model_file, validation)
        except Exception as error:  # any conversion failure: the full model is still published
            log.warning("variant %s could not be made: %s", name, error)
            outcome = gate.failed(name, error)
        else:
            measured = {"val_accuracy": accuracy(logits, validation.labels)}
            difference = float(np.abs(logits - full_logits).max())
            if math.isfinite(difference):  # an overflowing variant answers inf or NaN: its accuracy says so
                measured["max_abs_logit_diff"] = difference
            outcome = gate.accuracy_outcome(name, measured, full_accuracy, max_accuracy_drop)
        if not outcome.published:
            shutil.rmtree(folder)
            rejected[name] = artifact.RejectedVariant(message=outcome.message, metrics=outcome.metrics)
            continue
        files = artifact.describe_variant_files(directory, name)
        variants[name] = artifact.Variant(
            format=written.format,
            model_file=f"{artifact.VARIANTS_DIR}/{name}/{written.model_file}",
            files=files,
            datatypes=written.datatypes,
            size_bytes=sum(entry.size for entry in files.values()),
            quantization=written.quantization,
            metrics=outcome.metrics,
            summary=outcome.message,
        )
    metrics = {**manifest.metrics, "val_accuracy": full_accuracy}
    return manifest.model_copy(update={"variants": variants, "rejected_variants": rejected, "metrics": metrics})
