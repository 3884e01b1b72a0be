"""The built-in generation engine: transformers' continuous batching with a bounded paged KV cache.

transformers runs the generation loop (scheduler, paged attention, prefill/decode batches) in
its own thread; this module loads the artifact into it, sizes its cache from configuration
(never from the host's free memory), submits requests from the event loop and hands each
one's new tokens back as they come, and cancels a request whose client went away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pathlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig

from maas_workloads.artifact import ArtifactError
from maas_workloads.serve.llm.sampling import SamplingProcessors
from maas_workloads.serve.llm.settings import LLMSettings
from maas_workloads.serve.model import select_device
from maas_workloads.variants.causal_lm import use_int8_kernels

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EngineError(Exception):
    """The engine failed a request (or died); the message is safe to show to the client."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What one sequence asks for. `temperature` 0 is greedy; `top_k` 0 and `top_p` 1 keep every token."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def processor_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {}  # no seed -> no noise -> argmax
        kwargs: dict[str, Any] = {
            "temperature": float(self.temperature),
            "seed": self.seed if self.seed is not None else secrets.randbits(63),
        }
        if self.top_k > 0:
            kwargs["top_k"] = self.top_k
        if self.top_p < 1:
            kwargs["top_p"] = float(self.top_p)
        return kwargs


@dataclass(slots=True)
class Sequence:
    """One generation in the engine; iterate `tokens()` for the new token ids as they come."""

    request_id: str
    prompt_tokens: int
    _queue: asyncio.Queue[list[int] | BaseException | None] = field(default_factory=asyncio.Queue)
    _received: int = 0
    finished: bool = False
    """True once the engine delivered its last token (EOS or max_tokens)."""

    def _deliver(self, output: Any) -> None:
        # Called on the event loop by transformers' output router, with all tokens generated so far.
        tokens = output.generated_tokens
        if len(tokens) > self._received:
            self._queue.put_nowait(tokens[self._received :])
            self._received = len(tokens)
        if output.error is not None:
            self._queue.put_nowait(EngineError(f"generation failed: {output.error}"))
        elif output.is_finished():
            self.finished = True
            self._queue.put_nowait(None)

    async def tokens(self) -> AsyncIterator[list[int]]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass(frozen=True, slots=True)
class CacheShape:
    """The KV cache the settings buy: `blocks` pages of `block_size` tokens each."""

    blocks: int
    block_size: int
    bytes_per_token: int

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size


def cache_shape(config: Any, dtype: torch.dtype, settings: LLMSettings, max_model_len: int) -> CacheShape:
    """Size the paged cache from the byte budget, capped at what `max_num_seqs` full-length
    sequences can use (a bigger cache only costs memory and attention-mask time).

    Bytes per token = 2 (K and V) x layers x KV heads x head size x dtype size. Raises
    ArtifactError when the budget cannot hold one sequence of `max_model_len` tokens.
    """
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    bytes_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * dtype.itemsize
    budget_tokens = settings.kv_cache_bytes // bytes_per_token
    if budget_tokens < max_model_len:
        raise ArtifactError(
            f"the KV-cache budget of {settings.kv_cache_bytes} bytes holds {budget_tokens} tokens of this model "
            f"({bytes_per_token} bytes each), less than one sequence of max-model-len {max_model_len}: raise "
            "--kv-cache-bytes (MAAS_KV_CACHE_BYTES) or lower --max-model-len (MAAS_MAX_MODEL_LEN)"
        )
    tokens = min(budget_tokens, settings.max_num_seqs * max_model_len)
    return CacheShape(math.ceil(tokens / settings.block_size), settings.block_size, bytes_per_token)


