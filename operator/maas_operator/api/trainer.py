"""The built-in trainer's part of a TrainingJob: which model, on which data, how.

Two tasks: a classifier from the catalogue (`model`: tabular, image or sequence data), or a
causal language model (`causalLM`: fine-tuned or trained from scratch on text or chat data).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import ConfigDict, Field, model_validator

from maas_operator.api.causallm import CausalLMSpec
from maas_operator.api.common import ApiModel, LocalObjectReference, cel

ModelName = Literal["mlp", "cnn", "transformer"]
_STORED = r"s3://[^/]+/.+|file:///.+|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+"
DATASET_URI_PATTERN = rf"^(sklearn:[a-z_]+|synthetic:[-a-z0-9_?&=.,]+|{_STORED})$"
VALIDATION_URI_PATTERN = rf"^({_STORED})$"
DatasetFormat = Literal["text", "chat", "plain"]

DEFAULT_VALIDATION_SPLIT: Final = 0.2
DEFAULT_LM_VALIDATION_SPLIT: Final = 0.05
DEFAULT_GRADIENT_ACCUMULATION_STEPS: Final = 1
DEFAULT_LR_SCHEDULE: Final = "cosine"
DEFAULT_WARMUP_STEPS: Final = 0
DEFAULT_MAX_GRAD_NORM: Final = 1.0
_LM_HYPERPARAMETERS = ("gradientAccumulationSteps", "lrSchedule", "warmupSteps", "maxSteps", "evalEverySteps")
_LM_DATASET_FIELDS = ("format", "validationUri", "streaming")


class DatasetSpec(ApiModel):
    """Training data: a bundled, generated or stored dataset."""

    uri: str = Field(pattern=DATASET_URI_PATTERN)
    """Classifiers: sklearn:digits (ships offline), synthetic:classification?samples=N&features=F&classes=C,
    or a CSV / Parquet file. Causal LMs: synthetic:arithmetic?samples=N (chat-formatted sums), or a
    JSONL / text file, or a directory of them. Stored data is at s3://bucket/key, file:///path or
    pvc://<claim>/<path>."""
    label_column: str | None = None
    """Column holding the label, for CSV and Parquet files (classifiers)."""
    feature_columns: list[str] = Field(default_factory=list)
    """Columns used as features; empty means every column but the label (classifiers)."""
    format: DatasetFormat | None = None
    """Causal LMs: text (JSONL with a `text` field), chat (JSONL with `messages`: role/content
    objects, rendered with the tokenizer's chat template), or plain (text files, every line).
    Default: plain for .txt files, else text or chat from the first record."""
    validation_uri: str | None = Field(default=None, pattern=VALIDATION_URI_PATTERN)
    """Causal LMs: held-out data in the same format, instead of hyperparameters.validationSplit."""
    streaming: bool | None = None
    """Causal LMs: read, tokenize and pack the data in Ray Data tasks on the worker nodes,
    streamed to the workers, instead of loading it whole first (for data larger than memory;
    needs hyperparameters.maxSteps; the resumed order within an epoch is approximate)."""
    secret_ref: LocalObjectReference | None = None
    """Secret with AWS_* keys for s3:// data."""


class Hyperparameters(ApiModel):
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    """Samples (for causal LMs: sequences) per step on each worker, per gradient accumulation step."""
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    validation_split: float | None = Field(default=None, ge=0, lt=1)
    """Fraction of the data held out for validation loss (and accuracy or perplexity) each epoch;
    default 0.2 for classifiers, 0.05 for causal LMs (none when streaming)."""
    mixed_precision: bool = True
    """bf16 on GPUs; ignored on CPU."""
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=4096)
    """Causal LMs: micro-batches summed into one optimizer step (default 1)."""
    lr_schedule: Literal["constant", "linear", "cosine"] | None = None
    """Causal LMs: learning-rate decay after warm-up (default cosine, to zero at the last step)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Causal LMs: optimizer steps of linear warm-up from zero (default 0)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Causal LMs: stop after this many optimizer steps, even within an epoch (needed when streaming)."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Causal LMs: also evaluate every N optimizer steps, not only at each epoch's end."""
    max_grad_norm: float | None = Field(default=None, gt=0)
    """Causal LMs: clip the gradients' global norm to this (default 1.0)."""


class ModelOptions(ApiModel):
    hidden_size: int = Field(default=128, ge=1, le=65_536)
    """Width of the MLP's hidden layers, the CNN's dense layer, or the transformer's model dimension."""
    layers: int = Field(default=2, ge=1, le=64)
    """Hidden layers of the MLP, or encoder layers of the transformer."""
    dropout: float = Field(default=0.0, ge=0, lt=1)


def _unset(owner: str, fields: tuple[str, ...]) -> str:
    return " && ".join(f"!has(self.{owner}.{name})" for name in fields)


