"""The built-in models. Each takes a flat float32 batch (N, features) and returns class logits (N, classes),
with the input standardisation baked in, so the published artifact serves raw features."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from maas_operator.api.trainer import ModelName, ModelOptions
from maas_workloads.train.errors import ConfigurationError


class Standardize(nn.Module):
    """(x - mean) / std with the training set's statistics, stored in the model."""

    def __init__(self, features: npt.NDArray[np.float32]) -> None:
        super().__init__()
        std = features.std(axis=0)
        self.register_buffer("mean", torch.from_numpy(features.mean(axis=0).astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    def __init__(self, features: npt.NDArray[np.float32], classes: int, options: ModelOptions) -> None:
        super().__init__()
        layers: list[nn.Module] = [Standardize(features)]
        width = features.shape[1]
        for _ in range(options.layers):
            layers += [nn.Linear(width, options.hidden_size), nn.ReLU(), nn.Dropout(options.dropout)]
            width = options.hidden_size
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class CNN(nn.Module):
    """Two convolutions over (channels, height, width) images given as flat rows."""

    def __init__(
        self, features: npt.NDArray[np.float32], classes: int, options: ModelOptions, shape: tuple[int, int, int]
    ) -> None:
        super().__init__()
        self.shape = shape
        self.standardize = Standardize(features)
        self.features = nn.Sequential(
            nn.Conv2d(shape[0], 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 16, options.hidden_size),
            nn.ReLU(),
            nn.Dropout(options.dropout),
            nn.Linear(options.hidden_size, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = self.standardize(x).reshape(-1, self.shape[0], self.shape[1], self.shape[2])
        return self.head(self.features(images))  # type: ignore[no-any-return]


class TransformerClassifier(nn.Module):
    """Each feature is a token (value embedding + position); mean-pooled encoder output -> logits."""

    def __init__(self, features: npt.NDArray[np.float32], classes: int, options: ModelOptions) -> None:
        super().__init__()
        width = options.hidden_size
        heads = next(h for h in (8, 4, 2, 1) if width % h == 0)
        self.standardize = Standardize(features)
        self.embed = nn.Linear(1, width)
        self.position = nn.Parameter(torch.randn(features.shape[1], width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=options.dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, options.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.standardize(x).unsqueeze(-1)) + self.position
        return self.head(self.norm(self.encoder(tokens).mean(dim=1)))  # type: ignore[no-any-return]


def image_shape(num_features: int, known: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if known is not None:
        return known
    side = math.isqrt(num_features)
    if side * side != num_features:
        raise ConfigurationError(
            f"trainer.model: cnn needs image data, but the dataset has {num_features} features, "
            "which is not a square image; use mlp or transformer for tabular data"
        )
    return (1, side, side)


def build(
    name: ModelName,
    options: ModelOptions,
    features: npt.NDArray[np.float32],
    classes: int,
    known_image_shape: tuple[int, int, int] | None = None,
) -> nn.Module:
    """A freshly initialised model; `features` (the training rows) fixes its input standardisation."""
    if name == "mlp":
        return MLP(features, classes, options)
    if name == "cnn":
        return CNN(features, classes, options, image_shape(features.shape[1], known_image_shape))
    if name == "transformer":
        return TransformerClassifier(features, classes, options)
    raise ConfigurationError(f"trainer.model: unknown model {name!r}; choose mlp, cnn or transformer")
