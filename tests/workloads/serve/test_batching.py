"""The batcher with a real (numpy) model function: combining, splitting, isolation, limits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from maas_workloads.serve.batching import Batcher
from maas_workloads.serve.errors import DeadlineExceededError, ModelFailedError, TooManyRequestsError
from maas_workloads.serve.metrics import Metrics
from maas_workloads.serve.oip import Tensor


class Doubler:
    """Returns 2x its input; records batch sizes; can be held, or fail on a poisoned row."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.threads: set[str] = set()

    def __call__(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.release.wait(10)
        self.threads.add(threading.current_thread().name)
        x = inputs["x"]
        self.batches.append(len(x))
        if np.any(x == -1):
            raise RuntimeError("poisoned row")
        return {"y": x * 2}


def _batcher(model: Doubler, **limits: float) -> Batcher:
    settings = {"max_batch_size": 8, "max_delay_seconds": 0.05, "max_queue_size": 100, **limits}
    batcher = Batcher(model, Metrics().for_model("m"), **settings)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_requests_combine_and_each_caller_gets_its_rows() -> None:
    model = Doubler()
    batcher = _batcher(model)
    rows = [1, 3, 2, 2, 5, 1]
    arrays = [np.full((n, 2), index, dtype=np.float32) for index, n in enumerate(rows)]
    results = await asyncio.gather(*(batcher.submit({"x": a}, len(a), 10) for a in arrays))
    for array, result in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(result["y"], array * 2)
    assert sum(model.batches) == sum(rows)
    assert max(model.batches) <= 8
    assert len(model.batches) < len(rows)
    assert model.threads == {"model_0"}
    await batcher.stop()


async def test_incompatible_shapes_run_in_separate_batches() -> None:
    model = Doubler()
    batcher = _batcher(model)
    wide, narrow = np.ones((1, 3), dtype=np.float32), np.ones((1, 2), dtype=np.float32)
    first, second = await asyncio.gather(batcher.submit({"x": wide}, 1, 10), batcher.submit({"x": narrow}, 1, 10))
    assert first["y"].shape == (1, 3)
    assert second["y"].shape == (1, 2)
    assert model.batches == [1, 1]
    await batcher.stop()


async def test_a_failing_request_fails_alone() -> None:
    model = Doubler()
    batcher = _batcher(model)
    good = np.ones((2, 2), dtype=np.float32)
    bad = np.full((1, 2), -1, dtype=np.float32)
    results = await asyncio.gather(
        batcher.submit({"x": good}, 2, 10), batcher.submit({"x": bad}, 1, 10), return_exceptions=True
    )
    np.testing.assert_array_equal(results[0]["y"], good * 2)  # type: ignore[index]
    assert isinstance(results[1], ModelFailedError)
    assert "poisoned row" in results[1].message
    await batcher.stop()


async def test_full_queue_refuses_and_deadline_expires() -> None:
    model = Doubler()
    model.release.clear()
    batcher = _batcher(model, max_batch_size=1, max_delay_seconds=0, max_queue_size=2)
    row = np.ones((1, 2), dtype=np.float32)
    running = asyncio.ensure_future(batcher.submit({"x": row}, 1, 10))
    await asyncio.sleep(0.05)  # the first one is in the model, held
    queued = [asyncio.ensure_future(batcher.submit({"x": row}, 1, 10)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(TooManyRequestsError) as refused:
        await batcher.submit({"x": row}, 1, 10)
    assert refused.value.headers == {"retry-after": "1"}
    assert batcher.depth == 2
    model.release.set()
    await asyncio.gather(running, *queued)

    model.release.clear()
    held = asyncio.ensure_future(batcher.submit({"x": row}, 1, 10))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit({"x": row}, 1, 0.05)
    model.release.set()
    await held
    await batcher.stop()


async def test_stop_finishes_queued_requests() -> None:
    model = Doubler()
    model.release.clear()
    batcher = _batcher(model, max_batch_size=1)
    row = np.ones((1, 2), dtype=np.float32)
    pending = [asyncio.ensure_future(batcher.submit({"x": row}, 1, 10)) for _ in range(4)]
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(batcher.stop())
    model.release.set()
    await stopping
    assert all(task.done() and not task.exception() for task in pending)
    assert model.batches == [1, 1, 1, 1]
