"""The built-in trainer's causal-language-model task: which model, how it is trained and sharded.

Static rules are stated once (`RULES`), applied by the API server (CEL) and by pydantic in the
operator and the pods; what needs the model's files (its tokenizer, context length, module
names) is checked by the TrainingJob's head before any worker starts (exit 64).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import ConfigDict, Field, model_validator

from maas_operator.api.common import MODEL_URI_PATTERN, SHA256_PATTERN, ApiModel, LocalObjectReference
from maas_operator.api.validation import Rule

Method = Literal["full", "lora", "qlora"]
Parallelism = Literal["ddp", "fsdp"]
ModelType = Literal["llama", "qwen2"]
Size = Literal["tiny", "small"]

SIZE_CONTEXT_LENGTH: Final[dict[str, int]] = {"tiny": 512, "small": 2048}
"""Context length (max_position_embeddings) of each from-scratch size."""
DEFAULT_SEQUENCE_LENGTH: Final = 512


class BaseModelSpec(ApiModel):
    """A pretrained causal LM to fine-tune: a Hugging Face model directory."""

    uri: str = Field(pattern=MODEL_URI_PATTERN)
    """s3://bucket/prefix or https://host/path (an artifact with manifest.json, as this operator
    publishes them), or file:///path or pvc://<claim>/<path> (also a plain Hugging Face directory)."""
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    """Pin: refuse the base model unless its manifest.json has this sha256."""
    secret_ref: LocalObjectReference | None = None
    """Secret with AWS_* keys for an s3:// base model."""


class ArchitectureSpec(ApiModel):
    """A model trained from scratch, with a tokenizer trained on the dataset (small models, demos, tests)."""

    model_type: ModelType = "llama"
    """The Hugging Face architecture (config.json's model_type)."""
    size: Size = "tiny"
    """tiny (~0.5M parameters, context 512) or small (~30M parameters, context 2048)."""
    vocab_size: int | None = Field(default=None, ge=300, le=262_144)
    """Vocabulary of the byte-level BPE tokenizer trained on the data (default 512 tiny, 8192 small)."""


class LoraSpec(ApiModel):
    """Low-rank adapters (PEFT's LoraConfig): r, lora_alpha, lora_dropout, target_modules."""

    rank: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1, le=65_536)
    """Scaling numerator: the update is multiplied by alpha / rank."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=list)
    """Module names to adapt, e.g. [q_proj, v_proj], or [all-linear]; empty means PEFT's
    default for the architecture. An unknown name fails the job at once (exit 64)."""


def _size_context(cel_size: str) -> str:
    return f"({cel_size} == 'small' ? {SIZE_CONTEXT_LENGTH['small']} : {SIZE_CONTEXT_LENGTH['tiny']})"


# Each rule once, as CEL for the API server and as Python for pydantic (validation.Rule).
RULES = [
    Rule(
        "has(self.baseModel) != has(self.architecture)",
        "set exactly one of baseModel (fine-tune) or architecture (train from scratch)",
        lambda lm: (lm.base_model is None) != (lm.architecture is None),
    ),
    Rule(
        "!has(self.method) || self.method == 'full' || has(self.baseModel)",
        "method: lora and qlora train an adapter on a baseModel; train an architecture with method full",
        lambda lm: lm.method == "full" or lm.base_model is not None,
        field_path=".method",
    ),
    Rule(
        "!has(self.method) || self.method != 'qlora' || (has(self.parallelism) && self.parallelism == 'ddp')",
        "parallelism: qlora needs ddp, as FSDP does not shard bitsandbytes' 4-bit weights",
        lambda lm: lm.method != "qlora" or lm.parallelism == "ddp",
        field_path=".parallelism",
    ),
    Rule(
        "!has(self.mergeAdapter) || self.mergeAdapter || (has(self.method) && self.method != 'full')",
        "mergeAdapter: applies to method lora and qlora only",
        lambda lm: lm.merge_adapter or lm.method != "full",
        field_path=".mergeAdapter",
    ),
    Rule(
        "!has(self.architecture) || !has(self.sequenceLength) || self.sequenceLength <= "
        + _size_context("(has(self.architecture.size) ? self.architecture.size : 'tiny')"),
        "sequenceLength: must not exceed the architecture's context length "
        f"(tiny {SIZE_CONTEXT_LENGTH['tiny']}, small {SIZE_CONTEXT_LENGTH['small']})",
        lambda lm: lm.architecture is None or lm.sequence_length <= SIZE_CONTEXT_LENGTH[lm.architecture.size],
        field_path=".sequenceLength",
    ),
]


class CausalLMSpec(ApiModel):
    """Train a causal language model: fine-tune baseModel, or train architecture from scratch."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [rule.schema() for rule in RULES]})

    base_model: BaseModelSpec | None = None
    """The pretrained model to fine-tune."""
    architecture: ArchitectureSpec | None = None
    """A new model to train from scratch, instead of baseModel."""
    method: Method = "full"
    """full (every weight), lora (adapters on a frozen base), or qlora (adapters on a 4-bit base; GPU only)."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """Adapter settings for method lora and qlora."""
    merge_adapter: bool = True
    """For lora and qlora: also publish the base model with the adapter merged in, and serve that."""
    parallelism: Parallelism = "fsdp"
    """fsdp (PyTorch FSDP2: parameters, gradients and optimizer state sharded, one shard group per
    decoder layer) or ddp (a full replica per worker)."""
    sequence_length: int = Field(default=DEFAULT_SEQUENCE_LENGTH, ge=8, le=131_072)
    """Tokens per training sequence; at most the model's context length."""
    packing: bool = True
    """Concatenate examples into full sequences (no padding); false pads each example to the
    longest of its batch and truncates examples longer than sequenceLength."""
    loss_on: Literal["assistant", "all"] = "assistant"
    """For chat data: learn only the assistant's tokens (default), or every token."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""

    @model_validator(mode="after")
    def _rules(self) -> CausalLMSpec:
        for rule in RULES:
            rule.enforce(self)
        return self
