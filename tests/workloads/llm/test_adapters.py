"""A fine-tune published as a LoRA adapter is served merged into the base model it names."""

from __future__ import annotations

import pathlib

import openai
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from maas_workloads import artifact
from maas_workloads.causal_lm import save_lora_adapter
from maas_workloads.fetch import fetch
from tests.workloads.llm.conftest import MODEL, TOKEN, start


@pytest.fixture(scope="module")
def adapter_dir(llama_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base_sha256 = artifact.sha256_file(llama_dir / "manifest.json")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    # Random (not zero) B matrices, so that the merge visibly changes the weights.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    directory = tmp_path_factory.mktemp("adapter") / "tiny-lora"
    reference = artifact.BaseModelReference(uri=f"file://{llama_dir}", sha256=base_sha256)
    save_lora_adapter(get_peft_model(base, config), directory, base_model=reference, context_length=256)
    return directory


def test_fetch_merges_an_adapter_into_its_base(
    adapter_dir: pathlib.Path, llama_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    destination = tmp_path / "cache" / "model"
    assert fetch(f"file://{adapter_dir}", destination, artifact.sha256_file(adapter_dir / "manifest.json"))
    merged = artifact.verify(destination)
    assert isinstance(merged, artifact.CausalLMManifest) and merged.architecture == "llama"
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        load_file(destination / "model.safetensors")[name], load_file(llama_dir / "model.safetensors")[name]
    )
    kept = load_file(destination / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(kept, load_file(llama_dir / "model.safetensors")["model.layers.0.mlp.up_proj.weight"])


def test_an_adapter_for_another_base_is_refused(adapter_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for path in adapter_dir.iterdir():
        (wrong / path.name).write_bytes(path.read_bytes())
    manifest = artifact.load_manifest(wrong)[0]
    assert isinstance(manifest, artifact.AdapterManifest)
    pinned = manifest.base_model.model_copy(update={"sha256": "0" * 64})
    artifact.write_manifest(wrong, manifest.model_copy(update={"base_model": pinned}))
    with pytest.raises(artifact.ArtifactError, match="was pinned"):
        fetch(f"file://{wrong}", tmp_path / "cache" / "model", None)


@pytest.mark.slow
def test_the_server_serves_an_adapter_artifact(adapter_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = start(adapter_dir, tmp_path / "server.log", MAAS_MODEL_CACHE_DIR=str(tmp_path / "cache"))
    try:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
        answer = api.completions.create(model=MODEL, prompt="the pod", max_tokens=5, temperature=0)
        assert answer.usage is not None and answer.usage.completion_tokens == 5
        assert "merged into its base" in server.log()
    finally:
        server.stop()
