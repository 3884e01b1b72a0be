"""The weight-only int8 variant of a tiny causal LM: published with its perplexity (recomputed
here), refused over the limit with the numbers, and served through the `openai` client."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import openai
import pytest
import torch

from maas_workloads import artifact
from maas_workloads.causal_lm import save_causal_lm
from maas_workloads.variants import causal_lm as lm_variant
from tests.workloads.llm.artifacts import corpus, random_llama, tokenizer
from tests.workloads.llm.conftest import MODEL, TOKEN, start
from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow
AGREEMENT = 0.9
"""Weight-only int8 moves each weight by at most half a step (a 255th of its row's range) and the
activations round to bfloat16: on random weights, whose next-token distributions are nearly flat,
the top token may flip where the two best are within that noise; 90% of positions must agree."""


def build(directory: pathlib.Path, max_ratio: float | None) -> tuple[artifact.CausalLMManifest, str, list[list[int]]]:
    tok = tokenizer(512)
    model = random_llama(tok)
    validation = [tok.encode(line) for line in corpus(16, seed=1)]
    manifest, digest = save_causal_lm(
        model, tok, directory, variants=["int8"], validation=validation, max_perplexity_ratio=max_ratio
    )
    return manifest, digest, validation


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pathlib.Path, artifact.CausalLMManifest, list[list[int]]]:
    directory = tmp_path_factory.mktemp("lm") / "tiny-llama"
    manifest, _, validation = build(directory, max_ratio=1.05)
    return directory, manifest, validation


def test_the_int8_variant_is_listed_with_checksums_and_its_recomputed_perplexity(
    published: tuple[pathlib.Path, artifact.CausalLMManifest, list[list[int]]],
) -> None:
    directory, manifest, validation = published
    variant = manifest.variants["int8"]
    assert variant.directory == "variants/int8" and variant.datatypes == ["INT8", "BF16"]
    for relative, entry in variant.files.items():
        assert artifact.sha256_file(directory / relative) == entry.sha256
    assert variant.size_bytes < sum(entry.size for entry in manifest.files.values())  # int8 weights are smaller
    full = lm_variant.perplexity(lm_variant.load(directory, torch.float32), validation)
    int8_model = lm_variant.load(directory / "variants" / "int8")
    assert any(isinstance(m, lm_variant.Int8PackLinear) for m in int8_model.modules())
    int8 = lm_variant.perplexity(int8_model, validation)
    assert manifest.metrics["val_perplexity"] == pytest.approx(full, rel=1e-6)
    assert variant.metrics["val_perplexity"] == pytest.approx(int8, rel=1e-6)
    assert variant.metrics["val_perplexity_ratio"] == pytest.approx(int8 / full, rel=1e-5)
    assert variant.metrics["val_perplexity_ratio"] <= 1.05


def test_next_tokens_agree_with_the_full_model(
    published: tuple[pathlib.Path, artifact.CausalLMManifest, list[list[int]]],
) -> None:
    directory, _, validation = published
    full, int8 = lm_variant.load(directory, torch.float32), lm_variant.load(directory / "variants" / "int8")
    agree = total = 0
    with torch.inference_mode():
        for sequence in validation:
            ids = torch.tensor([sequence])
            a, b = full(input_ids=ids).logits.argmax(-1), int8(input_ids=ids).logits.argmax(-1)
            agree += int((a == b).sum())
            total += a.numel()
    assert agree / total >= AGREEMENT


def test_over_the_perplexity_ratio_is_not_published_and_says_by_how_much(tmp_path: pathlib.Path) -> None:
    manifest, digest, _ = build(tmp_path / "lm", max_ratio=0.5)
    assert manifest.variants == {} and not (tmp_path / "lm" / "variants" / "int8").exists()
    rejected = manifest.rejected_variants["int8"]
    ratio = rejected.metrics["val_perplexity"] / manifest.metrics["val_perplexity"]
    assert rejected.metrics["val_perplexity_ratio"] == pytest.approx(ratio, rel=1e-5)
    assert f"a ratio of {rejected.metrics['val_perplexity_ratio']:.4f}, more than maxAccuracyDrop 0.5" in (
        rejected.message
    )
    artifact.verify(tmp_path / "lm", digest)


@pytest.fixture(scope="module")
def int8_server(
    published: tuple[pathlib.Path, artifact.CausalLMManifest, list[list[int]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    server = start(published[0], tmp_path_factory.mktemp("logs") / "int8.log", MAAS_MODEL_VARIANT="int8")
    try:
        yield server
    finally:
        server.stop()


def test_the_int8_variant_is_served_over_the_openai_api(int8_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{int8_server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "the model"}], max_tokens=8, temperature=0
    )
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert '"model ready"' in int8_server.log() and "bfloat16" in int8_server.log()
