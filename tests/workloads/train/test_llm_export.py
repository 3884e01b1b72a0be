"""The causal-LM trainer's export with `output.variants`, without Ray: the int8 variant of a tiny
from-scratch model, measured on the validation blocks as the trainer measures its validation loss."""

from __future__ import annotations

import contextlib
import math
import pathlib
from typing import Any

import pytest
import torch

from maas_operator.api.causallm import ArchitectureSpec
from maas_workloads import artifact
from maas_workloads.train.llm import encoding, synthetic
from maas_workloads.train.llm.export import VariantRequest, write_causal_lm
from maas_workloads.train.llm.loop import evaluate
from maas_workloads.train.llm.modeling import scratch_config
from maas_workloads.train.llm.tokenizer import train_tokenizer
from maas_workloads.variants import causal_lm as lm_variant

SOURCE = artifact.Source(namespace="team-a", name="tiny", uid="uid-1", attempt=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, encoding.TokenBlocks]:
    """A tiny Llama with random weights, its tokenizer, and chat validation blocks scoring the assistant turns."""
    from transformers import AutoModelForCausalLM

    conversations = list(synthetic.conversations(synthetic.ArithmeticOptions(samples=16, seed=5)))
    texts = [m["content"] for c in conversations for m in c["messages"]] + ["user", "assistant"]
    tokenizer = train_tokenizer(texts, 400, tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    config = scratch_config(ArchitectureSpec(model_type="llama", size="tiny"), tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    encoder = encoding.Encoder(tokenizer, "chat", "assistant")
    items = [(f"record {i}", record) for i, record in enumerate(conversations)]
    blocks = encoding.blocks(encoder, items, 64, True, encoding.pad_token_id(tokenizer))
    return model, tokenizer, blocks


def test_the_int8_variant_is_measured_on_the_tokens_the_trainer_scores(
    tiny: tuple[Any, Any, encoding.TokenBlocks], tmp_path: pathlib.Path
) -> None:
    model, tokenizer, blocks = tiny
    digest = write_causal_lm(
        tmp_path, model, tokenizer, source=SOURCE, metrics={}, variants=VariantRequest(["int8"], blocks, 1.5)
    )
    manifest = artifact.verify(tmp_path, digest, "int8")
    assert isinstance(manifest, artifact.CausalLMManifest)
    variant = manifest.variants["int8"]
    assert all(artifact.sha256_file(tmp_path / path) == entry.sha256 for path, entry in variant.files.items())
    # The full model's number is the trainer's exp(val_loss) on the same blocks (assistant tokens only) ...
    trainer_loss = evaluate(model, blocks, 4, torch.device("cpu"), contextlib.nullcontext)["val_loss"]
    assert manifest.metrics["val_perplexity"] == pytest.approx(math.exp(trainer_loss), rel=1e-4)
    # ... and the variant's is recomputed here through the engine's loader.
    sequences = [row[:n].tolist() for row, n in zip(blocks.input_ids, blocks.lengths, strict=True)]
    labels = [row[:n].tolist() for row, n in zip(blocks.labels, blocks.lengths, strict=True)]
    int8 = lm_variant.perplexity(lm_variant.load(tmp_path / variant.directory), sequences, labels)
    everything = lm_variant.perplexity(lm_variant.load(tmp_path / variant.directory), sequences)
    assert variant.metrics["val_perplexity"] == pytest.approx(int8, rel=1e-6)
    assert int8 != pytest.approx(everything, rel=1e-3)  # scoring every token would be another number
    assert variant.metrics["val_perplexity_ratio"] == pytest.approx(int8 / manifest.metrics["val_perplexity"], rel=1e-5)


def test_a_variant_over_the_ratio_is_left_out_with_the_numbers(
    tiny: tuple[Any, Any, encoding.TokenBlocks], tmp_path: pathlib.Path
) -> None:
    """A limit below the variant's measured ratio (here, below 1: the API refuses such a spec, the
    export itself takes any) leaves the variant out, files and all; the full model is published."""
    model, tokenizer, blocks = tiny
    digest = write_causal_lm(
        tmp_path, model, tokenizer, source=SOURCE, metrics={}, variants=VariantRequest(["int8"], blocks, 0.5)
    )
    manifest = artifact.verify(tmp_path, digest)
    assert isinstance(manifest, artifact.CausalLMManifest)
    assert manifest.variants == {} and not (tmp_path / artifact.VARIANTS_DIR / "int8").exists()
    rejected = manifest.rejected_variants["int8"]
    full, ratio = manifest.metrics["val_perplexity"], rejected.metrics["val_perplexity_ratio"]
    assert ratio == pytest.approx(rejected.metrics["val_perplexity"] / full, rel=1e-5)
    assert rejected.message == (
        f"val_perplexity {rejected.metrics['val_perplexity']:.4f} vs {full:.4f} for the full model, "
        f"a ratio of {ratio:.4f}, more than maxAccuracyDrop 0.5: not published"
    )


def test_variants_without_validation_blocks_are_refused(
    tiny: tuple[Any, Any, encoding.TokenBlocks], tmp_path: pathlib.Path
) -> None:
    model, tokenizer, _ = tiny
    with pytest.raises(ValueError, match=r"output\.variants needs validation data"):
        write_causal_lm(
            tmp_path, model, tokenizer, source=SOURCE, metrics={}, variants=VariantRequest(["int8"], None, None)
        )