class Engine:
    """A causal LM loaded from an artifact directory into transformers' continuous batching."""

    def __init__(self, directory: pathlib.Path, settings: LLMSettings, device: str, context_length: int) -> None:
        _json_logs()
        self.settings = settings
        self.tokenizer: Any = AutoTokenizer.from_pretrained(directory)
        target = select_device(device)
        dtype = _dtype(settings.dtype, directory, target)
        self.max_model_len = settings.max_model_len or context_length
        if self.max_model_len > context_length:
            raise ArtifactError(
                f"--max-model-len (MAAS_MAX_MODEL_LEN) {self.max_model_len} exceeds the model's context length "
                f"{context_length}"
            )
        model: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
        if target.type == "cpu" and getattr(model.config, "quantization_config", None) is not None:
            use_int8_kernels(model)  # an int8 variant: PyTorch's CPU kernel, not torchao's dequantize-per-call
        self.model = model.to(target).eval()
        self.cache = cache_shape(self.model.config, dtype, settings, self.max_model_len)
        self.generation_config = self.model.generation_config
        self.eos_token_ids = _eos_ids(self.generation_config, self.tokenizer)
        greedy = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False, eos_token_id=self.eos_token_ids, pad_token_id=self._pad_id()
        )
        batching = ContinuousBatchingConfig(
            page_size=self.cache.block_size,
            num_blocks=self.cache.blocks,
            max_batch_tokens=settings.max_batch_tokens,
            max_requests_per_batch=settings.max_num_seqs,
            allow_block_sharing=False,  # freed blocks return to the pool at once: KV usage means live sequences
        )
        with torch.inference_mode():
            self._manager: Any = self.model.init_continuous_batching(
                generation_config=greedy, continuous_batching_config=batching
            )
        self._manager.logit_processor = SamplingProcessors(self.model.config.get_text_config().vocab_size)
        self._ids = count()
        self.device, self.dtype = target, dtype

    def _pad_id(self) -> int | None:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)

    def start(self) -> None:
        """Start transformers' generation thread (blocking: call from a worker thread)."""
        with torch.inference_mode():
            self._manager.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        """Queue one sequence; must be called on the event loop that will iterate it."""
        if not self.alive:
            raise EngineError(f"the generation engine has stopped: {self.fatal_error or 'shut down'}")
        sequence = Sequence(f"seq-{next(self._ids)}", len(prompt_ids))
        self._manager.register_result_handler(sequence.request_id, sequence._deliver)
        added = self._manager.add_request(
            list(prompt_ids),
            request_id=sequence.request_id,
            max_new_tokens=params.max_tokens,
            streaming=True,
            eos_token_id=self.eos_token_ids,
            **params.processor_kwargs(),
        )
        if added is None:
            self._forget(sequence)
            raise EngineError("the generation engine is stopping and takes no new requests")
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """Stop generating for a sequence and free its KV blocks at the engine's next step."""
        if not sequence.finished:
            self._manager.cancel_request(sequence.request_id)
            self._forget(sequence)

    def _forget(self, sequence: Sequence) -> None:
        # transformers drops a handler only when its request finishes; a cancelled one never does.
        router = self._manager.output_router
        with router._lock:
            router.result_handlers.pop(sequence.request_id, None)

    @property
    def alive(self) -> bool:
        return bool(self._manager.is_running()) and self.fatal_error is None

    @property
    def fatal_error(self) -> BaseException | None:
        error: BaseException | None = self._manager.background_thread_status.fatal_error
        return error

    def waiting(self) -> int:
        """Sequences handed to the engine that it has not scheduled yet (no KV blocks for them)."""
        processor = self._manager.batch_processor
        queued = int(self._manager.input_queue.qsize())
        return queued + (len(processor.scheduler.waiting_requests) if processor is not None else 0)

    def kv_cache_usage(self) -> float:
        """Fraction of the KV cache's blocks held by sequences (0..1)."""
        processor = self._manager.batch_processor
        if processor is None:
            return 0.0
        return max(0.0, min(1.0, 1.0 - float(processor.cache.compute_free_capacity())))

    def stop(self, timeout: float | None) -> None:
        """Stop the generation thread (blocking); in-flight sequences should have finished before."""
        if self._manager.is_running():
            self._manager.stop(block=True, timeout=timeout)


def _json_logs() -> None:
    """transformers' loggers print plain text through their own handlers; send them to ours (JSON lines)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    batching = logging.getLogger("ContinuousBatchingLogger")
    batching.handlers.clear()
    batching.propagate = True


def _dtype(requested: str, directory: pathlib.Path, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    stored = getattr(config, "dtype", None) or torch.float32
    if isinstance(stored, str):
        stored = _DTYPES.get(stored, torch.float32)
    if device.type == "cuda" and stored == torch.float32:
        return torch.bfloat16  # as vLLM's auto: full precision weights run in half precision on GPUs
    if device.type == "cpu" and stored == torch.float16:
        return torch.bfloat16  # float16 matmuls are slow or missing on CPUs
    return stored


def _eos_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(token) for token in eos]
