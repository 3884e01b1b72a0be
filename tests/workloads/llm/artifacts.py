"""Causal-LM artifacts built here, never downloaded: a BPE tokenizer trained on generated text,
with a chat template, and a Llama-architecture model with random weights from a config."""

from __future__ import annotations

import pathlib
import random
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from maas_workloads import artifact
from maas_workloads.causal_lm import save_causal_lm

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "on",
    "with",
    "model",
    "serve",
    "train",
    "token",
    "batch",
    "cache",
    "queue",
    "stream",
    "cluster",
    "pod",
    "node",
    "alpha",
    "beta",
    "gamma",
    "delta",
    "fast",
    "slow",
    "red",
    "blue",
    "green",
    "small",
    "large",
    "first",
    "last",
    "open",
    "close",
    "ready",
]

TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
"""~0.5M parameters, fast enough that tests measure the server; head size 32: vLLM's CPU attention needs >= 32."""
BENCHMARK = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 1024,
}
"""~85M parameters with a 2048-token vocabulary: a realistic shape for 2 CPU cores."""


def corpus(lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) + "." for _ in range(lines)]


def tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on generated sentences, with the chat template above."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus(2000), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
    )


def random_llama(tok: Any, shape: dict[str, Any] | None = None, seed: int = 0) -> LlamaForCausalLM:
    """A Llama of `shape` (default TINY) with random weights (seeded) for tokenizer `tok`, untied embeddings."""
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **(shape or TINY),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return model


def llama_artifact(
    directory: pathlib.Path, shape: dict[str, Any] | None = None, vocab_size: int = 512, seed: int = 0
) -> str:
    """Build and publish a random-weight Llama; returns the manifest's sha256."""
    tok = tokenizer(vocab_size)
    model = random_llama(tok, shape, seed)
    _, digest = save_causal_lm(model, tok, directory, source=artifact.Source(name="tiny-llama"))
    return digest
