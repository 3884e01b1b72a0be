"""Settings of the causal-LM engine: flags, each defaulting to the MAAS_* variable the operator sets.

The names follow vLLM's flags (`--max-model-len`, `--max-num-seqs`, `--block-size`,
`--max-num-batched-tokens`, `--dtype`), so the operator maps one ModelService onto either engine.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from maas_workloads import contract

DTYPES: Final = ("auto", "float32", "bfloat16", "float16")


class LLMSettingsError(ValueError):
    """A flag or variable of the LLM engine has a value it cannot use; the message names both."""


@dataclass(frozen=True)
class LLMSettings:
    max_model_len: int | None
    """Most tokens (prompt + completion) per sequence; None: the artifact's context length."""
    max_num_seqs: int
    """Sequences generated at once; more requests wait, up to the server's max queue size."""
    kv_cache_bytes: int
    """The paged KV cache's memory budget."""
    block_size: int
    """Tokens per KV-cache block (page)."""
    max_batch_tokens: int
    """Tokens one engine step computes at most (prompt chunks + one per decoding sequence)."""
    dtype: str
    """auto (the weights' dtype; bfloat16 for float32 weights on CUDA), float32, bfloat16 or float16."""


_FLAGS: Final = (
    (
        "--max-model-len",
        contract.ENV_MAX_MODEL_LEN,
        "prompt + completion tokens per sequence (default: the model's)",
    ),
    (
        "--max-num-seqs",
        contract.ENV_MAX_NUM_SEQS,
        f"sequences generated at once (default: {contract.DEFAULT_MAX_NUM_SEQS})",
    ),
    (
        "--kv-cache-bytes",
        contract.ENV_KV_CACHE_BYTES,
        f"KV-cache memory budget in bytes (default: {contract.DEFAULT_KV_CACHE_BYTES})",
    ),
    ("--block-size", contract.ENV_BLOCK_SIZE, f"tokens per KV-cache block (default: {contract.DEFAULT_BLOCK_SIZE})"),
    (
        "--max-num-batched-tokens",
        contract.ENV_MAX_NUM_BATCHED_TOKENS,
        f"tokens per engine step (default: {contract.DEFAULT_MAX_NUM_BATCHED_TOKENS})",
    ),
    ("--dtype", contract.ENV_DTYPE, f"{', '.join(DTYPES)} (default: auto)"),
)


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Add the LLM flags to the server's parser, under their own group."""
    group = parser.add_argument_group("causal language models (OpenAI API)")
    for flag, variable, help_text in _FLAGS:
        group.add_argument(flag, default=environ.get(variable), help=f"{help_text} [env {variable}]")


def from_values(values: Mapping[str, object]) -> LLMSettings:
    """LLMSettings from parsed arguments; raises LLMSettingsError naming the flag and variable."""
    names = {flag.removeprefix("--").replace("-", "_"): f"{flag} ({variable})" for flag, variable, _ in _FLAGS}

    def integer(key: str, default: int | None, minimum: int) -> int | None:
        raw = values.get(key)
        if raw in (None, ""):
            return default
        try:
            value = int(str(raw))
        except ValueError:
            raise LLMSettingsError(f"{names[key]} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise LLMSettingsError(f"{names[key]} must be at least {minimum}, got {raw!r}")
        return value

    def required(key: str, default: int, minimum: int) -> int:
        value = integer(key, default, minimum)
        assert value is not None
        return value

    dtype = str(values.get("dtype") or "auto").lower()
    if dtype not in DTYPES:
        raise LLMSettingsError(f"{names['dtype']} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return LLMSettings(
        max_model_len=integer("max_model_len", None, 1),
        max_num_seqs=required("max_num_seqs", contract.DEFAULT_MAX_NUM_SEQS, 1),
        kv_cache_bytes=required("kv_cache_bytes", contract.DEFAULT_KV_CACHE_BYTES, 1024),
        block_size=required("block_size", contract.DEFAULT_BLOCK_SIZE, 4),
        max_batch_tokens=required("max_num_batched_tokens", contract.DEFAULT_MAX_NUM_BATCHED_TOKENS, 16),
        dtype=dtype,
    )
