"""Optimized model variants in the API: which a TrainingJob can publish, and which a ModelService
can serve with which engine.

A TrainingJob publishes them (`output.variants`, see `maas_workloads.artifact.Variant`); a
ModelService serves one by name (`model.variant`, and `rollout.canary.model.variant`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maas_operator.api.validation import Rule

_LLM = "(has(self.generation) || (has(self.engine) && self.engine == 'vllm'))"
_SOURCES: dict[str, tuple[str, str, Callable[[Any], Any]]] = {
    "model": ("has(self.model.variant)", "self.model.variant", lambda spec: spec.model),
    "rollout.canary.model": (
        "has(self.rollout) && has(self.rollout.canary) && has(self.rollout.canary.model.variant)",
        "self.rollout.canary.model.variant",
        lambda spec: spec.rollout.canary.model if spec.rollout.canary is not None else None,
    ),
}


def _variant(source: Any) -> str | None:
    variant: str | None = None if source is None else source.variant
    return variant


def _rules(path: str) -> list[Rule]:
    present, value, source = _SOURCES[path]
    return [
        Rule(
            f"!({present}) || {value} == 'int8' || !{_LLM}",
            f"{path}.variant: causal LMs publish an int8 variant only; fp16, bf16 and onnx are tensor-model variants",
            lambda spec: _variant(source(spec)) in (None, "int8") or not spec.is_llm,
            field_path=f".{path}.variant",
        ),
        Rule(
            f"!({present}) || !has(self.engine) || self.engine != 'vllm' || "
            "(has(self.resources) && has(self.resources.gpu) && self.resources.gpu > 0)",
            f"{path}.variant: engine vllm runs the int8 variant with --quantization torchao, on GPUs only "
            "(resources.gpu); use engine builtin on CPUs",
            lambda spec: _variant(source(spec)) is None or spec.engine != "vllm" or bool(spec.resources.gpu),
            field_path=f".{path}.variant",
        ),
    ]


VARIANT_RULES = [rule for path in _SOURCES for rule in _rules(path)]
"""What a model's variant can be served by, as CEL for the CRD and Python for pydantic."""


_LM_JOB = "has(self.trainer) && has(self.trainer.causalLM)"
_ANY_VARIANT = "has(self.output.variants) && size(self.output.variants) > 0"
OUTPUT_VARIANT_RULES = [
    Rule(
        f"!({_ANY_VARIANT}) || !has(self.trainer) || has(self.trainer.dataset.validationUri) || "
        "(!(has(self.trainer.dataset.streaming) && self.trainer.dataset.streaming) && "
        "(!has(self.trainer.hyperparameters) || !has(self.trainer.hyperparameters.validationSplit) || "
        "self.trainer.hyperparameters.validationSplit > 0))",
        "output.variants are measured on the validation split: set trainer.hyperparameters.validationSplit "
        "above 0 (causal LMs: or trainer.dataset.validationUri, which a streamed dataset needs)",
        lambda spec: (
            not spec.output.variants
            or spec.trainer is None
            or spec.trainer.dataset.validation_uri is not None
            or spec.trainer.validation_split > 0
        ),
        field_path=".output.variants",
    ),
    Rule(
        f"!({_LM_JOB}) || !has(self.output.variants) || self.output.variants.all(v, v == 'int8')",
        "output.variants: causal LMs publish only a weight-only int8 variant (fp16, bf16 and onnx are for "
        "tensor models): list int8 alone",
        lambda spec: spec.trainer is None or spec.trainer.causal_lm is None or set(spec.output.variants) <= {"int8"},
        field_path=".output.variants",
    ),
    Rule(
        f"!({_LM_JOB}) || !({_ANY_VARIANT}) || !has(self.trainer.causalLM.mergeAdapter) || "
        "self.trainer.causalLM.mergeAdapter",
        "output.variants: with trainer.causalLM.mergeAdapter false only the adapter is published, and a variant "
        "is of the merged model: set mergeAdapter true or remove output.variants",
        lambda spec: (
            spec.trainer is None
            or spec.trainer.causal_lm is None
            or not spec.output.variants
            or spec.trainer.causal_lm.merge_adapter
        ),
        field_path=".output.variants",
    ),
    Rule(
        f"!({_LM_JOB}) || !has(self.output.maxAccuracyDrop) || self.output.maxAccuracyDrop >= 1.0",
        "output.maxAccuracyDrop: for causal LMs it is the largest ratio of a variant's validation perplexity "
        "to the full model's, at least 1 (1.05 allows 5% more)",
        lambda spec: (
            spec.trainer is None
            or spec.trainer.causal_lm is None
            or spec.output.max_accuracy_drop is None
            or spec.output.max_accuracy_drop >= 1
        ),
        field_path=".output.maxAccuracyDrop",
    ),
]
"""What a TrainingJob's output.variants need, as CEL for the CRD and Python for pydantic: validation
data to be measured on, and for causal LMs (variants.causal_lm) the int8 variant of a merged model,
judged by a perplexity ratio (variants.gate)."""
