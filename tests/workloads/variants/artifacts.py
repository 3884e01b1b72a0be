"""A small digits classifier trained in-process, and its artifact with variants."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Sequence

import numpy as np
import torch

from maas_operator.api.trainer import DatasetSpec, ModelOptions
from maas_workloads import artifact
from maas_workloads.train import datasets, models, publish
from maas_workloads.variants.tensor import EVAL_BATCH, Validation


@functools.cache
def digits_split() -> tuple[datasets.Dataset, datasets.Dataset]:
    """The built-in trainer's split of sklearn's digits (validationSplit 0.2, seed 0)."""
    train, validation = datasets.load(DatasetSpec(uri="sklearn:digits")).split(0.2, 0)
    assert validation is not None
    return train, validation


def trained_mlp(epochs: int = 8) -> torch.nn.Module:
    """The built-in MLP (one hidden layer of 32), trained for a few epochs: about 97% accurate."""
    train, _ = digits_split()
    torch.manual_seed(0)
    model = models.build("mlp", ModelOptions(hidden_size=32, layers=1), train.features, train.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(train.labels), 64):
            x = torch.from_numpy(train.features[start : start + 64])
            y = torch.from_numpy(train.labels[start : start + 64])
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return model.eval()


def export(
    model: torch.nn.Module,
    directory: pathlib.Path,
    variants: Sequence[artifact.VariantName],
    max_accuracy_drop: float | None = None,
) -> tuple[artifact.TensorManifest, str]:
    train, validation = digits_split()
    return publish.export(
        model,
        torch.from_numpy(train.features[:2]),
        directory,
        source=artifact.Source(name="digits"),
        metrics={},
        labels=train.label_names,
        output_name="logits",
        variants=variants,
        validation=Validation(validation.features, validation.labels),
        max_accuracy_drop=max_accuracy_drop,
    )


def evaluation_batches(features: np.ndarray) -> list[np.ndarray]:
    """The validation rows in the batches the publisher measured them in (dynamic int8 quantizes
    activations per batch, so only the same batches give the same logits)."""
    return [features[start : start + EVAL_BATCH] for start in range(0, len(features), EVAL_BATCH)]
