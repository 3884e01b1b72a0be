"""ModelService settings for causal language models: the engine, generation limits, the model cache.

One set of settings maps onto either engine: the built-in server (transformers' continuous
batching; MAAS_* variables) or vLLM's OpenAI server (its flags), so switching `engine`
keeps the limits a user chose.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from maas_operator.api.common import ApiModel, LocalObjectReference
from maas_operator.api.pods import Quantity
from maas_workloads import contract

Engine = Literal["builtin", "vllm"]
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
"""The official vLLM OpenAI server image the operator runs for `engine: vllm`, pinned."""
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class LoraAdapter(ApiModel):
    """A LoRA adapter artifact (format peft-lora) served next to its base model (vLLM only)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9][-_.a-zA-Z0-9]*$")
    """The model name clients use for the adapter (`"model": "<name>"`)."""
    uri: str = Field(min_length=1)
    """Where the adapter artifact is (s3://, https://, file:///, pvc://)."""
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    """Pin of the adapter's manifest.json."""


class GenerationSpec(ApiModel):
    """Serve a causal LM over the OpenAI API; its limits, for both engines.

    Setting this block marks the ModelService as an LLM: probes on /health, the model fetched
    and verified by an init container before the engine starts, autoscaling on the waiting
    queue by default.
    """

    max_model_len: int | None = Field(default=None, ge=16, le=10_000_000)
    """Context length: prompt + completion tokens per sequence (default: the model's).
    Builtin: MAAS_MAX_MODEL_LEN; vLLM: --max-model-len."""
    max_num_seqs: int = Field(default=contract.DEFAULT_MAX_NUM_SEQS, ge=1, le=4096)
    """Sequences generated at once per pod; more wait in a queue of `batching.maxQueueSize`.
    Builtin: MAAS_MAX_NUM_SEQS; vLLM: --max-num-seqs."""
    max_num_batched_tokens: int | None = Field(default=None, ge=16, le=10_000_000)
    """Tokens one engine step computes at most. Builtin: MAAS_MAX_NUM_BATCHED_TOKENS (default
    512); vLLM: --max-num-batched-tokens."""
    kv_cache_memory: Quantity | None = None
    """KV-cache memory per pod (e.g. 2Gi). Builtin: MAAS_KV_CACHE_BYTES (default 1Gi); vLLM on
    GPUs: --kv-cache-memory-bytes (default: --gpu-memory-utilization), vLLM on CPUs:
    VLLM_CPU_KVCACHE_SPACE in GiB (default 1)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """vLLM only, when kvCacheMemory is unset: the share of each GPU's memory vLLM may take."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations. Builtin: MAAS_DTYPE; vLLM: --dtype."""
    lora_adapters: list[LoraAdapter] = Field(default_factory=list, max_length=64)
    """LoRA adapters served by name beside the base model (engine vllm: --enable-lora --lora-modules)."""


class VllmSpec(ApiModel):
    """Options of the vLLM engine."""

    image: str = Field(default=VLLM_IMAGE, min_length=1)
    """vLLM's OpenAI server image (pinned default); `spec.image` stays the operator's workload image,
    which fetches and verifies the model in the init container."""
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    """More `vllm serve` flags, appended after the ones the operator derives."""


class ModelCacheSpec(ApiModel):
    """Where the init container puts the verified model; a PVC keeps it across pods and restarts."""

    pvc: LocalObjectReference | None = None
    """A PersistentVolumeClaim (ReadWriteMany for several replicas) holding the cache: a pod whose
    model is already there, verified, starts without downloading it again. Default: an emptyDir."""
    size_limit: Quantity | None = None
    """sizeLimit of the emptyDir cache (ignored with pvc)."""
