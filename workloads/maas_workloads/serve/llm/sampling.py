"""Per-request sampling inside transformers' continuous batching, reproducible per seed.

transformers' engine samples every sequence of a batch with one shared random generator, so a
request's text would depend on which other requests happened to share its batches. Instead,
the engine runs greedy (argmax) and these logits processors turn argmax into sampling per
request: temperature, top-k and top-p are transformers' own per-request warpers; the last
processor adds Gumbel noise derived only from (request seed, token position), and argmax of
logits + Gumbel noise is a sample from softmax(logits) (the Gumbel-max trick). A request with
a seed therefore produces the same text alone or among 31 others, as vLLM promises for `seed`.
Greedy requests (temperature 0) get no noise.
"""

from __future__ import annotations

from typing import Any, Final

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
    ContinuousBatchingTemperatureLogitsWarper,
    ContinuousBatchingTopKLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

_MASK32: Final = 0xFFFFFFFF
_MASK64: Final = (1 << 64) - 1
# splitmix64's constants (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014),
# as signed int64 for torch, whose integer arithmetic wraps around.
_GOLDEN: Final = 0x9E3779B97F4A7C15
_MIX1: Final = 0xBF58476D1CE4E5B9
_MIX2: Final = 0x94D049BB133111EB


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _splitmix64(value: int) -> int:
    z = (value + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _shift_right(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negative numbers)."""
    return (tensor >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64_tensor(tensor: torch.Tensor) -> torch.Tensor:
    z = tensor + _signed64(_GOLDEN)
    z = (z ^ _shift_right(z, 30)) * _signed64(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed64(_MIX2)
    return z ^ _shift_right(z, 31)


def token_key(seed: int, position: int) -> int:
    """A non-zero 32-bit key for the token at `position` (prompt + generated so far) of a request with `seed`."""
    key = _splitmix64((seed & _MASK64) ^ _splitmix64(position)) & _MASK32
    return key or 1


def gumbel_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Gumbel(0, 1) noise of shape [len(keys), vocab_size], a pure function of each key (0: zeros)."""
    counters = keys.to(torch.int64)[:, None] * vocab_size + torch.arange(vocab_size, device=keys.device)
    bits = _shift_right(_splitmix64_tensor(counters), 11)  # 53 random bits -> a double in [0, 1)
    uniform = (bits.to(torch.float64) + 0.5) * 2.0**-53  # never 0 or 1
    noise = -torch.log(-torch.log(uniform))
    return torch.where(keys[:, None] == 0, 0.0, noise).to(torch.float32)


class GumbelSampling(ContinuousBatchingLogitsProcessor):
    """Adds per-request, per-position Gumbel noise; requests without a `seed` kwarg stay greedy."""

    supported_kwargs: dict[str, type] = {"seed": int}
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        keys = []
        for request in requests_with_new_token:
            state = request.state
            seed = state.logit_processor_kwargs.get("seed")
            if seed is None:
                keys.append(0)
                continue
            # initial_tokens + generated_tokens is the whole sequence so far, also after the engine
            # re-queues a preempted request with its generated tokens folded into the prompt.
            key = token_key(seed, len(state.initial_tokens) + len(state.generated_tokens))
            keys.append(key - (1 << 32) if key >= 1 << 31 else key)
        return torch.tensor(keys, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        keys = tensor_arg[: scores.size(0)].to(torch.int64) & _MASK32
        return scores + gumbel_noise(keys, scores.size(-1)).to(scores.device)


class SamplingProcessors(ContinuousBatchingLogitsProcessorList):
    """Temperature, top-k, top-p (per request, transformers' own) then Gumbel sampling.

    Per-request keyword arguments: `temperature` (float > 0), `top_k` (int >= 1), `top_p`
    (float in (0, 1]), `seed` (int; absent means greedy). Defaults leave the logits alone.
    """

    def __init__(self, vocab_size: int) -> None:
        processors: list[Any] = [
            ContinuousBatchingTemperatureLogitsWarper(TemperatureLogitsWarper(1.0)),
            ContinuousBatchingTopKLogitsWarper(TopKLogitsWarper(top_k=vocab_size)),
            ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=1.0)),
            GumbelSampling(),
        ]
        super().__init__(LogitsProcessorList(processors), per_request_processors=False)
        # One int32 row of arguments per processor; the base class counts only the ones it converted itself.
        self.tensors_required = len(processors)
