"""Optimized model variants in the API: which a ModelService can serve with which engine.

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
