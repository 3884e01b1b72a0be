"""Publish a causal language model (or a LoRA adapter) as an artifact in artifact.py's format.

The trainer calls these after fine-tuning, tests call them on tiny random models: both get a
Hugging Face directory that transformers and vLLM load as it is, plus `manifest.json` written
last with the sha256 of every file.
"""

from __future__ import annotations

import json
import pathlib
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Protocol

from maas_workloads import artifact

# transformers 5 names fast tokenizers `TokenizersBackend`, which transformers 4 (what vLLM
# images pin) cannot resolve; both load the same tokenizer.json under the older name.
_PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class SavablePretrained(Protocol):
    """What `save_pretrained` gives us: transformers models, tokenizers and PEFT models."""

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any: ...


class ChatTokenizer(SavablePretrained, Protocol):
    chat_template: Any


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for distribution in ("torch", "transformers", "tokenizers", "peft", "maas-operator"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def save_causal_lm(
    model: SavablePretrained,
    tokenizer: ChatTokenizer,
    directory: pathlib.Path,
    *,
    source: artifact.Source | None = None,
    metrics: dict[str, float] | None = None,
    variants: Sequence[artifact.VariantName] = (),
    validation: Sequence[Sequence[int]] | None = None,
    max_perplexity_ratio: float | None = None,
    validation_labels: Sequence[Sequence[int]] | None = None,
) -> tuple[artifact.CausalLMManifest, str]:
    """Write `model` (safetensors + config.json + generation_config.json) and `tokenizer` (with
    its chat template) into `directory`, the requested variants (causal LMs: `int8`, measured on
    `validation` token id sequences, scoring the tokens `validation_labels` keeps, see
    variants.causal_lm.perplexity), then manifest.json last.

    Returns the manifest and its sha256 (what `status.model.sha256` pins). Raises ValueError
    when the tokenizer has no chat template (the OpenAI chat API needs one), or for variants other
    than int8 or without validation data, and ArtifactError when a file the format needs was not written.
    """
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat_template; set one so /v1/chat/completions can render messages")
    unsupported = [name for name in variants if name != "int8"]
    if unsupported:
        raise ValueError(f"output.variants: causal LMs publish int8 only, not {', '.join(unsupported)}")
    if variants and not validation:
        raise ValueError("output.variants needs validation data to measure perplexity on")
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    _portable_tokenizer_config(directory / "tokenizer_config.json")
    manifest = causal_lm_manifest(directory, source=source, metrics=metrics)
    if variants and validation:
        from maas_workloads.variants.causal_lm import add_int8_variant

        manifest = add_int8_variant(directory, manifest, validation, max_perplexity_ratio, validation_labels)
    digest = artifact.write_manifest(directory, manifest)
    for name in (None, *manifest.variants):
        artifact.verify(directory, digest, name)
    return manifest, digest


def causal_lm_manifest(
    directory: pathlib.Path,
    *,
    source: artifact.Source | None = None,
    metrics: dict[str, float] | None = None,
) -> artifact.CausalLMManifest:
    """The manifest of a Hugging Face causal-LM directory already on disk (e.g. written by
    `save_pretrained`): architecture and context length from config.json (`model_type`,
    `max_position_embeddings`), the parameter count from the safetensors headers."""
    config = json.loads((directory / "config.json").read_text())
    text_config = config.get("text_config", config)
    context_length = text_config.get("max_position_embeddings")
    if not isinstance(context_length, int):
        raise artifact.ArtifactError("config.json has no max_position_embeddings: the context length is unknown")
    return artifact.CausalLMManifest(
        format=artifact.CAUSAL_LM_FORMAT,
        architecture=str(config.get("model_type", "unknown")),
        context_length=context_length,
        parameters=_parameter_count(directory),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        files=artifact.describe_files(directory),
        source=source or artifact.Source(),
        metrics=metrics or {},
        framework_versions=_versions(),
        created_at=_now(),
    )


def save_lora_adapter(
    model: SavablePretrained,
    directory: pathlib.Path,
    *,
    base_model: artifact.BaseModelReference,
    context_length: int,
    source: artifact.Source | None = None,
    metrics: dict[str, float] | None = None,
) -> tuple[artifact.AdapterManifest, str]:
    """Write a PEFT LoRA model's adapter (adapter_config.json + adapter_model.safetensors) and
    manifest.json last, naming the base artifact it applies to. Returns the manifest and its sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    config = json.loads((directory / "adapter_config.json").read_text())
    targets = config.get("target_modules") or []
    manifest = artifact.AdapterManifest(
        format=artifact.LORA_ADAPTER_FORMAT,
        base_model=base_model,
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
        context_length=context_length,
        files=artifact.describe_files(directory),
        source=source or artifact.Source(),
        metrics=metrics or {},
        framework_versions=_versions(),
        created_at=_now(),
    )
    return manifest, artifact.write_manifest(directory, manifest)


def _portable_tokenizer_config(path: pathlib.Path) -> None:
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = _PORTABLE_TOKENIZER_CLASS
        path.write_text(json.dumps(config, indent=2))


def _parameter_count(directory: pathlib.Path) -> int | None:
    from safetensors import safe_open

    total = 0
    files = sorted(directory.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                count = 1
                for dimension in handle.get_slice(name).get_shape():
                    count *= dimension
                total += count
    return total if files else None


def merge_lora_adapter(
    adapter_dir: pathlib.Path, base_dir: pathlib.Path, destination: pathlib.Path
) -> tuple[artifact.CausalLMManifest, str]:
    """Apply a verified LoRA adapter artifact to its verified base artifact and publish the merged
    causal LM (PEFT's merge_and_unload) at `destination`, so any engine serves it as a plain model.

    The merged manifest names the adapter's producer as its source. Returns it and its sha256;
    raises ArtifactError when either directory is not the expected format.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, _ = artifact.load_manifest(adapter_dir)
    base, base_sha256 = artifact.load_manifest(base_dir)
    if not isinstance(adapter, artifact.AdapterManifest) or not isinstance(base, artifact.CausalLMManifest):
        raise artifact.ArtifactError("merging needs a peft-lora adapter and an hf-causal-lm base")
    if base_sha256 != adapter.base_model.sha256:
        raise artifact.ArtifactError(
            f"the adapter applies to the base model with manifest sha256 {adapter.base_model.sha256}, "
            f"not to {base_sha256}"
        )
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    return save_causal_lm(merged, tokenizer, destination, source=adapter.source, metrics=adapter.metrics)
