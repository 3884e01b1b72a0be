"""Dynamic batching: requests queue, are combined, run off the event loop, and split back.

A batch closes when it holds `max_batch_size` rows, when its oldest request has waited
`max_delay` seconds, or at once when no other request is in flight that could still join it
(so a lone caller never pays the delay). The model runs in one worker thread (torch parallelises inside an op),
so the event loop keeps accepting and parsing requests meanwhile. The queue is bounded: a
full queue refuses at once with 429 rather than letting callers time out later.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from maas_workloads.serve.errors import DeadlineExceededError, ModelFailedError, TooManyRequestsError, UnavailableError
from maas_workloads.serve.metrics import ModelMetrics
from maas_workloads.serve.oip import Tensor

log = logging.getLogger(__name__)
Predict = Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]]


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: Mapping[str, Tensor]
    rows: int
    compatibility: tuple[object, ...]
    """Requests combine only when every input agrees on dtype and non-batch dimensions."""
    future: asyncio.Future[dict[str, Tensor]]
    enqueued: float
    timer: asyncio.TimerHandle | None = field(default=None)


class Batcher:
    def __init__(
        self,
        predict: Predict,
        metrics: ModelMetrics,
        *,
        max_batch_size: int,
        max_delay_seconds: float,
        max_queue_size: int,
        inflight: Callable[[], int] | None = None,
    ) -> None:
        """`inflight` counts requests received and not yet answered, queued or not."""
        self._predict = predict
        self._inflight = inflight
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay = max_delay_seconds
        self._max_queue_size = max_queue_size
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker: asyncio.Task[None] | None = None
        metrics.watch_queue_depth(lambda: len(self._queue))

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run_forever(), name="batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker thread."""
        self._stopping = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: Mapping[str, Tensor], rows: int, timeout_seconds: float) -> dict[str, Tensor]:
        """The model's outputs for exactly these rows; raises 429, 504 or a model failure."""
        if self._stopping:
            raise UnavailableError("the server is shutting down")
        if len(self._queue) >= self._max_queue_size:
            raise TooManyRequestsError(
                f"the queue is full ({self._max_queue_size} requests waiting); retry later", retry_after_seconds=1
            )
        loop = asyncio.get_running_loop()
        compatibility = tuple((name, array.dtype, array.shape[1:]) for name, array in inputs.items())
        pending = _Pending(inputs, rows, compatibility, loop.create_future(), loop.time())
        pending.timer = loop.call_at(pending.enqueued + timeout_seconds, _expire, pending, timeout_seconds)
        self._queue.append(pending)
        self._wakeup.set()
        try:
            return await pending.future
        finally:
            pending.timer.cancel()

    async def _run_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            try:
                await self._run(batch)
            except Exception:  # the worker must survive anything a batch does
                log.exception("batch failed unexpectedly")

    async def _next_batch(self) -> list[_Pending] | None:
        loop = asyncio.get_running_loop()
        first = await self._first_live()
        if first is None:
            return None
        batch, rows = [first], first.rows
        closes_at = first.enqueued + self._max_delay
        while rows < self._max_batch_size:
            if not self._queue:
                remaining = closes_at - loop.time()
                if remaining <= 0 or self._stopping or not self._may_grow(len(batch)):
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
                continue
            candidate = self._queue[0]
            if candidate.future.done():
                self._queue.popleft()
                continue
            if candidate.compatibility != first.compatibility or rows + candidate.rows > self._max_batch_size:
                break
            self._queue.popleft()
            batch.append(candidate)
            rows += candidate.rows
        return batch

    def _may_grow(self, batched: int) -> bool:
        """Whether a request that is not in this batch yet is on its way (received, still parsing)."""
        return self._inflight is None or self._inflight() > batched

    async def _first_live(self) -> _Pending | None:
        while True:
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    return pending
            if self._stopping:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        live = [pending for pending in batch if not pending.future.done()]
        if not live:
            return
        started = loop.time()
        for pending in live:
            self._metrics.queue_time.observe(started - pending.enqueued)
        rows = sum(pending.rows for pending in live)
        if len(live) == 1:
            inputs = live[0].inputs
        else:
            inputs = {name: np.concatenate([pending.inputs[name] for pending in live]) for name in live[0].inputs}
        clock = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._predict, inputs)
        except Exception as error:
            if len(live) > 1:
                # Run each request alone, so that one bad request fails only itself.
                for pending in live:
                    await self._run([pending])
                return
            log.warning("model failed on a request: %s", error)
            _settle(live[0], error=ModelFailedError(f"the model failed: {error}"))
            return
        self._metrics.compute_time.observe(time.perf_counter() - clock)
        self._metrics.batch_size.observe(rows)
        wrong = [name for name, array in outputs.items() if array.shape[:1] != (rows,)]
        if wrong:
            failure = ModelFailedError(f"the model returned output(s) {', '.join(wrong)} without one row per input row")
            for pending in live:
                _settle(pending, error=failure)
            return
        offset = 0
        for pending in live:
            end = offset + pending.rows
            _settle(pending, result={name: array[offset:end] for name, array in outputs.items()})
            offset = end


def _settle(pending: _Pending, *, result: dict[str, Tensor] | None = None, error: BaseException | None = None) -> None:
    if pending.future.done():  # the caller's deadline passed while the batch ran
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result or {})


def _expire(pending: _Pending, timeout_seconds: float) -> None:
    if not pending.future.done():
        pending.future.set_exception(
            DeadlineExceededError(f"no result within the request's deadline of {timeout_seconds:g} s")
        )
