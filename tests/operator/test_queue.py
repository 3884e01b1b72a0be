"""The work queue: one reconcile per key at a time, fair between kinds, by priority, with a
per-key backoff the resync honours (handlers/queue.py). No process, no clock assertions: the
tests count what ran, in which order."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Hashable

import pytest

from maas_operator.handlers import queue as queue_module
from maas_operator.handlers.queue import Priority, WorkQueue
from tests.operator.emulator import wait_for

Key = tuple[str, str]


class Recorder:
    """A reconcile that notes what ran, and can be held or made to fail per key."""

    def __init__(self) -> None:
        self.ran: list[Key] = []
        self.running: collections.Counter[Key] = collections.Counter()
        self.most_at_once: collections.Counter[Key] = collections.Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing: set[Key] = set()

    async def __call__(self, key: Key) -> None:
        self.running[key] += 1
        self.in_flight += 1
        self.most_at_once[key] = max(self.most_at_once[key], self.running[key])
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            self.ran.append(key)
            if key in self.failing:
                raise RuntimeError(f"{key} failed")
        finally:
            self.running[key] -= 1
            self.in_flight -= 1


def kind(key: Hashable) -> Hashable:
    assert isinstance(key, tuple)
    return key[0]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    yield Recorder()


async def drain(queue: WorkQueue[Key], recorder: Recorder, count: int) -> None:
    await wait_for(lambda: _ran(recorder, count), timeout=10, what=f"{count} reconciles")


async def _ran(recorder: Recorder, count: int) -> bool:
    return len(recorder.ran) >= count


async def settle() -> None:
    """Let every ready task run (the queue's work is all in-process)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_key_is_never_reconciled_twice_at_once_and_runs_again_after_an_add(recorder: Recorder) -> None:
    queue = WorkQueue(recorder, workers=8, lane=kind)
    queue.start()
    key = ("TrainingJob", "a")
    recorder.gate.clear()
    queue.add(key)
    await wait_for(lambda: _running(recorder, key), what="the first reconcile")
    for _ in range(5):
        queue.add(key)  # while it runs: once more after it, not five times, not at once
    await settle()
    recorder.gate.set()
    await drain(queue, recorder, 2)
    await settle()
    assert recorder.ran == [key, key]
    assert recorder.most_at_once[key] == 1
    await queue.stop()


async def _running(recorder: Recorder, key: Key) -> bool:
    return recorder.running[key] > 0


async def test_different_keys_run_concurrently_up_to_the_worker_count(recorder: Recorder) -> None:
    queue = WorkQueue(recorder, workers=3, lane=kind)
    recorder.gate.clear()
    for n in range(10):
        queue.add(("TrainingJob", str(n)))
    queue.start()
    await settle()
    assert recorder.in_flight == 3
    recorder.gate.set()
    await drain(queue, recorder, 10)
    assert recorder.most_in_flight == 3
    assert sorted(recorder.ran) == sorted(("TrainingJob", str(n)) for n in range(10)), "each key once"
    await queue.stop()


def test_the_worker_count_must_be_positive(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        WorkQueue(recorder, workers=0)


async def test_a_burst_of_one_kind_does_not_starve_the_other(recorder: Recorder) -> None:
    queue = WorkQueue(recorder, workers=1, lane=kind)
    jobs = [("TrainingJob", str(n)) for n in range(100)]
    services = [("ModelService", str(n)) for n in range(5)]
    for key in jobs + services:  # every TrainingJob queued before the first ModelService
        queue.add(key, priority=Priority.NEW)
    queue.start()
    await drain(queue, recorder, 105)
    # The kinds take turns: the ModelServices are among the first ten reconciles, not after 100.
    assert {key for key in recorder.ran[:10] if key[0] == "ModelService"} == set(services)
    assert [key for key in recorder.ran if key[0] == "TrainingJob"] == jobs, "each kind in its own order"
    await queue.stop()


async def test_new_objects_go_before_events_and_events_before_the_resync(recorder: Recorder) -> None:
    queue = WorkQueue(recorder, workers=1, lane=kind)
    old = [("TrainingJob", f"old-{n}") for n in range(20)]
    queue.resync(old, period=10)
    queue.add(("TrainingJob", "changed"))
    queue.add(("ModelService", "new"), priority=Priority.NEW)
    queue.add(("TrainingJob", "new"), priority=Priority.NEW)
    queue.start()
    await drain(queue, recorder, 23)
    assert set(recorder.ran[:2]) == {("ModelService", "new"), ("TrainingJob", "new")}
    assert recorder.ran[2] == ("TrainingJob", "changed")
    assert recorder.ran[3:] == old
    await queue.stop()


async def test_a_queued_key_moves_up_and_runs_once(recorder: Recorder) -> None:
    queue = WorkQueue(recorder, workers=1, lane=kind)
    keys = [("TrainingJob", str(n)) for n in range(5)]
    queue.resync(keys, period=10)
    queue.add(keys[3])  # an event for a key the resync queued: before the others, and only once
    queue.start()
    await drain(queue, recorder, 5)
    await settle()
    assert recorder.ran == [keys[3], keys[0], keys[1], keys[2], keys[4]]
    await queue.stop()


async def test_the_resync_skips_keys_reconciled_within_the_period(recorder: Recorder) -> None:
    queue = WorkQueue(recorder, workers=2, lane=kind)
    queue.start()
    busy, idle = ("TrainingJob", "busy"), ("TrainingJob", "idle")
    queue.add(busy)
    await drain(queue, recorder, 1)
    queue.resync([busy, idle], period=3600)  # busy was just reconciled by its event
    await drain(queue, recorder, 2)
    await settle()
    assert recorder.ran == [busy, idle]
    queue.resync([busy, idle], period=0)  # a whole period later, both are due
    await drain(queue, recorder, 4)
    await queue.stop()


async def test_a_failed_key_backs_off_and_the_resync_honours_it(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "BACKOFF_START_SECONDS", 3600.0)
    queue = WorkQueue(recorder, workers=2, lane=kind)
    queue.start()
    key = ("ModelService", "refused")
    recorder.failing.add(key)
    queue.add(key)
    await drain(queue, recorder, 1)
    for _ in range(10):  # ten resync periods while its retry is not due: no retry storm
        queue.resync([key], period=0)
        queue.add(key, priority=Priority.RESYNC)
        await settle()
    assert recorder.ran == [key]
    queue.add(key)  # a watch event is news the failed reconcile did not have: it runs at once
    await drain(queue, recorder, 2)
    await queue.stop()


async def test_a_failed_key_is_retried_with_growing_delays_until_it_succeeds(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "BACKOFF_START_SECONDS", 0.01)
    delays: list[float] = []
    real_add_later = WorkQueue._add_later

    def add_later(self: WorkQueue[Key], key: Key, delay: float) -> None:
        delays.append(delay)
        real_add_later(self, key, delay)

    monkeypatch.setattr(WorkQueue, "_add_later", add_later)
    queue = WorkQueue(recorder, workers=1, lane=kind)
    queue.start()
    key = ("TrainingJob", "flaky")
    recorder.failing.add(key)
    queue.add(key)
    await drain(queue, recorder, 4)
    recorder.failing.clear()
    await drain(queue, recorder, 5)
    await settle()
    assert delays[:3] == [0.01, 0.02, 0.04], "doubling from BACKOFF_START_SECONDS"
    queue.resync([key], period=0)  # succeeded: no longer backing off
    await drain(queue, recorder, 6)
    await queue.stop()


async def test_a_forgotten_key_loses_its_backoff_and_timer(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "BACKOFF_START_SECONDS", 3600.0)
    queue = WorkQueue(recorder, workers=1, lane=kind)
    queue.start()
    key = ("TrainingJob", "deleted")
    recorder.failing.add(key)
    queue.add(key)
    await drain(queue, recorder, 1)
    await settle()
    queue.forget(key)  # deleted: a new object of the same name starts afresh
    recorder.failing.clear()
    queue.resync([key], period=0)
    await drain(queue, recorder, 2)
    await queue.stop()
