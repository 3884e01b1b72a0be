"""The causal-LM part of the TrainingJob API: pydantic and the CRD's CEL rules refuse the same specs."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from maas_operator.api.common import describe_validation_error
from maas_operator.api.trainingjob import TrainingJobSpec
from tests.operator.cel import violations
from tests.operator.test_api import SPEC_SCHEMA, changed

REPO = pathlib.Path(__file__).resolve().parents[2]


def llm_example() -> dict[str, Any]:
    documents = yaml.safe_load_all((REPO / "examples" / "llm-trainingjob.yaml").read_text())
    return dict(next(d for d in documents if d["kind"] == "TrainingJob")["spec"])


FINE_TUNE: dict[str, Any] = {
    "trainer.causalLM.architecture": None,
    "trainer.causalLM.baseModel": {"uri": "s3://models/base/llama"},
    "trainer.causalLM.method": "lora",
}


def test_example_is_valid_everywhere() -> None:
    spec = llm_example()
    parsed = TrainingJobSpec.model_validate(spec)
    assert parsed.trainer is not None and parsed.trainer.causal_lm is not None
    assert parsed.trainer.causal_lm.parallelism == "fsdp" and parsed.workers.replicas == 2
    assert violations(SPEC_SCHEMA, spec) == []


def test_a_lora_fine_tune_is_valid_everywhere() -> None:
    spec = changed(llm_example(), {**FINE_TUNE, "trainer.causalLM.lora": {"rank": 8, "targetModules": ["q_proj"]}})
    assert TrainingJobSpec.model_validate(spec).trainer.causal_lm.lora.rank == 8  # type: ignore[union-attr]
    assert violations(SPEC_SCHEMA, spec) == []


BAD_SPECS = [
    ({"trainer.model": "mlp"}, "set exactly one of model (a classifier) or causalLM"),
    ({"trainer.causalLM.architecture": None}, "set exactly one of baseModel (fine-tune) or architecture"),
    ({"trainer.causalLM.baseModel": {"uri": "s3://models/base/llama"}}, "set exactly one of baseModel"),
    ({"trainer.causalLM.method": "lora"}, "method: lora and qlora train an adapter on a baseModel"),
    (
        {**FINE_TUNE, "trainer.causalLM.method": "qlora", "trainer.causalLM.parallelism": "ddp"},
        "trainer.causalLM.method: qlora needs GPU workers (workers.resources.gpu)",
    ),
    (
        {**FINE_TUNE, "trainer.causalLM.method": "qlora", "workers.resources.gpu": 1},
        "parallelism: qlora needs ddp, as FSDP does not shard bitsandbytes' 4-bit weights",
    ),
    ({"trainer.causalLM.sequenceLength": 1024}, "sequenceLength: must not exceed the architecture's context length"),
    ({"trainer.causalLM.mergeAdapter": False}, "mergeAdapter: applies to method lora and qlora only"),
    ({"trainer.dataset.labelColumn": "y"}, "dataset: labelColumn and featureColumns apply to classifiers"),
    ({"trainer.dataset.uri": "sklearn:digits"}, "dataset.uri: sklearn: and synthetic:classification data train"),
    ({"trainer.dataset.streaming": True}, "hyperparameters.maxSteps: a streamed dataset has no known length"),
    (
        {"trainer.dataset.validationUri": "file:///data/val.jsonl", "trainer.hyperparameters.validationSplit": 0.1},
        "hyperparameters.validationSplit: cannot be combined with dataset.validationUri",
    ),
]


def refused_by_both(spec: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(spec)
    assert says in describe_validation_error(refused.value)
    assert any(says in message for message in violations(SPEC_SCHEMA, spec)), violations(SPEC_SCHEMA, spec)


@pytest.mark.parametrize(("changes", "says"), BAD_SPECS)
def test_bad_specs_are_refused_by_both(changes: dict[str, Any], says: str) -> None:
    refused_by_both(changed(llm_example(), changes), says)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"trainer.dataset.format": "chat"}, "dataset: format, validationUri and streaming apply to causalLM only"),
        ({"trainer.hyperparameters.gradientAccumulationSteps": 4}, "gradientAccumulationSteps, lrSchedule"),
        ({"trainer.hyperparameters.maxGradNorm": 0.5}, "maxGradNorm apply to causalLM only"),
        ({"trainer.dataset.uri": "synthetic:arithmetic"}, "synthetic:arithmetic, JSONL and text train causal LMs"),
    ],
)
def test_language_model_fields_on_a_classifier_are_refused_by_both(changes: dict[str, Any], says: str) -> None:
    from tests.operator.test_api import with_changes

    refused_by_both(with_changes(changes), says)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"trainer.causalLM.method": "dpo"}, "spec.trainer.causalLM.method"),
        ({"trainer.causalLM.parallelism": "tp"}, "spec.trainer.causalLM.parallelism"),
        ({"trainer.causalLM.lora": {"rank": 0}}, "spec.trainer.causalLM.lora.rank"),
        ({"trainer.causalLM.architecture": {"size": "huge"}}, "spec.trainer.causalLM.architecture.size"),
        ({"trainer.causalLM.sequenceLength": 200_000}, "spec.trainer.causalLM.sequenceLength"),
        ({"trainer.dataset.format": "csv"}, "spec.trainer.dataset.format"),
        ({"trainer.hyperparameters.lrSchedule": "step"}, "spec.trainer.hyperparameters.lrSchedule"),
        ({"trainer.causalLM.baseModel": {"uri": "ftp://x/y"}}, "spec.trainer.causalLM.baseModel.uri"),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(changed(llm_example(), changes))
    assert field in describe_validation_error(refused.value)


def test_validation_split_defaults_by_task() -> None:
    lm = TrainingJobSpec.model_validate(llm_example()).trainer
    assert lm is not None and lm.validation_split == 0.05
    streamed = changed(llm_example(), {"trainer.dataset.streaming": True, "trainer.hyperparameters.maxSteps": 10})
    assert TrainingJobSpec.model_validate(streamed).trainer.validation_split == 0.0  # type: ignore[union-attr]
