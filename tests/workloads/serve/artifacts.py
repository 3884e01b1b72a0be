"""Small TorchScript artifacts built the way the trainer publishes them: model, safetensors, manifest."""

from __future__ import annotations

import pathlib

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from maas_workloads.artifact import TensorManifest, TensorSpec, describe_files, write_manifest


class DigitsMLP(torch.nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels / 16.0)


class TwoInTwoOut(torch.nn.Module):
    """Inputs of different datatypes and a dict of outputs, to exercise the non-trivial paths."""

    def forward(self, features: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        total = features.sum(dim=1, keepdim=True) + counts.sum(dim=1, keepdim=True).to(torch.float32)
        return {"total": total, "doubled": counts * 2}


class Slow(torch.nn.Module):
    """Burns CPU per call, so that requests pile up in the queue."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations
        self.weight = torch.nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.repeat(1, 64)
        for _ in range(self.iterations):
            y = torch.tanh(y @ self.weight)
        return y[:, :4]


ECHO_INPUTS = {
    "b": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "bf16": "BF16",
}
"""The echo model's inputs, one per datatype a torch model can take; output `<name>_out` returns each."""


class Echo(torch.nn.Module):
    """Returns every input unchanged, so a test sees exactly what the server handed the model."""

    def forward(
        self,
        b: torch.Tensor,
        u8: torch.Tensor,
        u16: torch.Tensor,
        u32: torch.Tensor,
        u64: torch.Tensor,
        i8: torch.Tensor,
        i16: torch.Tensor,
        i32: torch.Tensor,
        i64: torch.Tensor,
        f16: torch.Tensor,
        f32: torch.Tensor,
        f64: torch.Tensor,
        bf16: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {
            "b_out": b,
            "u8_out": u8,
            "u16_out": u16,
            "u32_out": u32,
            "u64_out": u64,
            "i8_out": i8,
            "i16_out": i16,
            "i32_out": i32,
            "i64_out": i64,
            "f16_out": f16,
            "f32_out": f32,
            "f64_out": f64,
            "bf16_out": bf16,
        }


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32), torch.tensor(digits.target)


def train_digits(epochs: int = 60) -> DigitsMLP:
    torch.manual_seed(0)
    features, labels = digits_data()
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimizer.step()
    return model.eval()


def publish(
    directory: pathlib.Path,
    module: torch.nn.Module,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    labels: list[str] | None = None,
) -> str:
    """Write the artifact into `directory`; returns the manifest's sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(directory / "model.pt"))
    save_file(
        {name: tensor.contiguous() for name, tensor in module.state_dict().items()}, directory / "model.safetensors"
    )
    manifest = TensorManifest(
        format="torchscript",
        modelFile="model.pt",
        weightsFile="model.safetensors",
        inputs=inputs,
        outputs=outputs,
        files=describe_files(directory),
        labels=labels,
        frameworkVersions={"torch": torch.__version__},
    )
    return write_manifest(directory, manifest)


def digits_artifact(directory: pathlib.Path) -> str:
    return publish(
        directory,
        train_digits(),
        [TensorSpec(name="pixels", datatype="FP32", shape=[-1, 64])],
        [TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
        labels=[f"digit-{n}" for n in range(10)],
    )


def two_in_two_out_artifact(directory: pathlib.Path) -> str:
    return publish(
        directory,
        TwoInTwoOut(),
        [
            TensorSpec(name="features", datatype="FP32", shape=[-1, 3]),
            TensorSpec(name="counts", datatype="INT64", shape=[-1, 2]),
        ],
        [
            TensorSpec(name="total", datatype="FP32", shape=[-1, 1]),
            TensorSpec(name="doubled", datatype="INT64", shape=[-1, 2]),
        ],
    )


def slow_artifact(directory: pathlib.Path, iterations: int = 1500) -> str:
    torch.manual_seed(0)
    return publish(
        directory,
        Slow(iterations),
        [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1, 4])],
    )


def echo_artifact(directory: pathlib.Path) -> str:
    return publish(
        directory,
        Echo(),
        [TensorSpec(name=name, datatype=datatype, shape=[-1, 2]) for name, datatype in ECHO_INPUTS.items()],
        [TensorSpec(name=f"{name}_out", datatype=datatype, shape=[-1, 2]) for name, datatype in ECHO_INPUTS.items()],
    )
