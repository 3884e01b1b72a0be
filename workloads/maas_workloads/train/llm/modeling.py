"""The model of a causal-LM job: built from a preset or loaded from a base model, given LoRA
adapters (PEFT), and wrapped for data parallelism (DDP) or sharding (FSDP2)."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import pathlib
from collections.abc import Iterator
from typing import Any, Final

import torch
from torch import nn

from maas_operator.api.causallm import SIZE_CONTEXT_LENGTH, ArchitectureSpec, CausalLMSpec, LoraSpec
from maas_workloads.train.errors import ConfigurationError

PRESETS: Final[dict[str, dict[str, int]]] = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
}
"""Llama-shaped sizes (Qwen2 takes the same keys): ~0.5M and ~30M parameters with their vocabularies."""
DEFAULT_VOCAB: Final = {"tiny": 512, "small": 8192}


def scratch_config(architecture: ArchitectureSpec, tokenizer: Any) -> Any:
    """A transformers config for a model trained from scratch, sized by its preset and tokenizer."""
    from transformers import AutoConfig

    from maas_workloads.train.llm.encoding import pad_token_id

    return AutoConfig.for_model(
        architecture.model_type,
        vocab_size=len(tokenizer),
        max_position_embeddings=SIZE_CONTEXT_LENGTH[architecture.size],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id(tokenizer),
        **PRESETS[architecture.size],
    )


def context_length(config: Any) -> int | None:
    """Most tokens one sequence may hold, from the config (None when it does not say)."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def lora_config(spec: LoraSpec) -> Any:
    """PEFT's LoraConfig for the spec; empty targetModules leaves the choice to PEFT's per-architecture default."""
    from peft import LoraConfig

    targets: list[str] | str | None = spec.target_modules or None
    if spec.target_modules == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def check_adapter_targets(config: Any, spec: LoraSpec) -> None:
    """Apply the LoRA config to the model built on the meta device (no memory, no weights): PEFT's own
    error for a target module the model lacks becomes a ConfigurationError."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    try:
        get_peft_model(model, lora_config(spec))
    except ValueError as error:
        raise ConfigurationError(f"spec.trainer.causalLM.lora.targetModules: {error}") from error


def load(
    spec: CausalLMSpec, source: pathlib.Path | Any, device: torch.device, mixed_precision: bool, seed: int
) -> nn.Module:
    """The model to train, on `device`: from `source`, a base model directory, or a config to
    initialise from scratch (with `seed`, so every rank starts from the same weights); with LoRA
    adapters for method lora/qlora, gradient checkpointing when asked."""
    from transformers import AutoModelForCausalLM

    bf16 = mixed_precision and device.type == "cuda"
    if isinstance(source, pathlib.Path):
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if spec.method == "lora" and bf16:
            kwargs["dtype"] = torch.bfloat16  # a frozen base needs no fp32 master copy
        if spec.method == "qlora":
            kwargs.update(_quantized(device))
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    else:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(source, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.config.use_cache = False
    if spec.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=spec.gradient_checkpointing
        )
    elif spec.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if spec.method != "qlora" and spec.parallelism != "fsdp":
        # FSDP moves each shard group to the device as it shards it: the whole model never is there at once.
        model = model.to(device)
    if spec.method != "full":
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(model, lora_config(spec.lora))
    return model  # type: ignore[no-any-return]


def _quantized(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        raise ConfigurationError("spec.trainer.causalLM.method: qlora needs a CUDA GPU on every worker")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigurationError(
            "spec.trainer.causalLM.method: qlora needs bitsandbytes in the training image (pip install bitsandbytes)"
        )
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"quantization_config": quantization, "device_map": {"": device}, "dtype": torch.bfloat16}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, found by the class names transformers lists in `_no_split_modules`."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ConfigurationError(
            f"spec.trainer.causalLM.parallelism: cannot find the decoder layers of {type(model).__name__} to shard"
        )
    return layers


_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the size above which glibc serves allocations by mmap (malloc.h)."""
_MMAP_THRESHOLD_WHILE_LOADING = 64 * 1024
_MMAP_THRESHOLD_AFTERWARDS = 32 * 1024 * 1024
"""glibc's own ceiling for its dynamic threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit), where it settles
when large blocks are freed and allocated again, as every training step does."""


@contextlib.contextmanager
def memory_returned_when_freed() -> Iterator[None]:
    """While loading and sharding the model, make glibc return freed blocks to the OS at once.

    Every worker reads the whole model before FSDP keeps only its shard. glibc would keep the
    freed rest in its heap for the whole run, and the pod's resident memory (what its memory
    limit counts) would stay that much above its share; blocks of more than 64 KiB served by mmap
    go back when freed. Training then allocates as glibc settles anyway (large blocks from the
    heap: mmap for every activation would halve a CPU worker's throughput, measured here).
    Elsewhere than glibc, nothing changes.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_WHILE_LOADING)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_AFTERWARDS)


def parallelize(model: nn.Module, parallelism: str, device: torch.device, mixed_precision: bool) -> nn.Module:
    """FSDP2: one `fully_shard` group per decoder layer plus the root (embeddings, norm, head), bf16
    compute with fp32 gradient reduction on GPUs; DDP: a replica per worker. One DDP worker: just
    the model on the device."""
    import torch.distributed as dist

    if not dist.is_initialized() or (dist.get_world_size() == 1 and parallelism == "ddp"):
        # A 4-bit (qlora) model is already there, and bitsandbytes refuses to move it.
        return model if next(model.parameters()).device == device else model.to(device)
    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if mixed_precision and device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Gradients live in DDP's all-reduce buckets rather than beside them: one copy fewer.
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )
