"""The artifact formats: what each manifest must list, and how a reader tells them apart."""

from __future__ import annotations

import json
import pathlib

import pytest

from maas_workloads.artifact import (
    AdapterManifest,
    ArtifactError,
    CausalLMManifest,
    TensorManifest,
    describe_files,
    load_manifest,
    verify,
    write_manifest,
)

CAUSAL_LM_FILES = {
    "config.json": "{}",
    "generation_config.json": "{}",
    "tokenizer_config.json": '{"chat_template": "{{ messages }}"}',
    "tokenizer.json": "{}",
    "model.safetensors": "weights",
}


def _write(directory: pathlib.Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_causal_lm_round_trip(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, CAUSAL_LM_FILES)
    manifest = CausalLMManifest(
        format="hf-causal-lm", architecture="llama", context_length=256, files=describe_files(tmp_path)
    )
    digest = write_manifest(tmp_path, manifest)
    loaded, loaded_digest = load_manifest(tmp_path, digest)
    assert isinstance(loaded, CausalLMManifest)
    assert loaded_digest == digest
    assert json.loads((tmp_path / "manifest.json").read_text())["contextLength"] == 256
    assert isinstance(verify(tmp_path, digest), CausalLMManifest)


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json"])
def test_causal_lm_needs_its_files(tmp_path: pathlib.Path, missing: str) -> None:
    _write(tmp_path, {name: text for name, text in CAUSAL_LM_FILES.items() if name != missing})
    manifest = CausalLMManifest(
        format="hf-causal-lm", architecture="llama", context_length=256, files=describe_files(tmp_path)
    )
    with pytest.raises(ArtifactError, match="safetensors" if missing.endswith("safetensors") else missing):
        write_manifest(tmp_path, manifest)


def test_adapter_names_its_base_model(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, {"adapter_config.json": "{}", "adapter_model.safetensors": "lora"})
    manifest = AdapterManifest(
        format="peft-lora",
        base_model={"uri": "s3://models/base", "sha256": "ab" * 32},
        rank=8,
        alpha=16,
        target_modules=["q_proj", "v_proj"],
        context_length=256,
        files=describe_files(tmp_path),
    )
    digest = write_manifest(tmp_path, manifest)
    loaded = verify(tmp_path, digest)
    assert isinstance(loaded, AdapterManifest)
    assert loaded.base_model.uri == "s3://models/base"


def test_unknown_format_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "gguf", "files": {}}))
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_manifest(tmp_path)


def test_tensor_manifest_needs_its_model_file(tmp_path: pathlib.Path) -> None:
    manifest = TensorManifest(format="torchscript", model_file="model.pt", inputs=[], outputs=[], files={})
    with pytest.raises(ArtifactError, match=r"model\.pt"):
        write_manifest(tmp_path, manifest)
