"""Training data for the built-in trainer: scikit-learn's bundled sets, generated data, CSV or Parquet files.

Everything is loaded once, on the head, validated there (so a missing column is a configuration
error before any worker starts), and handed to the workers through Ray's object store.
"""

from __future__ import annotations

import io
import math
import pathlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlparse

import numpy as np
import numpy.typing as npt

from maas_operator.api.trainer import DatasetSpec
from maas_workloads import storage
from maas_workloads.train.errors import ConfigurationError, InfrastructureError

SKLEARN_SETS = ("digits", "iris", "wine", "breast_cancer")
SYNTHETIC_LIMITS = {"samples": 10_000_000, "features": 100_000, "classes": 10_000}


@dataclass(frozen=True)
class Dataset:
    """Features as float32, one row per sample; labels as class indices 0..C-1."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    label_names: list[str]
    feature_names: list[str]
    image_shape: tuple[int, int, int] | None = None
    """(channels, height, width) when each row is an image, flattened."""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def split(self, validation_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
        """A shuffled train/validation split (the same for every worker, given the seed)."""
        order = np.random.default_rng(seed).permutation(len(self.labels))
        held_out = math.floor(len(order) * validation_fraction)
        if held_out == 0:
            return self._subset(order), None
        if held_out == len(order):
            raise ConfigurationError("trainer.hyperparameters.validationSplit leaves no training data")
        return self._subset(order[held_out:]), self._subset(order[:held_out])

    def _subset(self, index: npt.NDArray[np.int64]) -> Dataset:
        return Dataset(self.features[index], self.labels[index], self.label_names, self.feature_names, self.image_shape)


def load(spec: DatasetSpec) -> Dataset:
    scheme, _, rest = spec.uri.partition(":")
    if scheme == "sklearn":
        return _sklearn(rest)
    if scheme == "synthetic":
        return _synthetic(rest)
    return _table(spec)


def _sklearn(name: str) -> Dataset:
    from sklearn import datasets as bundled

    if name not in SKLEARN_SETS:
        raise ConfigurationError(
            f"trainer.dataset.uri: unknown scikit-learn dataset {name!r}; choose one of {', '.join(SKLEARN_SETS)}"
        )
    loaded: Any = getattr(bundled, f"load_{name}")()
    names = [str(n) for n in getattr(loaded, "target_names", sorted(set(loaded.target)))]
    features = np.asarray(loaded.data, dtype=np.float32)
    feature_names = [str(n) for n in getattr(loaded, "feature_names", [f"x{i}" for i in range(features.shape[1])])]
    image_shape = (1, *loaded.images.shape[1:]) if name == "digits" else None
    return Dataset(features, np.asarray(loaded.target, dtype=np.int64), names, feature_names, image_shape)


def _synthetic(rest: str) -> Dataset:
    from sklearn.datasets import make_classification

    generator, _, query = rest.partition("?")
    if generator != "classification":
        raise ConfigurationError(
            f"trainer.dataset.uri: unknown generator synthetic:{generator}; "
            "use synthetic:classification?samples=N&features=F&classes=C"
        )
    options = {"samples": 1000, "features": 20, "classes": 2, "seed": 0}
    for key, value in parse_qsl(query, strict_parsing=bool(query)):
        if key not in options:
            raise ConfigurationError(f"trainer.dataset.uri: unknown option {key!r}; known: {', '.join(options)}")
        if not value.isdigit():
            raise ConfigurationError(f"trainer.dataset.uri: {key}={value!r} must be a whole number")
        options[key] = int(value)
    for key, limit in SYNTHETIC_LIMITS.items():
        if not 1 <= options[key] <= limit:
            raise ConfigurationError(f"trainer.dataset.uri: {key} must be between 1 and {limit}")
    classes, features = options["classes"], options["features"]
    if classes < 2 or features < 2:
        raise ConfigurationError("trainer.dataset.uri: synthetic data needs classes >= 2 and features >= 2")
    informative = max(2, min(features, math.ceil(math.log2(classes)) + 2))
    x, y = make_classification(
        n_samples=options["samples"],
        n_features=features,
        n_informative=informative,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=options["seed"],
    )
    return Dataset(
        x.astype(np.float32), y.astype(np.int64), [str(c) for c in range(classes)], [f"x{i}" for i in range(features)]
    )


def _table(spec: DatasetSpec) -> Dataset:
    import pandas as pd

    parsed = urlparse(spec.uri)
    suffix = pathlib.PurePosixPath(parsed.path).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ConfigurationError(f"trainer.dataset.uri: {spec.uri} must end in .csv or .parquet")
    if not spec.label_column:
        raise ConfigurationError("trainer.dataset.labelColumn is required for CSV and Parquet data")
    parent, _, key = spec.uri.rpartition("/")
    try:
        data = storage.open_location(parent).read_bytes(key)
    except storage.ObjectNotFoundError as error:
        raise ConfigurationError(f"trainer.dataset.uri: {spec.uri} does not exist") from error
    except storage.StorageConfigError as error:
        raise ConfigurationError(f"trainer.dataset.uri: {error}") from error
    except storage.StorageUnavailableError as error:
        raise InfrastructureError(f"cannot read the dataset: {error}") from error
    try:
        frame = pd.read_csv(io.BytesIO(data)) if suffix == ".csv" else pd.read_parquet(io.BytesIO(data))
    except Exception as error:
        raise ConfigurationError(f"trainer.dataset.uri: {spec.uri} cannot be parsed: {error}") from error
    columns = [str(c) for c in frame.columns]
    if spec.label_column not in columns:
        raise ConfigurationError(
            f"trainer.dataset.labelColumn: column {spec.label_column!r} is not in {spec.uri} "
            f"(columns: {', '.join(columns)})"
        )
    features = spec.feature_columns or [c for c in columns if c != spec.label_column]
    missing = [c for c in features if c not in columns]
    if missing:
        raise ConfigurationError(
            f"trainer.dataset.featureColumns: {', '.join(missing)} not in {spec.uri} (columns: {', '.join(columns)})"
        )
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise ConfigurationError(
            f"trainer.dataset.featureColumns: {', '.join(non_numeric)} are not numeric; "
            "encode them or leave them out with featureColumns"
        )
    labels = frame[spec.label_column]
    if labels.isna().any():
        raise ConfigurationError(f"trainer.dataset.labelColumn: {spec.label_column!r} has empty values")
    categories = sorted(labels.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(categories) < 2:
        raise ConfigurationError(f"trainer.dataset.labelColumn: {spec.label_column!r} needs at least two classes")
    index = {value: i for i, value in enumerate(categories)}
    matrix = frame[features].to_numpy(dtype=np.float32, na_value=np.nan)
    if np.isnan(matrix).any():
        raise ConfigurationError(f"{spec.uri} has empty feature values; fill or drop them first")
    return Dataset(
        matrix,
        np.asarray([index[v] for v in labels.tolist()], dtype=np.int64),
        [str(c) for c in categories],
        features,
    )
