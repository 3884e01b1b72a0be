"""`maas run` for language models: which question it asks, and how it tells the user to ask more."""

from __future__ import annotations

import pathlib
import shlex

from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.local_llm import held_out_question, is_causal_lm, try_more
from maas_workloads import artifact
from maas_workloads.train.llm import synthetic
from tests.operator.test_api import example_spec
from tests.operator.test_causallm_api import llm_example


def test_the_question_is_a_sum_the_data_never_contains() -> None:
    spec = TrainingJobSpec.model_validate(llm_example())
    question = held_out_question(spec)
    assert question is not None and question.expected is not None
    asked = question.text.removeprefix("What is ").rstrip("?")
    a, b = (int(x) for x in asked.split(" + "))
    assert synthetic.is_held_out(a, b) and question.expected.endswith(f"{asked} = {a + b}")
    options = synthetic.ArithmeticOptions.parse(spec.trainer.dataset.uri)  # type: ignore[union-attr]
    assert question.text not in {c["messages"][0]["content"] for c in synthetic.conversations(options)}


def test_other_data_gets_a_greeting_and_classifiers_no_question() -> None:
    text_data = {**llm_example(), "trainer": {**llm_example()["trainer"], "dataset": {"uri": "file:///data/a.jsonl"}}}
    greeting = held_out_question(TrainingJobSpec.model_validate(text_data))
    assert greeting is not None and greeting.expected is None
    assert held_out_question(TrainingJobSpec.model_validate(example_spec())) is None


def test_ask_more_with_curl_and_the_openai_client() -> None:
    curl, python = try_more("http://127.0.0.1:9000", "arithmetic", "s3cret")[1:]
    command = shlex.split(curl)
    assert command[:3] == ["curl", "-sN", "http://127.0.0.1:9000/v1/chat/completions"]
    assert "Authorization: Bearer s3cret" in command and '"model": "arithmetic"' in command[-1]
    assert 'base_url="http://127.0.0.1:9000/v1"' in python and 'api_key="s3cret"' in python


def test_only_causal_lm_artifacts_are_asked_questions(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    manifest = artifact.CausalLMManifest(
        format="hf-causal-lm",
        architecture="llama",
        context_length=512,
        files={
            name: artifact.FileEntry(sha256="0" * 64, size=1)
            for name in (
                "config.json",
                "generation_config.json",
                "tokenizer_config.json",
                "tokenizer.json",
                "m.safetensors",
            )
        },
    )
    (tmp_path / "manifest.json").write_bytes(manifest.to_json())
    assert is_causal_lm(tmp_path.as_uri())
    assert not is_causal_lm((tmp_path / "missing").as_uri()) and not is_causal_lm("s3://models/m")
