"""The built-in trainer's part of a TrainingJob: which model, on which data, how.

Two tasks: a classifier from the catalogue (`model`: tabular, image or sequence data), or a
causal language model (`causalLM`: fine-tuned or trained from scratch on text or chat data).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import ConfigDict, Field, model_validator

from maas_operator.api.causallm import CausalLMSpec
from maas_operator.api.common import ApiModel, LocalObjectReference
from maas_operator.api.validation import Rule

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
_LM_HYPERPARAMETERS = (
    "gradientAccumulationSteps",
    "lrSchedule",
    "warmupSteps",
    "maxSteps",
    "evalEverySteps",
    "maxGradNorm",
)
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


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _none_set(value: object, fields: tuple[str, ...]) -> bool:
    return all(getattr(value, _snake(name)) is None for name in fields)


_CLASSIFIER_DATA = ("sklearn:", "synthetic:classification")
_LM_DATA = "synthetic:arithmetic"
# Each rule once, as CEL for the API server and as Python for pydantic (validation.Rule).
RULES = [
    Rule(
        "has(self.model) != has(self.causalLM)",
        "set exactly one of model (a classifier) or causalLM (a language model)",
        lambda t: (t.model is None) != (t.causal_lm is None),
    ),
    Rule(
        "has(self.causalLM) || (" + _unset("dataset", _LM_DATASET_FIELDS) + ")",
        "dataset: format, validationUri and streaming apply to causalLM only",
        lambda t: t.causal_lm is not None or _none_set(t.dataset, _LM_DATASET_FIELDS),
        field_path=".dataset",
    ),
    Rule(
        "!has(self.causalLM) || (!has(self.dataset.labelColumn) && "
        "(!has(self.dataset.featureColumns) || size(self.dataset.featureColumns) == 0))",
        "dataset: labelColumn and featureColumns apply to classifiers (model) only",
        lambda t: t.causal_lm is None or (t.dataset.label_column is None and not t.dataset.feature_columns),
        field_path=".dataset",
    ),
    Rule(
        "has(self.causalLM) || !has(self.hyperparameters) || (" + _unset("hyperparameters", _LM_HYPERPARAMETERS) + ")",
        "hyperparameters: " + ", ".join(_LM_HYPERPARAMETERS) + " apply to causalLM only",
        lambda t: t.causal_lm is not None or _none_set(t.hyperparameters, _LM_HYPERPARAMETERS),
        field_path=".hyperparameters",
    ),
    Rule(
        "has(self.causalLM) ? !("
        + " || ".join(f"self.dataset.uri.startsWith('{prefix}')" for prefix in _CLASSIFIER_DATA)
        + f") : !self.dataset.uri.startsWith('{_LM_DATA}')",
        f"dataset.uri: {' and '.join(_CLASSIFIER_DATA)} data train classifiers (model); {_LM_DATA}, JSONL and "
        "text train causal LMs (causalLM)",
        lambda t: not t.dataset.uri.startswith(_CLASSIFIER_DATA if t.causal_lm is not None else (_LM_DATA,)),
        field_path=".dataset.uri",
    ),
    Rule(
        "!has(self.dataset.streaming) || !self.dataset.streaming || "
        "(has(self.hyperparameters) && has(self.hyperparameters.maxSteps))",
        "hyperparameters.maxSteps: a streamed dataset has no known length, so set maxSteps",
        lambda t: not t.dataset.streaming or t.hyperparameters.max_steps is not None,
        field_path=".hyperparameters",
    ),
    Rule(
        "!has(self.hyperparameters) || !has(self.hyperparameters.validationSplit) || "
        "(!has(self.dataset.validationUri) && !(has(self.dataset.streaming) && self.dataset.streaming))",
        "hyperparameters.validationSplit: cannot be combined with dataset.validationUri or streaming",
        lambda t: (
            t.hyperparameters.validation_split is None or (t.dataset.validation_uri is None and not t.dataset.streaming)
        ),
        field_path=".hyperparameters",
    ),
]


class TrainerSpec(ApiModel):
    """The built-in trainer, on Ray Train: a classifier from the catalogue, or a causal language model."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [rule.schema() for rule in RULES]})

    model: ModelName | None = None
    """A classifier: mlp (tabular data), cnn (images), or transformer (sequences)."""
    model_options: ModelOptions = Field(default_factory=ModelOptions)
    causal_lm: CausalLMSpec | None = Field(default=None, alias="causalLM")
    """A causal language model instead of a classifier."""
    dataset: DatasetSpec
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @model_validator(mode="after")
    def _rules(self) -> TrainerSpec:
        for rule in RULES:
            rule.enforce(self)
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
