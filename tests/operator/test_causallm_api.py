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
    ({"trainer.model": "mlp"}, "exactly one of model", "exactly one of model"),
    ({"trainer.causalLM.architecture": None}, "exactly one of baseModel", "exactly one of baseModel"),
    (
        {"trainer.causalLM.baseModel": {"uri": "s3://models/base/llama"}},
        "exactly one of baseModel",
        "exactly one of baseModel",
    ),
    ({"trainer.causalLM.method": "lora"}, "train an adapter on a baseModel", "train an adapter on a baseModel"),
    (
        {**FINE_TUNE, "trainer.causalLM.method": "qlora", "trainer.causalLM.parallelism": "ddp"},
        "qlora needs GPU workers",
        "qlora needs GPU workers",
    ),
    (
        {**FINE_TUNE, "trainer.causalLM.method": "qlora", "workers.resources.gpu": 1},
        "qlora needs parallelism ddp",
        "qlora needs parallelism ddp",
    ),
    ({"trainer.causalLM.sequenceLength": 1024}, "context length 512", "must not exceed the architecture's context"),
    ({"trainer.causalLM.mergeAdapter": False}, "mergeAdapter applies", "mergeAdapter applies"),
    ({"trainer.dataset.labelColumn": "y"}, "labelColumn and featureColumns", "labelColumn and featureColumns"),
    ({"trainer.dataset.uri": "sklearn:digits"}, "trains classifiers", "train classifiers"),
    ({"trainer.dataset.streaming": True}, "set hyperparameters.maxSteps", "set hyperparameters.maxSteps"),
    (
        {"trainer.dataset.validationUri": "file:///data/val.jsonl", "trainer.hyperparameters.validationSplit": 0.1},
        "validationSplit cannot be combined",
        "validationSplit cannot be combined",
    ),
]


@pytest.mark.parametrize(("changes", "pydantic_says", "cel_says"), BAD_SPECS)
def test_bad_specs_are_refused_by_both(changes: dict[str, Any], pydantic_says: str, cel_says: str) -> None:
    spec = changed(llm_example(), changes)
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(spec)
    assert pydantic_says in describe_validation_error(refused.value)
    assert any(cel_says in message for message in violations(SPEC_SCHEMA, spec))


CLASSIFIER_ONLY = [
    ({"trainer.dataset.format": "chat"}, "dataset.format applies to causalLM only", "apply to causalLM only"),
    (
        {"trainer.hyperparameters.gradientAccumulationSteps": 4},
        "gradientAccumulationSteps applies to causalLM only",
        "apply to causalLM only",
    ),
    ({"trainer.dataset.uri": "synthetic:arithmetic"}, "trains causal LMs", "train causal LMs"),
]


@pytest.mark.parametrize(("changes", "pydantic_says", "cel_says"), CLASSIFIER_ONLY)
def test_language_model_fields_on_a_classifier_are_refused_by_both(
    changes: dict[str, Any], pydantic_says: str, cel_says: str
) -> None:
    from tests.operator.test_api import with_changes

    spec = with_changes(changes)
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(spec)
    assert pydantic_says in describe_validation_error(refused.value)
    assert any(cel_says in message for message in violations(SPEC_SCHEMA, spec))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"trainer.causalLM.method": "dpo"}, "spec.trainer.causalLM.method"),
        ({"trainer.causalLM.parallelism": "tp"}, "spec.trainer.causalLM.parallelism"),
        ({"trainer.causalLM.lora": {"rank": 0}}, "spec.trainer.causalLM.lora.rank"),
        ({"trainer.causalLM.architecture": {"size": "huge"}}, "spec.trainer.causalLM.architecture.size"),
        ({"trainer.causalLM.sequenceLength": 600}, "spec.trainer.causalLM.sequenceLength"),
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
