"""The LLM server's pure parts: sampling noise, stop strings, slots, settings, cache sizing."""

from __future__ import annotations

import asyncio
import types

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from maas_workloads import contract
from maas_workloads.artifact import ArtifactError
from maas_workloads.serve.llm import settings as llm_settings
from maas_workloads.serve.llm.admission import Slots
from maas_workloads.serve.llm.engine import cache_shape
from maas_workloads.serve.llm.errors import OpenAIError
from maas_workloads.serve.llm.metrics import LLMMetrics
from maas_workloads.serve.llm.sampling import gumbel_noise, token_key
from maas_workloads.serve.llm.text import TextStream
from maas_workloads.serve.settings import SettingsError, parse
from tests.workloads.llm.artifacts import tokenizer


def test_gumbel_noise_depends_only_on_the_key() -> None:
    keys = torch.tensor([token_key(7, 10), token_key(7, 11), 0, token_key(7, 10)])
    noise = gumbel_noise(keys, 64)
    assert torch.equal(noise[0], noise[3])  # same seed and position: same noise, whatever the batch
    assert not torch.equal(noise[0], noise[1])
    assert torch.count_nonzero(noise[2]) == 0  # key 0: greedy
    assert torch.isfinite(noise).all()


def test_gumbel_argmax_samples_the_softmax() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    keys = torch.tensor([token_key(seed, 0) for seed in range(4000)])
    picks = torch.argmax(logits + gumbel_noise(keys, 3), dim=-1)
    frequencies = torch.bincount(picks, minlength=3).float() / len(keys)
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tokenizer(512)


def test_stop_string_is_cut_and_never_streamed(tok) -> None:  # type: ignore[no-untyped-def]
    stream = TextStream(tok, ["model serve"])
    sent = []
    for token in tok.encode("the cluster model serve the pod", add_special_tokens=False):
        sent.append(stream.push([token]))
        if stream.stopped_by:
            break
    assert "".join(sent) == "the cluster "
    assert stream.stopped_by == "model serve"
    assert stream.finish() == ""


def test_text_without_stop_is_complete(tok) -> None:  # type: ignore[no-untyped-def]
    stream = TextStream(tok, ["never"])
    text = "".join(stream.push([token]) for token in tok.encode("the queue é ü", add_special_tokens=False))
    assert text + stream.finish() == "the queue é ü"


async def test_slots_are_fifo_and_refuse_beyond_the_queue() -> None:
    slots = Slots(capacity=2, max_waiting=1)
    await slots.acquire(2)
    waiter = asyncio.create_task(slots.acquire(1))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as refused:
        await slots.acquire(1)
    assert refused.value.status == 429 and refused.value.headers["retry-after"] == "1"
    slots.release(2)
    await waiter
    assert slots.used == 1 and slots.waiting == 0
    with pytest.raises(OpenAIError) as too_many:
        await slots.acquire(3)
    assert too_many.value.status == 400 and too_many.value.param == "n"


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(capacity=1, max_waiting=4)
    await slots.acquire(1)
    waiter = asyncio.create_task(slots.acquire(1))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert slots.waiting == 0
    slots.release(1)
    assert slots.used == 0


def test_llm_flags_and_their_errors() -> None:
    settings = parse(["--model", "/m", "--max-num-seqs", "8", "--dtype", "bfloat16"], {"MAAS_MAX_MODEL_LEN": "128"})
    assert settings.llm.max_num_seqs == 8 and settings.llm.dtype == "bfloat16" and settings.llm.max_model_len == 128
    with pytest.raises(SettingsError, match=r"--max-num-seqs \(MAAS_MAX_NUM_SEQS\) must be at least 1"):
        parse(["--model", "/m"], {"MAAS_MAX_NUM_SEQS": "0"})
    with pytest.raises(SettingsError, match=r"--dtype \(MAAS_DTYPE\)"):
        parse(["--model", "/m", "--dtype", "int3"], {})


def _config(layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 64) -> object:
    text = types.SimpleNamespace(
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=hidden
    )
    return types.SimpleNamespace(get_text_config=lambda: text)


def test_kv_cache_is_sized_from_configuration_and_capped() -> None:
    settings = llm_settings.from_values({"kv_cache_bytes": str(1 << 30), "max_num_seqs": "4", "block_size": "32"})
    shape = cache_shape(_config(), torch.float32, settings, max_model_len=256)
    assert shape.bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert shape.tokens == 4 * 256  # capped by max_num_seqs x max_model_len, not the 1 GiB budget
    small = llm_settings.from_values({"kv_cache_bytes": "4096"})
    with pytest.raises(ArtifactError, match="MAAS_KV_CACHE_BYTES"):
        cache_shape(_config(), torch.float32, small, max_model_len=256)


def test_every_vllm_metric_of_the_contract_is_exported_with_its_type() -> None:
    metrics = LLMMetrics("m")
    metrics.watch(lambda: 0, lambda: 0, lambda: 0)
    metrics.finished("stop")
    families = {family.name: family for family in text_string_to_metric_families(metrics.exposition().decode())}
    for name, kind in contract.VLLM_METRICS.items():
        assert name in families and families[name].type == kind, name
        labels = families[name].samples[0].labels
        assert labels[contract.VLLM_MODEL_LABEL] == "m", name
