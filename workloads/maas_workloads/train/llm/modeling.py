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


def shard_units(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """The modules FSDP2 shards as units of their own, in forward order, each with whether it reshards
    (frees its gathered parameters) after the forward: the input embeddings, every decoder layer, and
    the output head.

    Each unit's parameters are whole only while it computes, so the largest vocabulary x hidden
    matrices are not held unsharded by the root for the whole step, nor their full gradients until
    the end of the backward. The head runs last in the forward and first in the backward, so it keeps
    its gathered weight in between (torchtitan shards Llama the same way). Tied input and output
    embeddings (one parameter in two places) stay with the root, which covers both uses.
    """
    layers = decoder_layers(model)
    get_input, get_output = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    embeddings = get_input() if callable(get_input) else None
    head = get_output() if callable(get_output) else None
    if embeddings is None or head is None or embeddings.weight is head.weight:
        return [(layer, True) for layer in layers]
    return [(embeddings, True), *((layer, True) for layer in layers), (head, False)]


_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the size above which glibc serves allocations by mmap (malloc.h)."""
_MMAP_THRESHOLD_WHILE_LOADING = 64 * 1024
_MMAP_THRESHOLD_WHILE_TRAINING = 4 * 1024 * 1024
"""Blocks this large (parameter-sized: a layer's gathered weights and their gradient shards) come from
mmap and go back to the OS when freed; smaller ones (activations of CPU-sized batches) from the heap."""


@contextlib.contextmanager
def memory_returned_when_freed() -> Iterator[None]:
    """While loading and sharding the model, make glibc return freed blocks to the OS at once.

    Every worker reads the whole model before FSDP keeps only its shard. glibc would keep the
    freed rest in its heap for the whole run, and the pod's resident memory (what its memory
    limit counts) would stay that much above its share; blocks of more than 64 KiB served by mmap
    go back when freed. Training then serves blocks of 4 MiB or more by mmap: by default glibc
    raises its threshold to 32 MiB as large blocks are freed, and the gradients and gathered
    weights every step allocates anew would then come from the heap between long-lived optimizer
    state; the holes they leave are too fragmented to reuse, and a 206M-parameter FSDP worker
    held 0.6-0.9 GiB of freed heap beside its 1.9 GiB in use (measured here). Mmap for every block down
    to 64 KiB, activations included, would halve a CPU worker's throughput (measured here).
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
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_WHILE_TRAINING)


def parallelize(model: nn.Module, parallelism: str, device: torch.device, mixed_precision: bool) -> nn.Module:
    """FSDP2: one `fully_shard` unit per decoder layer, the input embeddings and the output head
    (shard_units), plus the root for the rest, bf16 compute with fp32 gradient reduction on GPUs;
    DDP: a replica per worker. One DDP worker: just the model on the device."""
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
        for unit, reshard in shard_units(model):
            fully_shard(unit, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Gradients live in DDP's all-reduce buckets rather than beside them: one copy fewer.
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )
