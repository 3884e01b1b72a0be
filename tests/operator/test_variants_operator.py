"""Optimized variants on the operator's side: the API's rules (CEL and pydantic alike), the
TrainingJob status that reports them, and the ModelService that serves one (or refuses to)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus, ServedModel
from maas_operator.builders import llm
from maas_operator.builders.meta import Owner
from maas_operator.status.modelservice import Children, ModelServiceView, Observed, plan_modelservice
from maas_operator.status.plan import written_manifests
from maas_workloads import contract
from tests.operator.test_admission import refusals
from tests.operator.test_api import changed
from tests.operator.test_api import example_spec as trainingjob_spec
from tests.operator.test_causallm_api import llm_example
from tests.operator.test_modelservice_api import example_spec as modelservice_spec
from tests.operator.test_trainingjob_status import HEAD, W0, plan, pod, running_status

OWNER = Owner("ModelService", "digits", "team-a", "uid-ms")
NOW = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=datetime.UTC)
REFUSED = {
    "name": "int8",
    "published": False,
    "message": "val_accuracy 0.9000 vs 0.9700 for the full model, a drop of 7.00 points, "
    "more than maxAccuracyDrop 1: not published",
    "metrics": {"val_accuracy": 0.9, "val_accuracy_drop": 7.0},
}
PUBLISHED = {"name": "onnx", "published": True, "message": "a drop of 0.00 points", "metrics": {"val_accuracy": 0.97}}


# --- API -----------------------------------------------------------------------------------
def assert_both_refuse(kind: str, changes: dict[str, Any], message: str, field: str) -> None:
    """The API server names the field; pydantic (whose cross-field rules report at `spec`) says the same."""
    example = trainingjob_spec() if kind == "TrainingJob" else modelservice_spec()
    api_server, operator = refusals(kind, changed(example, changes))
    assert any(p.startswith(f"{field}: ") and message in p for p in api_server.split("; ")), api_server
    assert operator and message in operator, operator


def test_trainingjob_variants_are_accepted_by_both() -> None:
    spec = changed(trainingjob_spec(), {"output.variants": ["int8", "onnx"], "output.maxAccuracyDrop": 1.5})
    assert refusals("TrainingJob", spec) == ("", "")


@pytest.mark.parametrize(
    ("changes", "message", "field"),
    [
        (
            {"output.variants": ["int8"], "trainer.hyperparameters.validationSplit": 0},
            "output.variants are measured on the validation split",
            "spec.output.variants",
        ),
        ({"output.variants": ["int4"]}, "", "spec.output.variants[0]"),
        ({"output.variants": ["int8"], "output.maxAccuracyDrop": -1}, "", "spec.output.maxAccuracyDrop"),
    ],
)
def test_bad_trainingjob_variants_are_refused_by_both(changes: dict[str, Any], message: str, field: str) -> None:
    assert_both_refuse("TrainingJob", changes, message, field)


LORA = {
    "trainer.causalLM.architecture": None,
    "trainer.causalLM.baseModel": {"uri": "s3://models/base/llama"},
    "trainer.causalLM.method": "lora",
}


@pytest.mark.parametrize(
    "changes",
    [
        {"output.variants": ["int8"], "output.maxAccuracyDrop": 1.05},
        {"output.variants": ["int8"], "output.maxAccuracyDrop": 1},
        {**LORA, "output.variants": ["int8"]},
        {
            "output.variants": ["int8"],
            "trainer.dataset.streaming": True,
            "trainer.dataset.validationUri": "file:///data/val.jsonl",
            "trainer.hyperparameters.maxSteps": 10,
        },
    ],
)
def test_causal_lm_int8_variants_are_accepted_by_both(changes: dict[str, Any]) -> None:
    assert refusals("TrainingJob", changed(llm_example(), changes)) == ("", "")


@pytest.mark.parametrize(
    ("changes", "message", "field"),
    [
        (
            {"output.variants": ["int8", "onnx"]},
            "output.variants: causal LMs publish only a weight-only int8 variant (fp16, bf16 and onnx are for "
            "tensor models): list int8 alone",
            "spec.output.variants",
        ),
        ({"output.variants": ["bf16"]}, "causal LMs publish only a weight-only int8 variant", "spec.output.variants"),
        (
            {"output.variants": ["int8"], "output.maxAccuracyDrop": 0.5},
            "output.maxAccuracyDrop: for causal LMs it is the largest ratio of a variant's validation perplexity "
            "to the full model's, at least 1",
            "spec.output.maxAccuracyDrop",
        ),
        (
            {**LORA, "trainer.causalLM.mergeAdapter": False, "output.variants": ["int8"]},
            "output.variants: with trainer.causalLM.mergeAdapter false only the adapter is published, and a "
            "variant is of the merged model: set mergeAdapter true or remove output.variants",
            "spec.output.variants",
        ),
        (
            {"output.variants": ["int8"], "trainer.dataset.streaming": True, "trainer.hyperparameters.maxSteps": 10},
            "causal LMs: or trainer.dataset.validationUri, which a streamed dataset needs",
            "spec.output.variants",
        ),
        (
            {"output.variants": ["int8"], "trainer.hyperparameters.validationSplit": 0},
            "output.variants are measured on the validation split",
            "spec.output.variants",
        ),
    ],
)
def test_bad_causal_lm_variants_are_refused_by_both(changes: dict[str, Any], message: str, field: str) -> None:
    api_server, operator = refusals("TrainingJob", changed(llm_example(), changes))
    assert any(p.startswith(f"{field}: ") and message in p for p in api_server.split("; ")), api_server
    assert operator and message in operator, operator


def test_a_classifier_max_accuracy_drop_below_one_point_is_accepted() -> None:
    """Below 1 is a perplexity ratio no causal LM can meet, but a fine accuracy drop for a classifier."""
    spec = changed(trainingjob_spec(), {"output.variants": ["int8"], "output.maxAccuracyDrop": 0.5})
    assert refusals("TrainingJob", spec) == ("", "")


def test_a_variant_listed_twice_is_refused() -> None:
    spec = changed(trainingjob_spec(), {"output.variants": ["int8", "int8"]})
    assert "each variant may be listed once" in refusals("TrainingJob", spec)[1]


CANARY = {"model": {"uri": "s3://models/digits/v2", "variant": "onnx"}}


@pytest.mark.parametrize(
    ("changes", "message", "field"),
    [
        ({"model.variant": "onnx", "generation": {}}, "causal LMs publish an int8 variant only", "model"),
        (
            {"rollout.canary": CANARY, "generation": {}},
            "causal LMs publish an int8 variant only",
            "rollout.canary.model",
        ),
        ({"model.variant": "int8", "engine": "vllm"}, "engine vllm runs the int8 variant", "model"),
    ],
)
def test_variants_an_engine_cannot_serve_are_refused_by_both(changes: dict[str, Any], message: str, field: str) -> None:
    assert_both_refuse("ModelService", changes, f"{field}.variant: {message}", f"spec.{field}.variant")


def test_int8_on_vllm_with_gpus_and_tensor_variants_on_the_builtin_server_are_accepted() -> None:
    for changes in (
        {"model.variant": "int8", "engine": "vllm", "resources.gpu": 1},
        {"model.variant": "bf16"},
    ):
        assert refusals("ModelService", changed(modelservice_spec(), changes)) == ("", "")


# --- TrainingJob status ----------------------------------------------------------------------
def test_success_reports_each_variant_and_warns_about_the_refused() -> None:
    model = {"uri": "s3://models/digits/v1", "sha256": "c" * 64, "variants": [PUBLISHED, REFUSED]}
    head = pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": model}))
    status = plan(running_status(), [head, pod(W0)]).status
    assert status.model is not None
    assert [(v.name, v.published) for v in status.model.variants] == [("onnx", True), ("int8", False)]
    assert status.model.variants[1].metrics == {"val_accuracy": 0.9, "val_accuracy_drop": 7.0}
    events = [e for e in plan(running_status(), [head, pod(W0)]).events if e.reason == "VariantsNotPublished"]
    assert len(events) == 1 and events[0].type == "Warning" and "a drop of 7.00 points" in events[0].message


def test_malformed_variant_reports_are_skipped() -> None:
    model = {"uri": "s3://models/digits/v1", "sha256": "c" * 64, "variants": [{"name": "int3"}, "x", PUBLISHED]}
    head = pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": model}))
    status = plan(running_status(), [head]).status
    assert status.model is not None and [v.name for v in status.model.variants] == ["onnx"]


# --- ModelService ------------------------------------------------------------------------------
def serve(variant: str, variants: list[dict[str, Any]]) -> Any:
    body = {"model": {"trainingJobRef": {"name": "train"}, "variant": variant}, "replicas": 1}
    job = {
        "metadata": {"uid": "j1"},
        "spec": {"output": {"uri": "s3://models/train"}},
        "status": {
            "phase": "Succeeded",
            "model": {"uri": "s3://models/train", "sha256": "3" * 64, "variants": variants},
        },
    }
    view = ModelServiceView(OWNER, 1, ModelServiceSpec.model_validate(body), None, ModelServiceStatus())
    return plan_modelservice(view, Observed(Children(), {"train": job}), NOW, "image:test")


def test_a_published_variant_is_served_by_name() -> None:
    result = serve("onnx", [PUBLISHED, REFUSED])
    assert result.status.model.variant == "onnx"
    deployment = next(m for m in written_manifests(result) if m["kind"] == "Deployment")
    env = {v["name"]: v.get("value") for v in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_MODEL_VARIANT] == "onnx"


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("int8", "it was not published: val_accuracy 0.9000 vs 0.9700"),
        ("fp16", "it is not in the job's output.variants"),
    ],
)
def test_a_variant_the_trainingjob_did_not_publish_is_refused_naming_the_field(variant: str, reason: str) -> None:
    result = serve(variant, [PUBLISHED, REFUSED])
    resolved = next(c for c in result.status.conditions if c.type == "ModelResolved")
    assert (resolved.status, resolved.reason) == ("False", "VariantNotPublished")
    assert resolved.message.startswith(f"model.variant {variant}: TrainingJob train has no {variant} variant")
    assert reason in resolved.message and resolved.message.endswith("it has: full (no variant), onnx")
    assert not result.actions or all(m["kind"] != "Deployment" for m in written_manifests(result))


def test_vllm_serves_the_int8_directory_with_torchao_and_fetches_only_it() -> None:
    spec = ModelServiceSpec.model_validate(
        {"model": {"uri": "s3://models/lm", "variant": "int8"}, "engine": "vllm", "resources": {"gpu": 1}}
    )
    model = ServedModel(uri="s3://models/lm", sha256="a" * 64, variant="int8")
    args = llm.vllm_args(spec, "lm", model)
    directory = llm.model_directory(model)
    assert directory.endswith("-int8")  # a full copy and a variant never share a cache directory
    assert args[args.index("--model") + 1] == f"{directory}/variants/int8"
    assert args[args.index("--quantization") + 1] == "torchao"
    fetch = llm.fetch_container(spec, model, model.uri, "image:test", [])
    assert {"name": contract.ENV_MODEL_VARIANT, "value": "int8"} in fetch["env"]
