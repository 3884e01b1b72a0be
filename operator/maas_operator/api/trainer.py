"""The built-in trainer's part of a TrainingJob: which model, on which data, how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from maas_operator.api.common import ApiModel, LocalObjectReference

ModelName = Literal["mlp", "cnn", "transformer"]
DATASET_URI_PATTERN = r"^(sklearn:[a-z_]+|synthetic:[-a-z0-9_?&=.,]+|s3://[^/]+/.+|file:///.+)$"


class DatasetSpec(ApiModel):
    """Training data: a bundled, generated or stored dataset."""

    uri: str = Field(pattern=DATASET_URI_PATTERN)
    """sklearn:digits (ships offline), synthetic:classification?samples=N&features=F&classes=C,
    or a CSV / Parquet file at s3://bucket/key or file:///path."""
    label_column: str | None = None
    """Column holding the label, for CSV and Parquet files."""
    feature_columns: list[str] = Field(default_factory=list)
    """Columns used as features; empty means every column but the label."""
    secret_ref: LocalObjectReference | None = None
    """Secret with AWS_* keys for an s3:// dataset."""


class Hyperparameters(ApiModel):
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    """Samples per step on each worker."""
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    validation_split: float = Field(default=0.2, ge=0, lt=1)
    """Fraction of the data held out to report validation accuracy and loss each epoch."""
    mixed_precision: bool = True
    """bf16 autocast on GPUs; ignored on CPU."""


class ModelOptions(ApiModel):
    hidden_size: int = Field(default=128, ge=1, le=65_536)
    """Width of the MLP's hidden layers, the CNN's dense layer, or the transformer's model dimension."""
    layers: int = Field(default=2, ge=1, le=64)
    """Hidden layers of the MLP, or encoder layers of the transformer."""
    dropout: float = Field(default=0.0, ge=0, lt=1)


class TrainerSpec(ApiModel):
    """The built-in trainer: a model from the catalogue trained with Ray Train's TorchTrainer."""

    model: ModelName
    """mlp (tabular data), cnn (images), or transformer (sequences)."""
    model_options: ModelOptions = Field(default_factory=ModelOptions)
    dataset: DatasetSpec
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
