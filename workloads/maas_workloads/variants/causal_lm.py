"""The weight-only int8 variant of a causal LM: torchao's `Int8WeightOnlyConfig` through transformers'
`TorchAoConfig`, saved as a Hugging Face directory under `variants/int8/` that transformers and
vLLM (`--quantization torchao`) load as it is.

Weights are int8 with one scale per output row; activations stay bfloat16. On CPUs the built-in
engine runs those layers on PyTorch's own weight-only int8 kernel (`aten._weight_int8pack_mm`):
torchao 0.18 dequantizes the whole weight on every call there, slower than float32 (the `kernels`
rates of benchmarks/variants.py), where the kernel reads the int8 weight directly. Perplexity is
measured through the same loader the engine uses, so the number in the manifest is the one served.
"""

from __future__ import annotations

import logging
import math
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from maas_workloads import artifact
from maas_workloads.variants import gate

log = logging.getLogger(__name__)
INT8_QUANTIZATION = "torchao Int8WeightOnlyConfig: int8 weights (one scale per output row), bfloat16 activations"
IGNORE_INDEX = -100
"""The label of a position that is not scored (PyTorch's cross_entropy default, Hugging Face's convention)."""
WEIGHT_FILES = (".safetensors", "config.json", "model.safetensors.index.json")
"""What save_pretrained writes for the quantized model; every other file (tokenizer, chat
template, generation config) is copied from the full model."""


class Int8PackLinear(nn.Module):
    """y = x W^T + b with W int8 (N, K) and one bfloat16 scale per output row (N), on PyTorch's CPU
    kernel for weight-only int8 (`aten._weight_int8pack_mm`). Inputs are cast to bfloat16, outputs
    back to the input's dtype."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        # Fresh copies: the kernel reads with aligned vector loads and crashes the process (SIGSEGV) on a
        # weight that is not 64-byte aligned, as a tensor loaded from safetensors may be, depending on
        # the sizes of the tensors stored before it. PyTorch's CPU allocator aligns to 64 bytes.
        self.register_buffer("qdata", qdata.clone(memory_format=torch.contiguous_format))
        self.register_buffer("scale", scale.reshape(-1).to(torch.bfloat16).clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    qdata: torch.Tensor
    scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.qdata, self.scale)
        if self.bias is not None:
            y = y + self.bias
        result: torch.Tensor = y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)
        return result


def use_int8_kernels(model: nn.Module) -> int:
    """Swap every Linear whose weight is a torchao per-row int8 tensor for `Int8PackLinear`, in
    place (CPU only); returns how many were swapped."""
    from torchao.quantization import Int8Tensor

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weight = getattr(child, "weight", None)
            if not (isinstance(child, nn.Linear) and isinstance(weight, Int8Tensor)):
                continue
            if weight.act_quant_kwargs is not None or weight.block_size[-1] != child.in_features:
                continue  # activation quantization or per-group scales: leave it to torchao
            setattr(parent, name, Int8PackLinear(weight.qdata, weight.scale, child.bias))
            swapped += 1
    return swapped


def load(directory: pathlib.Path, dtype: torch.dtype | None = None) -> Any:
    """The causal LM in `directory` on CPU as the built-in engine runs it (int8 layers on the int8 kernel)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "auto", attn_implementation="sdpa")
    use_int8_kernels(model)
    return model.eval()


def perplexity(model: Any, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None) -> float:
    """exp(mean negative log-likelihood) of the next tokens of `sequences` (token ids, each >= 2 long).

    `labels` (one per sequence, the same length) scores only the positions whose label is not
    IGNORE_INDEX, as the trainer's validation loss does (e.g. a chat's assistant turns); without
    them every next token counts. Raises ValueError when nothing is scored."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for index, sequence in enumerate(sequences):
            ids = torch.tensor([list(sequence)])
            targets = ids if labels is None else torch.tensor([list(labels[index])])
            logits = model(input_ids=ids).logits.float()
            nll = nn.functional.cross_entropy(
                logits[0, :-1], targets[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(nll)
            count += int((targets[0, 1:] != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("perplexity needs at least one sequence of two tokens or more, with a scored next token")
    return math.exp(total / count)


def add_int8_variant(
    directory: pathlib.Path,
    manifest: artifact.CausalLMManifest,
    validation: Sequence[Sequence[int]],
    max_perplexity_ratio: float | None,
    validation_labels: Sequence[Sequence[int]] | None = None,
) -> artifact.CausalLMManifest:
    """Quantize the full model in `directory` to `variants/int8/`, measure both on `validation`
    (token id sequences; `validation_labels` picks the scored tokens, see `perplexity`) and judge
    the int8 variant against `max_perplexity_ratio`.

    Returns the manifest with the variant (or its rejection) and the full model's `val_perplexity`
    added, not yet written. A rejected variant's files are removed.
    """
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    folder = directory / artifact.VARIANTS_DIR / "int8"
    full_perplexity = perplexity(load(directory, torch.float32), validation, validation_labels)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.bfloat16, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
        )
        quantized.save_pretrained(folder)
        for path in directory.iterdir():
            if path.is_file() and not path.name.endswith(WEIGHT_FILES) and path.name != "manifest.json":
                shutil.copy2(path, folder / path.name)
        measured = {"val_perplexity": perplexity(load(folder), validation, validation_labels)}
    except Exception as error:  # the full model is still published
        log.warning("variant int8 could not be made: %s", error)
        outcome = gate.failed("int8", error)
    else:
        outcome = gate.perplexity_outcome("int8", measured, full_perplexity, max_perplexity_ratio)
    metrics = {**manifest.metrics, "val_perplexity": full_perplexity}
    if not outcome.published:
        shutil.rmtree(folder, ignore_errors=True)
        rejected = artifact.RejectedVariant(message=outcome.message, metrics=outcome.metrics)
        return manifest.model_copy(update={"rejected_variants": {"int8": rejected}, "metrics": metrics})
    files = artifact.describe_variant_files(directory, "int8")
    variant = artifact.Variant(
        format=artifact.CAUSAL_LM_FORMAT,
        directory=f"{artifact.VARIANTS_DIR}/int8",
        files=files,
        datatypes=["INT8", "BF16"],
        size_bytes=sum(entry.size for entry in files.values()),
        quantization=INT8_QUANTIZATION,
        metrics=outcome.metrics,
        summary=outcome.message,
    )
    return manifest.model_copy(update={"variants": {"int8": variant}, "metrics": metrics})
