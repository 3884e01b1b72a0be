"""What `maas run` sends the served model and tells the user (the pure part; tests/test_local_run.py
runs the whole thing)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.local_report import Example, describe_answer, held_out_example, inference_request, where_things_are
from maas_workloads.train import datasets

DIGITS = {"trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}}, "output": {"uri": "s3://models/d"}}
DESCRIPTION = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
}


def spec(**hyperparameters: Any) -> TrainingJobSpec:
    body = {**DIGITS, "trainer": {**DIGITS["trainer"], "hyperparameters": hyperparameters}}
    return TrainingJobSpec.model_validate(body)


def test_the_example_is_held_out_by_the_trainers_own_split() -> None:
    example = held_out_example(spec(seed=7, validationSplit=0.25))
    assert example is not None and len(example.features) == 64
    _, validation = datasets.load(spec().trainer.dataset).split(0.25, 7)  # type: ignore[union-attr]
    assert validation is not None
    assert np.array_equal(np.asarray(example.features, dtype=np.float32), validation.features[0])
    assert example.label == validation.label_names[int(validation.labels[0])]
    # Another seed holds out other rows: the example follows the spec, it is not a fixed row.
    other = held_out_example(spec(seed=8, validationSplit=0.25))
    assert other is not None and other.features != example.features
    assert "held out from training" in example.origin and "sklearn:digits" in example.origin


def test_no_example_without_a_validation_split_or_a_built_in_trainer() -> None:
    assert held_out_example(spec(validationSplit=0)) is None
    custom = TrainingJobSpec.model_validate({"command": ["python", "train.py"], "output": {"uri": "s3://models/d"}})
    assert held_out_example(custom) is None


def test_request_and_answer_in_words() -> None:
    example = Example([0.0] * 64, "7", "row 0")
    request = inference_request(DESCRIPTION, example)
    assert request["inputs"][0]["shape"] == [1, 64] and request["outputs"][0]["parameters"] == {"classification": 1}
    answer = {"outputs": [{"name": "logits", "data": ["12.500000:7:7"]}]}
    assert describe_answer(answer, example) == "inference on row 0: predicted 7 (score 12.5), true label 7: correct"
    wrong = {"outputs": [{"name": "logits", "data": ["3.000000:1:1"]}]}
    assert describe_answer(wrong, example).endswith("predicted 1 (score 3), true label 7: wrong")
    # A model the example does not fit gets zeros of its own shapes.
    narrow = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    assert inference_request(narrow, example) == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]
    }
    assert describe_answer({"outputs": [{"name": "y", "data": [0.5]}]}, None).startswith("inference on an all-zero")


def test_where_things_are(tmp_path: pathlib.Path) -> None:
    (tmp_path / "digits-head.log").write_text("")
    (tmp_path / "model").mkdir()
    lines = where_things_are(tmp_path, f"file://{tmp_path}/checkpoints", f"file://{tmp_path}/model")
    assert lines == [
        f"logs:        {tmp_path}/ (digits-head.log)",
        f"checkpoints: {tmp_path}/checkpoints (not written)",
        f"artifact:    {tmp_path}/model",
    ]
    assert where_things_are(tmp_path, None, None)[1:] == [
        "checkpoints: none (the TrainingJob has no spec.checkpoint)",
        "artifact:    none (training did not finish)",
    ]
