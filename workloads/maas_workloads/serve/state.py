"""What the server knows about its model: loading, ready, failed, and whether it is draining."""

from __future__ import annotations

import asyncio
import enum
import logging
import time

from maas_workloads.serve import model as model_loader
from maas_workloads.serve import sources
from maas_workloads.serve.batching import Batcher
from maas_workloads.serve.metrics import ModelMetrics
from maas_workloads.serve.model import LoadedModel
from maas_workloads.serve.settings import Settings

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelState:
    def __init__(self, settings: Settings, metrics: ModelMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.reason = f"model {settings.model_name!r} is loading from {settings.model_uri}"
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.draining = False
        self.inflight = 0
        """Inference requests received and not yet answered: the batcher waits only for these."""
        metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and not self.draining

    def readiness_reason(self) -> str:
        if self.draining:
            return "the server is shutting down"
        return self.reason

    def begin_drain(self) -> None:
        """Readiness turns false at once; requests keep being answered until the server stops."""
        self.draining = True
        self.metrics.ready.set(0)

    async def load(self) -> None:
        """Fetch, verify, load and warm up in a thread; failures leave the server live but not ready."""
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(self._load_blocking)
        except Exception as error:  # any failure is reported the same way: not ready, with the reason
            self.phase, self.reason = Phase.FAILED, f"model {self.settings.model_name!r} failed to load: {error}"
            log.error("model failed to load", extra={"model": self.settings.model_name, "reason": str(error)})
            return
        batcher = Batcher(
            loaded.predict,
            self.metrics,
            max_batch_size=self.settings.max_batch_size,
            max_delay_seconds=self.settings.max_delay_ms / 1000,
            max_queue_size=self.settings.max_queue_size,
            inflight=lambda: self.inflight,
        )
        batcher.start()
        self.model, self.batcher = loaded, batcher
        self.metrics.load_time.set(time.perf_counter() - started)
        self.phase, self.reason = Phase.READY, "ready"
        if not self.draining:
            self.metrics.ready.set(1)
        log.info(
            "model ready",
            extra={
                "model": self.settings.model_name,
                "manifest_sha256": loaded.manifest_sha256,
                "device": str(loaded.device),
            },
        )

    def _load_blocking(self) -> LoadedModel:
        variant = self.settings.model_variant
        directory = sources.resolve(self.settings.model_uri, self.settings.cache_dir, variant=variant)
        return model_loader.load(
            directory, expected_sha256=self.settings.model_sha256, device=self.settings.device, variant=variant
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
