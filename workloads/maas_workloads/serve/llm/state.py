"""The LLM server's lifecycle: fetch, verify, load and warm up; ready; draining; stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from collections.abc import Iterator

from maas_workloads.artifact import AdapterManifest, ArtifactError, CausalLMManifest, verify
from maas_workloads.causal_lm import merge_lora_adapter
from maas_workloads.serve import sources
from maas_workloads.serve.llm.admission import Slots
from maas_workloads.serve.llm.engine import Engine, SamplingParams
from maas_workloads.serve.llm.errors import OpenAIError
from maas_workloads.serve.llm.metrics import LLMMetrics
from maas_workloads.serve.settings import Settings

log = logging.getLogger(__name__)
WARM_UP_TOKENS = 4
"""The warm-up generation: a few tokens through prefill and decode before /health says 200."""


class LLMState:
    """Loading, ready, failed and draining, as the health endpoints and the drain see them."""

    def __init__(self, settings: Settings, metrics: LLMMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: Engine | None = None
        self.reason = f"model {settings.model_name!r} is loading from {settings.model_uri}"
        self.failed = False
        self.draining = False
        self.slots = Slots(settings.llm.max_num_seqs, settings.max_queue_size)
        metrics.ready.set(0)
        metrics.watch(self._running, self._waiting, self._kv_usage)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive and not self.draining

    @property
    def max_model_len(self) -> int | None:
        return self.engine.max_model_len if self.engine is not None else None

    def readiness_reason(self) -> str:
        if self.draining:
            return "the server is shutting down"
        if self.engine is not None and not self.engine.alive:
            return f"the generation engine stopped: {self.engine.fatal_error}"
        return self.reason

    def begin_drain(self) -> None:
        """Health turns 503 and no new generation is admitted; running ones finish."""
        self.draining = True
        self.metrics.ready.set(0)

    def admit(self) -> Engine:
        """The engine for a new generation, or OpenAIError 503 while loading, failed or draining."""
        if self.draining:
            raise OpenAIError(503, "the server is shutting down", headers={"connection": "close"})
        if self.engine is None or not self.engine.alive:
            raise OpenAIError(503, self.readiness_reason(), headers={"retry-after": "5"})
        return self.engine

    @contextlib.contextmanager
    def inflight(self) -> Iterator[None]:
        self.metrics.inflight.inc()
        try:
            yield
        finally:
            self.metrics.inflight.dec()

    async def load(self) -> None:
        started = time.perf_counter()
        try:
            engine = await asyncio.to_thread(self._load_blocking)
            await asyncio.to_thread(engine.start)
            await _warm_up(engine)
        except Exception as error:  # any failure: live, never ready, the reason in health and the log
            self.failed = True
            self.reason = f"model {self.settings.model_name!r} failed to load: {error}"
            log.error("model failed to load", extra={"model": self.settings.model_name, "reason": str(error)})
            return
        self.engine = engine
        self.metrics.load_time.set(time.perf_counter() - started)
        self.reason = "ready"
        if not self.draining:
            self.metrics.ready.set(1)
        log.info(
            "model ready",
            extra={
                "model": self.settings.model_name,
                "device": str(engine.device),
                "dtype": str(engine.dtype),
                "max_model_len": engine.max_model_len,
                "kv_cache_tokens": engine.cache.tokens,
                "max_num_seqs": self.settings.llm.max_num_seqs,
            },
        )

    def _load_blocking(self) -> Engine:
        variant = self.settings.model_variant
        directory = sources.resolve(self.settings.model_uri, self.settings.cache_dir, variant=variant)
        manifest = verify(directory, self.settings.model_sha256, variant)
        if isinstance(manifest, AdapterManifest):
            directory, manifest = self._merged(directory, manifest)
        if not isinstance(manifest, CausalLMManifest):
            raise ArtifactError(f"a {manifest.format} artifact is not a causal LM: the OpenAI server cannot serve it")
        model_dir = directory / manifest.variant_directory(variant)
        return Engine(model_dir, self.settings.llm, self.settings.device, manifest.context_length)

    def _merged(self, adapter_dir: pathlib.Path, adapter: AdapterManifest) -> tuple[pathlib.Path, CausalLMManifest]:
        """A LoRA adapter artifact: fetch and verify the base it names, serve the merged model."""
        base_uri = adapter.base_model.uri
        base_dir = sources.resolve(base_uri, self.settings.cache_dir / "base")
        verify(base_dir, adapter.base_model.sha256)
        merged, _ = merge_lora_adapter(adapter_dir, base_dir, self.settings.cache_dir / "merged" / adapter_dir.name)
        log.info("serving a LoRA adapter merged into its base", extra={"base": base_uri})
        return self.settings.cache_dir / "merged" / adapter_dir.name, merged

    async def close(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop, 10.0)

    def _running(self) -> float:
        return max(0, self.slots.used - self._engine_waiting())

    def _waiting(self) -> float:
        return self.slots.waiting + self._engine_waiting()

    def _engine_waiting(self) -> int:
        return self.engine.waiting() if self.engine is not None else 0

    def _kv_usage(self) -> float:
        return self.engine.kv_cache_usage() if self.engine is not None else 0.0


async def _warm_up(engine: Engine) -> None:
    """One short greedy generation: proves the engine runs before readiness says so."""
    prompt = engine.tokenizer.encode("warm up", add_special_tokens=False) or [0]
    sequence = engine.submit(prompt, SamplingParams(max_tokens=WARM_UP_TOKENS, temperature=0))
    received = 0
    async for tokens in sequence.tokens():
        received += len(tokens)
    if received == 0:
        raise ArtifactError("the warm-up generation produced no tokens")