class TrainerSpec(ApiModel):
    """The built-in trainer, on Ray Train: a classifier from the catalogue, or a causal language model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.model) != has(self.causalLM)",
                    "set exactly one of model (a classifier) or causalLM (a language model)",
                ),
                cel(
                    "has(self.causalLM) || (" + _unset("dataset", _LM_DATASET_FIELDS) + ")",
                    "dataset format, validationUri and streaming apply to causalLM only",
                    fieldPath=".dataset",
                ),
                cel(
                    "!has(self.causalLM) || (!has(self.dataset.labelColumn) && "
                    "(!has(self.dataset.featureColumns) || size(self.dataset.featureColumns) == 0))",
                    "dataset labelColumn and featureColumns apply to classifiers (model) only",
                    fieldPath=".dataset",
                ),
                cel(
                    "has(self.causalLM) || !has(self.hyperparameters) || ("
                    + _unset("hyperparameters", _LM_HYPERPARAMETERS)
                    + " && !has(self.hyperparameters.maxGradNorm))",
                    "hyperparameters " + ", ".join(_LM_HYPERPARAMETERS) + " and maxGradNorm apply to causalLM only",
                    fieldPath=".hyperparameters",
                ),
                cel(
                    "has(self.causalLM) ? !(self.dataset.uri.startsWith('sklearn:') || "
                    "self.dataset.uri.startsWith('synthetic:classification')) "
                    ": !self.dataset.uri.startsWith('synthetic:arithmetic')",
                    "sklearn: and synthetic:classification data train classifiers; synthetic:arithmetic, "
                    "JSONL and text train causal LMs",
                    fieldPath=".dataset.uri",
                ),
                cel(
                    "!has(self.dataset.streaming) || !self.dataset.streaming || "
                    "(has(self.hyperparameters) && has(self.hyperparameters.maxSteps))",
                    "a streamed dataset has no known length: set hyperparameters.maxSteps",
                    fieldPath=".hyperparameters",
                ),
                cel(
                    "!has(self.hyperparameters) || !has(self.hyperparameters.validationSplit) || "
                    "(!has(self.dataset.validationUri) && !(has(self.dataset.streaming) && self.dataset.streaming))",
                    "validationSplit cannot be combined with dataset.validationUri or streaming",
                    fieldPath=".hyperparameters.validationSplit",
                ),
            ]
        }
    )

    model: ModelName | None = None
    """A classifier: mlp (tabular data), cnn (images), or transformer (sequences)."""
    model_options: ModelOptions = Field(default_factory=ModelOptions)
    causal_lm: CausalLMSpec | None = Field(default=None, alias="causalLM")
    """A causal language model instead of a classifier."""
    dataset: DatasetSpec
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @model_validator(mode="after")
    def _consistent(self) -> TrainerSpec:
        """The same rules as the CEL above, with the field named in the error."""
        data, hp = self.dataset, self.hyperparameters
        if (self.model is None) == (self.causal_lm is None):
            raise ValueError("set exactly one of model (a classifier) or causalLM (a language model)")
        if self.causal_lm is None:
            lm_only = [name for name in _LM_DATASET_FIELDS if getattr(data, _snake(name)) is not None]
            if lm_only:
                raise ValueError(f"dataset.{lm_only[0]} applies to causalLM only")
            knobs = [name for name in (*_LM_HYPERPARAMETERS, "maxGradNorm") if getattr(hp, _snake(name)) is not None]
            if knobs:
                raise ValueError(f"hyperparameters.{knobs[0]} applies to causalLM only")
            if data.uri.startswith("synthetic:arithmetic"):
                raise ValueError("dataset.uri: synthetic:arithmetic trains causal LMs (set causalLM)")
        else:
            if data.label_column is not None or data.feature_columns:
                raise ValueError("dataset labelColumn and featureColumns apply to classifiers (model) only")
            if data.uri.startswith(("sklearn", "synthetic:classification")):
                raise ValueError(f"dataset.uri: {data.uri.split('?')[0]} trains classifiers, not causalLM")
        if data.streaming and hp.max_steps is None:
            raise ValueError("a streamed dataset has no known length: set hyperparameters.maxSteps")
        if hp.validation_split is not None and (data.validation_uri is not None or data.streaming):
            raise ValueError(
                "hyperparameters.validationSplit cannot be combined with dataset.validationUri or streaming"
            )
        return self

    @property
    def validation_split(self) -> float:
        """The effective held-out fraction (see Hyperparameters.validation_split)."""
        hp, data = self.hyperparameters, self.dataset
        if hp.validation_split is not None:
            return hp.validation_split
        if self.causal_lm is None:
            return DEFAULT_VALIDATION_SPLIT
        return 0.0 if data.validation_uri is not None or data.streaming else DEFAULT_LM_VALIDATION_SPLIT


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
