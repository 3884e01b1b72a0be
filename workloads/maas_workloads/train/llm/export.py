"""Publish a trained causal LM as artifacts (artifact.py's `hf-causal-lm` and `peft-lora` formats).

What the output URI holds is always what a ModelService serves (`status.model.uri`):
- method full: the model, a Hugging Face directory;
- lora / qlora: the base model with the adapter merged in, and in `adapter/` below it the adapter
  alone (its own manifest names the base model by URI and manifest sha256; reported as
  `status.model.adapter`); with `mergeAdapter: false`, the adapter itself.
The merged model's manifest lists only its own files. The `output.variants` (weight-only int8)
are of the model served: from scratch, the model; with LoRA, the merged one (a job publishing the
adapter alone has none: the API refuses it). Everything appears at once: the directory is
published with the top manifest last.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maas_operator.api.trainer import TrainerSpec
from maas_workloads import artifact
from maas_workloads.causal_lm import save_causal_lm, save_lora_adapter
from maas_workloads.train import publish, sdk
from maas_workloads.train.llm import modeling
from maas_workloads.train.llm.base import BaseModel
from maas_workloads.train.llm.encoding import TokenBlocks, pad_token_id
from maas_workloads.train.llm.tokenizer import stop_token_ids
from maas_workloads.train.publish import ADAPTER_DIRECTORY


@dataclass(frozen=True)
class VariantRequest:
    """The job's `output.variants` of the published causal LM, and what they are measured and judged on."""

    names: Sequence[artifact.VariantName]
    validation: TokenBlocks | None
    """The validation blocks; perplexity scores the tokens the trainer's validation loss does."""
    max_perplexity_ratio: float | None
    """`output.maxAccuracyDrop`: for causal LMs, a ratio of perplexities (variants.gate)."""


def write_causal_lm(
    directory: pathlib.Path,
    model: Any,
    tokenizer: Any,
    *,
    source: artifact.Source,
    metrics: dict[str, float],
    variants: VariantRequest | None = None,
) -> str:
    """The model and tokenizer as a Hugging Face directory plus manifest (causal_lm.save_causal_lm, the
    format the server loads), generation stopping where training taught the model to, with the
    requested `variants` of it; its sha256.

    Raises ValueError when variants are requested without validation blocks to measure them on
    (prepare.prepare refuses such a job before training)."""
    generation = model.generation_config
    known = generation.eos_token_id
    known = [] if known is None else [known] if isinstance(known, int) else list(known)
    # Chat turns end with the template's end-of-turn token, which a from-scratch config does not name.
    generation.eos_token_id = list(dict.fromkeys([*known, *stop_token_ids(tokenizer)]))
    if generation.pad_token_id is None:
        generation.pad_token_id = pad_token_id(tokenizer)
    sequences: list[list[int]] | None = None
    labels: list[list[int]] | None = None
    if variants is not None and variants.names and variants.validation is not None:
        blocks = variants.validation
        sequences = [row[:length].tolist() for row, length in zip(blocks.input_ids, blocks.lengths, strict=True)]
        labels = [row[:length].tolist() for row, length in zip(blocks.labels, blocks.lengths, strict=True)]
    _, digest = save_causal_lm(
        model,
        tokenizer,
        directory,
        source=source,
        metrics=metrics,
        variants=variants.names if variants is not None else (),
        validation=sequences,
        max_perplexity_ratio=variants.max_perplexity_ratio if variants is not None else None,
        validation_labels=labels,
    )
    artifact.verify(directory, digest)
    return digest


def _with_weights(config: Any, weights: dict[str, Any]) -> nn.Module:
    """The model of `config` holding `weights` (a full state dict), built without a second copy."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise RuntimeError(f"the gathered weights lack {', '.join(missing[:5])}")
    return model  # type: ignore[no-any-return]


def _adapted(spec: TrainerSpec, base: BaseModel, weights: dict[str, Any]) -> Any:
    """The base model on CPU with the trained adapter weights in place."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    assert spec.causal_lm is not None
    model = AutoModelForCausalLM.from_pretrained(base.directory, dtype=torch.float32)
    adapted = get_peft_model(model, modeling.lora_config(spec.causal_lm.lora))
    result = adapted.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"the gathered adapter has weights the model lacks: {result.unexpected_keys[:5]}")
    return adapted


def publish_from_worker(
    spec: TrainerSpec,
    files: pathlib.Path,
    weights: dict[str, Any],
    metrics: dict[str, float],
    base: BaseModel | None,
    validation: TokenBlocks | None,
) -> None:
    """Rank 0, after training: write the artifact(s) for the gathered `weights` and publish them at
    the job's output URI. `files` holds the tokenizer (and, from scratch, config.json); the
    `output.variants` are of the model served (with LoRA, the merged one), measured on `validation`."""
    from transformers import AutoConfig, AutoTokenizer

    lm = spec.causal_lm
    assert lm is not None
    context = sdk.job_context()
    source = artifact.Source(namespace=context.namespace, name=context.name, uid=context.uid, attempt=context.attempt)
    tokenizer = AutoTokenizer.from_pretrained(files)
    output = context.spec.output
    variants = VariantRequest(output.variants, validation, output.max_accuracy_drop)
    with tempfile.TemporaryDirectory(prefix="maas-artifact-") as scratch_name:
        scratch = pathlib.Path(scratch_name)
        root = scratch / "artifact"
        if lm.method == "full":
            config = AutoConfig.from_pretrained(base.directory if base else files)
            model = _with_weights(config, weights)
            model = model.to(config.dtype or torch.float32)
            write_causal_lm(root, model, tokenizer, source=source, metrics=metrics, variants=variants)
        else:
            assert base is not None
            adapted = _adapted(spec, base, weights)
            dtype = adapted.base_model.model.config.dtype or torch.float32
            context_length = modeling.context_length(adapted.base_model.model.config) or lm.sequence_length
            adapter = scratch / ADAPTER_DIRECTORY
            adapted.peft_config["default"].base_model_name_or_path = base.uri
            if base.manifest_sha256 is not None:
                reference = artifact.BaseModelReference(uri=base.uri, sha256=base.manifest_sha256)
                save_lora_adapter(
                    adapted,
                    adapter,
                    base_model=reference,
                    context_length=context_length,
                    source=source,
                    metrics=metrics,
                )
            else:
                # A plain Hugging Face base has no manifest to pin: the adapter goes along as PEFT files only.
                adapted.save_pretrained(adapter, save_embedding_layers=False)
            if lm.merge_adapter:
                merged = adapted.merge_and_unload()
                write_causal_lm(root, merged.to(dtype), tokenizer, source=source, metrics=metrics, variants=variants)
                shutil.copytree(adapter, root / ADAPTER_DIRECTORY)
            else:
                root = adapter
        publish.publish(root, context.output_uri)
