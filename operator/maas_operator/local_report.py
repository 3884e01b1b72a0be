"""What `maas run` shows the user: a real held-out example sent to the served model with the
answer in words, and at the end where the logs, checkpoints and artifact of the run are.

Pure, apart from loading the dataset the way the built-in trainer does (same code, seed and
validation fraction), so the example is one the model never trained on.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from maas_operator.api.trainingjob import TrainingJobSpec


@dataclass(frozen=True)
class Example:
    """One labelled row the model was not trained on."""

    features: list[float]
    label: str
    """The true class name (the dataset's label name, e.g. "7")."""
    origin: str


def held_out_example(spec: TrainingJobSpec) -> Example | None:
    """The first row of the built-in trainer's validation split; None for a driver of one's own
    (`command`) or `validationSplit: 0`, where no row is known to be held out.

    The split is `maas_workloads.train.datasets.Dataset.split(validation_split, seed)`, the call
    `train/driver.py` makes, so the row is held out from training by construction.
    """
    if spec.trainer is None:
        return None
    from maas_workloads.train import datasets  # numpy and scikit-learn: only when there is a trainer

    hyperparameters = spec.trainer.hyperparameters
    loaded = datasets.load(spec.trainer.dataset)
    _, validation = loaded.split(hyperparameters.validation_split, hyperparameters.seed)
    if validation is None:
        return None
    return Example(
        features=[float(value) for value in validation.features[0]],
        label=validation.label_names[int(validation.labels[0])],
        origin=f"the first of the {len(validation.labels)} rows of {spec.trainer.dataset.uri} held out from training",
    )


def _zeros(tensor: Mapping[str, Any]) -> dict[str, Any]:
    shape = [1 if dim < 0 else int(dim) for dim in tensor["shape"]]
    count = 1
    for dim in shape:
        count *= dim
    value: Any = False if tensor["datatype"] == "BOOL" else ("" if tensor["datatype"] == "BYTES" else 0)
    return {"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape, "data": [value] * count}


def fits(description: Mapping[str, Any], example: Example | None) -> bool:
    """The model takes exactly one row of the example's width (OIP v2 model metadata)."""
    inputs = description.get("inputs") or []
    return (
        example is not None
        and len(inputs) == 1
        and len(inputs[0]["shape"]) == 2
        and inputs[0]["shape"][1] in (-1, len(example.features))
    )


def inference_request(description: Mapping[str, Any], example: Example | None) -> dict[str, Any]:
    """An OIP v2 request: the example when it fits the model's one input (asking each output for
    its top class, the classification extension), else all-zero tensors of the declared shapes."""
    if not fits(description, example):
        return {"inputs": [_zeros(tensor) for tensor in description.get("inputs") or []]}
    assert example is not None  # fits() said so
    tensor = description["inputs"][0]
    row = {"name": tensor["name"], "datatype": tensor["datatype"], "shape": [1, len(example.features)]}
    outputs = [{"name": o["name"], "parameters": {"classification": 1}} for o in description.get("outputs") or []]
    return {"inputs": [{**row, "data": example.features}], "outputs": outputs}


def describe_answer(answer: Mapping[str, Any], example: Example | None) -> str:
    """One line: the predicted and true labels for an example, the raw outputs otherwise."""
    outputs = {o["name"]: o.get("data", []) for o in answer.get("outputs") or []}
    if example is None:
        return f"inference on an all-zero input: { {name: data[:10] for name, data in outputs.items()} }"
    first: list[Any] = next(iter(outputs.values()), [])
    if not first:
        return f"inference on {example.origin}: no output"
    # Classification extension: "score:index[:label]".
    score, index, *label = str(first[0]).split(":", 2)
    predicted = label[0] if label else index
    verdict = "correct" if predicted == example.label else "wrong"
    return (
        f"inference on {example.origin}: predicted {predicted} (score {float(score):.3g}), "
        f"true label {example.label}: {verdict}"
    )


def where_things_are(workdir: pathlib.Path, checkpoint_uri: str | None, artifact_uri: str | None) -> list[str]:
    """The lines `maas run` ends with: logs, checkpoints, artifact (local paths when on this machine)."""

    def place(uri: str | None, missing: str) -> str:
        if not uri:
            return missing
        path = pathlib.Path(uri.removeprefix("file://"))
        if uri.startswith("file://") and not path.exists():
            return f"{path} (not written)"
        return str(path) if uri.startswith("file://") else uri

    logs = sorted(path.name for path in workdir.glob("*.log"))
    return [
        f"logs:        {workdir}/ ({', '.join(logs) or 'none yet'})",
        f"checkpoints: {place(checkpoint_uri, 'none (the TrainingJob has no spec.checkpoint)')}",
        f"artifact:    {place(artifact_uri, 'none (training did not finish)')}",
    ]
