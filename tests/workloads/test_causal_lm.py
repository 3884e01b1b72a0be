"""Publishing causal LMs and LoRA adapters as artifacts that verify and that transformers/PEFT load back."""

from __future__ import annotations

import json
import pathlib

import pytest
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from maas_workloads import artifact
from maas_workloads.causal_lm import save_causal_lm, save_lora_adapter
from tests.workloads.llm.artifacts import TINY, llama_artifact, tokenizer


def test_a_published_causal_lm_verifies_and_loads(tmp_path: pathlib.Path) -> None:
    digest = llama_artifact(tmp_path / "lm")
    manifest = artifact.verify(tmp_path / "lm", digest)
    assert isinstance(manifest, artifact.CausalLMManifest)
    assert manifest.architecture == "llama" and manifest.context_length == TINY["max_position_embeddings"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert manifest.parameters == sum(parameter.numel() for parameter in model.parameters())
    tok = AutoTokenizer.from_pretrained(tmp_path / "lm")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    # transformers 4 (vLLM's) resolves this class name; transformers 5's own name it would not.
    assert json.loads((tmp_path / "lm" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )


def test_a_tokenizer_without_chat_template_is_refused(tmp_path: pathlib.Path) -> None:
    tok = tokenizer(300)
    tok.chat_template = None
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **TINY))
    with pytest.raises(ValueError, match="chat_template"):
        save_causal_lm(model, tok, tmp_path / "lm")
    assert not (tmp_path / "lm" / "manifest.json").exists()


def test_a_lora_adapter_names_its_base_and_loads_on_it(tmp_path: pathlib.Path) -> None:
    base_digest = llama_artifact(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    reference = artifact.BaseModelReference(uri="s3://models/base", sha256=base_digest)
    manifest, digest = save_lora_adapter(lora, tmp_path / "adapter", base_model=reference, context_length=256)
    verified = artifact.verify(tmp_path / "adapter", digest)
    assert isinstance(verified, artifact.AdapterManifest) and verified == manifest
    assert manifest.rank == 4 and manifest.alpha == 8 and manifest.target_modules == ["q_proj", "v_proj"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert any("lora_A" in name for name, _ in loaded.named_parameters())
