"""Optimized model variants in the API: which a ModelService can serve with which engine.

A TrainingJob publishes them (`output.variants`, see `maas_workloads.artifact.Variant`); a
ModelService serves one by name (`model.variant`).
"""

from __future__ import annotations

from maas_operator.api.validation import Rule

_LLM = "(has(self.generation) || (has(self.engine) && self.engine == 'vllm'))"
VARIANT_RULES = [
    Rule(
        f"!has(self.model.variant) || self.model.variant == 'int8' || !{_LLM}",
        "model.variant: causal LMs publish an int8 variant only; fp16, bf16 and onnx are tensor-model variants",
        lambda spec: spec.model.variant in (None, "int8") or not spec.is_llm,
        field_path=".model.variant",
    ),
    Rule(
        "!has(self.model.variant) || !has(self.engine) || self.engine != 'vllm' || "
        "(has(self.resources) && has(self.resources.gpu) && self.resources.gpu > 0)",
        "model.variant: engine vllm runs the int8 variant with --quantization torchao, on GPUs only "
        "(resources.gpu); use engine builtin on CPUs",
        lambda spec: spec.model.variant is None or spec.engine != "vllm" or bool(spec.resources.gpu),
        field_path=".model.variant",
    ),
]
"""What spec.model.variant can be served by, as CEL for the CRD and Python for pydantic."""
