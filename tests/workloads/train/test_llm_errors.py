"""Causal-LM specs that can never work fail on the head in seconds: exit 64, a message naming the field.

Each case the issue names runs the real launcher's head (no workers: it fails before starting Ray);
they run at once, so they cost about one head's start-up. More cases of the same kind (errors of the
head's checks) run those checks in this process.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import pytest

from maas_workloads import contract
from maas_workloads.causal_lm import save_causal_lm
from maas_workloads.train.llm import synthetic
from maas_workloads.train.llm.tokenizer import train_tokenizer
from tests.workloads.train.cluster import LocalJob, spec


@pytest.fixture(scope="module")
def base_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """A tiny Hugging Face model (context 64) as a plain directory, and a copy without its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("bases")
    complete = root / "complete"
    tokenizer = train_tokenizer(["What is 1 + 2?", "1 + 2 = 3", "user", "assistant"], 300, complete)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(complete)
    without_tokenizer = root / "without-tokenizer"
    shutil.copytree(complete, without_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (without_tokenizer / name).unlink(missing_ok=True)
    without_template = root / "without-chat-template"
    shutil.copytree(complete, without_template)
    (without_template / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((without_template / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (without_template / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    published = root / "published"
    save_causal_lm(LlamaForCausalLM.from_pretrained(complete), tokenizer, published)
    return {
        "complete": complete,
        "without-tokenizer": without_tokenizer,
        "without-chat-template": without_template,
        "published": published,
    }


def _more_cases(base_models: dict[str, pathlib.Path], data: pathlib.Path) -> dict[str, tuple[dict[str, Any], str]]:
    """More of the same kind (ConfigurationError from the head's checks), checked without a head process."""
    chat = {"uri": data.as_uri(), "format": "chat"}
    lora = {"baseModel": {"uri": base_models["complete"].as_uri()}, "method": "lora", "sequenceLength": 32}
    return {
        "chat data for a tokenizer without a chat template": (
            {
                "causalLM": {**lora, "baseModel": {"uri": base_models["without-chat-template"].as_uri()}},
                "dataset": chat,
            },
            "spec.trainer.causalLM.baseModel.uri: the tokenizer of "
            + base_models["without-chat-template"].as_uri()
            + " has no chat template",
        ),
        "a pin the base model does not match": (
            {
                "causalLM": {**lora, "baseModel": {"uri": base_models["published"].as_uri(), "sha256": "0" * 64}},
                "dataset": chat,
            },
            "spec.trainer.causalLM.baseModel.sha256: "
            + base_models["published"].as_uri()
            + "/manifest.json has sha256",
        ),
        "a pin without a manifest": (
            {
                "causalLM": {**lora, "baseModel": {"uri": base_models["complete"].as_uri(), "sha256": "0" * 64}},
                "dataset": chat,
            },
            "spec.trainer.causalLM.baseModel.sha256: "
            + base_models["complete"].as_uri()
            + " has no manifest.json to check the pin against",
        ),
        "data smaller than one global batch": (
            {"causalLM": lora, "dataset": chat, "hyperparameters": {"batchSize": 512}},
            "spec.trainer.dataset.uri: the data makes",
        ),
    }


def _cases(base_models: dict[str, pathlib.Path], data: pathlib.Path) -> dict[str, tuple[dict[str, Any], str]]:
    """The cases the issue names, each on a real head: (trainer, message). qlora on CPU: the API refuses it."""
    chat = {"uri": data.as_uri(), "format": "chat"}
    base = {"uri": base_models["complete"].as_uri()}
    lora = {"baseModel": base, "method": "lora", "sequenceLength": 32}
    return {
        "unknown target module": (
            {"causalLM": {**lora, "lora": {"targetModules": ["qkv_proj"]}}, "dataset": chat},
            "spec.trainer.causalLM.lora.targetModules: Target modules {'qkv_proj'} not found in the base model",
        ),
        "base model without a tokenizer": (
            {"causalLM": {**lora, "baseModel": {"uri": base_models["without-tokenizer"].as_uri()}}, "dataset": chat},
            "spec.trainer.causalLM.baseModel.uri: " + base_models["without-tokenizer"].as_uri() + " has no tokenizer",
        ),
        "chat data without messages": (
            {"causalLM": lora, "dataset": {"uri": (data.parent / "text.jsonl").as_uri(), "format": "chat"}},
            "spec.trainer.dataset.uri: " + (data.parent / "text.jsonl").as_uri() + " line 1: chat data needs a "
            "non-empty `messages` list of {role, content} objects; this record has keys text",
        ),
        "sequence length above the context": (
            {"causalLM": {**lora, "sequenceLength": 128}, "dataset": chat},
            "spec.trainer.causalLM.sequenceLength: 128 is longer than the base model's context length 64",
        ),
    }


@pytest.mark.slow
def test_bad_specs_exit_64_naming_the_field(base_models: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    data = chat_data(tmp_path)
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "1 + 2 = 3"}) + "\n")
    jobs = {}
    for name, (trainer, _) in _cases(base_models, data).items():
        workdir = tmp_path / name.replace(" ", "-")
        output = (workdir / "out" / "model").as_uri()
        jobs[name] = LocalJob(workdir, spec(trainer=trainer), workers=0, output_uri=output).start()
    try:
        for name, (_, message) in _cases(base_models, data).items():
            job = jobs[name]
            assert job.wait(timeout=180) == contract.ExitCode.CONFIGURATION_ERROR, (name, job.log("head")[-3000:])
            assert message in job.termination_message()["error"], name
    finally:
        for job in jobs.values():
            job.stop()


def chat_data(directory: pathlib.Path) -> pathlib.Path:
    data = directory / "chat.jsonl"
    options = synthetic.ArithmeticOptions(samples=50)
    data.write_text("".join(json.dumps(record) + "\n" for record in synthetic.conversations(options)))
    return data


@pytest.mark.parametrize(
    "case",
    [
        "chat data for a tokenizer without a chat template",
        "a pin the base model does not match",
        "data smaller than one global batch",
    ],
)
def test_more_bad_specs_are_configuration_errors_naming_the_field(
    base_models: dict[str, pathlib.Path], tmp_path: pathlib.Path, case: str
) -> None:
    """What the head runs before it exits 64 (prepare), in this process."""
    from maas_operator.api.trainingjob import TrainingJobSpec
    from maas_workloads.train.config import JobContext
    from maas_workloads.train.errors import ConfigurationError
    from maas_workloads.train.llm.prepare import prepare

    trainer, message = _more_cases(base_models, chat_data(tmp_path))[case]
    job = TrainingJobSpec.model_validate(spec(trainer=trainer))
    context = JobContext(job, "test", "default", "uid", 1, "127.0.0.1", 0, 2, 2, None, "file:///unused", 0)
    with pytest.raises(ConfigurationError) as refused:
        prepare(context, tmp_path / "scratch")
    assert message in str(refused.value)


def test_variants_without_validation_sequences_are_a_configuration_error(
    base_models: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """output.variants with a validation split too small to hold out a record: refused before training,
    not after it when the variant cannot be measured."""
    from maas_operator.api.trainingjob import TrainingJobSpec
    from maas_workloads.train.config import JobContext
    from maas_workloads.train.errors import ConfigurationError
    from maas_workloads.train.llm.prepare import prepare

    lora = {"baseModel": {"uri": base_models["complete"].as_uri()}, "method": "lora", "sequenceLength": 32}
    data = {"uri": chat_data(tmp_path).as_uri(), "format": "chat"}
    trainer = {"causalLM": lora, "dataset": data, "hyperparameters": {"batchSize": 1, "validationSplit": 0.01}}
    output = {"uri": "file:///unused", "variants": ["int8"]}
    job = TrainingJobSpec.model_validate(spec(trainer=trainer, output=output))
    context = JobContext(job, "test", "default", "uid", 1, "127.0.0.1", 0, 2, 2, None, "file:///unused", 0)
    with pytest.raises(ConfigurationError) as refused:
        prepare(context, tmp_path / "scratch")
    assert str(refused.value) == (
        "spec.output.variants: the validation data makes no sequences to measure perplexity on: "
        "raise spec.trainer.hyperparameters.validationSplit"
    )
